"""Speaker: assemble the prompt from every earlier decision and stream the reply."""

from __future__ import annotations

from persona.events import (
    MemoryRetrieval,
    Metacognition,
    Perception,
    PromptMessage,
    ReplyCompleted,
    ReplyUsage,
    Workspace,
)
from persona.llm.base import ChatMessage, LLMResponse
from persona.pipeline.context import StageEnv, TurnContext
from persona.pipeline.prompts import PromptSet


def _traits(traits: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1f}" for name, value in sorted(traits.items()))


def build_prompt(
    ctx: TurnContext, prompts: PromptSet, late_context: bool = True
) -> list[ChatMessage]:
    """The messages the model sees: identity, selected history, turn context, message.

    The identity comes first and never changes, and history only grows, so llama.cpp
    reuses its cached prefix; what changes every turn (memories, safety, state) goes in
    a system note just before the message. With `late_context` off (servers whose chat
    template allows one leading system message only) the note joins the first one.
    """
    perception = ctx.need(Perception)
    gating = ctx.need(Workspace)
    memory = {m.memory_id: m for m in ctx.need(MemoryRetrieval).results}
    selected_history = set(gating.selected_history)
    identity = prompts.render("system.j2", persona=ctx.persona, traits=_traits(ctx.persona.traits))
    note = prompts.render(
        "turn_context.j2",
        memories=[memory[mid].content for mid in gating.selected_memories],
        safety_override=perception.safety.override,
        ooc=perception.ooc,
        dialogue_state=ctx.need(Metacognition).dialogue_state,
    )
    if not late_context:
        identity = f"{identity}\n\n{note}"
    messages = [ChatMessage(role="system", content=identity)]
    for h in ctx.history:
        if h.turn_id in selected_history:
            messages.append(ChatMessage(role="user", content=h.user_message))
            messages.append(ChatMessage(role="assistant", content=h.reply))
    if late_context:
        messages.append(ChatMessage(role="system", content=note))
    messages.append(ChatMessage(role="user", content=ctx.request.message))
    return messages


class SpeakerStage:
    """Stream the reply; its decision is recorded as `reply.completed` once it is whole."""

    name = "speaker"

    def __init__(self, prompts: PromptSet):
        self.prompts = prompts

    def start(self, ctx: TurnContext, env: StageEnv) -> tuple[list[ChatMessage], LLMResponse]:
        """Build the prompt and start generating."""
        prompt = build_prompt(ctx, self.prompts, env.backend.late_system_ok)
        return prompt, env.backend.stream(prompt, ctx.request.gen)

    @staticmethod
    def decision(
        ctx: TurnContext, prompt: list[ChatMessage], response: LLMResponse
    ) -> ReplyCompleted:
        """The reply.completed payload."""
        return ReplyCompleted(
            turn_id=ctx.turn_id,
            chat_id=ctx.request.chat_id,
            reply=response.full_text,
            prompt=[PromptMessage(role=m.role, content=m.content) for m in prompt],
            usage=ReplyUsage(
                prompt_tokens=response.usage.prompt_tokens,
                completion_tokens=response.usage.completion_tokens,
            ),
            first_token_ms=round((response.first_token_s or 0.0) * 1000, 2),
            generation_ms=round((response.total_s or 0.0) * 1000, 2),
        )
