"""Speaker: assemble the prompt from every earlier decision and stream the reply."""

from __future__ import annotations

from dataclasses import dataclass

from persona.events import (
    MemoryRetrieval,
    Metacognition,
    Perception,
    PromptMessage,
    ReplyCompleted,
    ReplyUsage,
    Workspace,
)
from persona.llm.base import ChatMessage, GenOptions, LLMResponse, Usage
from persona.pipeline.context import StageEnv, TurnContext
from persona.pipeline.dialogue import prompt_state
from persona.pipeline.gating import selected_history
from persona.pipeline.layout import (
    PromptParts,
    hard_safety,
    layout,
    memory_text,
    pinned_notes,
    soft_safety,
)
from persona.pipeline.metacognition import SILENT as SILENT_STATE
from persona.pipeline.prompts import PromptSet
from persona.pipeline.reply_check import (
    SILENT,
    CheckedReply,
    check_reply,
    reply_options,
    speaker_labels,
)
from persona.pipeline.revision import chosen_option

# What a SILENT turn answers: a fixed placeholder, never an empty reply (an empty reply is
# never a completed answer), marked `silent` in the reply flags. No model is called.
SILENT_REPLY = "…"


@dataclass(frozen=True)
class Prompt:
    """The prompt as sent: its messages, its exact size, and what was cut to fit."""

    messages: list[ChatMessage]
    tokens: int
    trimmed: tuple[str, ...] = ()


def state_line(metacog: Metacognition) -> str:
    """The dialogue state as the prompt names it, with its style hint when decided."""
    return prompt_state(metacog.dialogue) if metacog.dialogue else metacog.dialogue_state


def disclose(metacog: Metacognition) -> bool:
    """Whether failure detection asked the speaker to disclose uncertainty about the past."""
    return metacog.failure.disclose if metacog.failure else False


def global_state(metacog: Metacognition) -> str:
    """The decided global state ("NORMAL" in events recorded before it existed)."""
    return metacog.global_state.state if metacog.global_state else "NORMAL"


def subjectivity(metacog: Metacognition) -> str:
    """The decided subjectivity mode ("" in events recorded before it existed)."""
    return metacog.subjectivity.mode if metacog.subjectivity else ""


def is_silent(ctx: TurnContext) -> bool:
    """Whether the operator silenced the persona: it does not speak. Metacognition decides
    global SILENT exactly when `ChatState.operator_state` is SILENT (one source of truth)."""
    metacog = ctx.get(Metacognition)
    return metacog is not None and global_state(metacog) == SILENT_STATE


def turn_gen(ctx: TurnContext) -> GenOptions:
    """The request's options with what the dialogue state applied (request values won)."""
    metacog = ctx.get(Metacognition)
    if metacog is None or metacog.dialogue is None:
        return ctx.request.gen
    applied = metacog.dialogue.generation
    return ctx.request.gen.model_copy(
        update={"temperature": applied.temperature, "max_tokens": applied.max_tokens}
    )


def note_texts(ctx: TurnContext) -> dict[str, str]:
    """The selected memories and notes (edges, emotion, goal) as the turn note lists them,
    best first, by candidate id."""
    workspace = ctx.need(Workspace)
    memories = {m.memory_id: m for m in ctx.need(MemoryRetrieval).results}
    out: dict[str, str] = {}
    for c in workspace.candidates:
        if not c.selected or c.kind == "history":
            continue
        if c.kind == "memory":
            out[c.id] = memory_text(memories[c.id])
        elif c.text:
            out[c.id] = c.text
    return out


def prompt_parts(ctx: TurnContext) -> tuple[PromptParts, list[str]]:
    """The parts the workspace selected, and the ids of what may be cut (first to go first)."""
    perception = ctx.need(Perception)
    workspace = ctx.need(Workspace)
    metacog = ctx.need(Metacognition)
    parts = PromptParts(
        persona=ctx.persona,
        message=ctx.request.message,
        history=tuple(selected_history(ctx, workspace)),
        memories=tuple(note_texts(ctx).values()),
        pinned=pinned_notes(ctx.need(MemoryRetrieval)),
        safety_override=hard_safety(perception.safety),
        safety_soft=soft_safety(perception.safety),
        ooc=perception.ooc,
        dialogue_state=state_line(metacog),
        global_state=global_state(metacog),
        subjectivity=subjectivity(metacog),
        option=chosen_option(metacog.candidates),
        disclose=disclose(metacog),
    )
    # Lowest priority first: the candidates are listed best first.
    order = [c.id for c in reversed(workspace.candidates) if c.selected]
    return parts, order


def build_prompt(
    ctx: TurnContext, prompts: PromptSet, late_system_ok: bool = True
) -> list[ChatMessage]:
    """The messages the model sees (see `layout`), from the turn's decisions."""
    parts, _ = prompt_parts(ctx)
    return layout(parts, prompts, late_system_ok)


def fit_prompt(ctx: TurnContext, env: StageEnv) -> Prompt:
    """Render the prompt and count it exactly; cut the lowest-priority parts if over.

    Gating measured each part on the rendered prompt, so cutting is rare (it guards
    the parts gating could not know: the dialogue state's exact wording).
    """
    parts, order = prompt_parts(ctx)
    room = env.backend.context_window() - ctx.request.gen.max_tokens
    late = env.backend.late_system_ok
    notes = note_texts(ctx)
    trimmed: list[str] = []
    while True:
        messages = layout(parts, env.prompts, late)
        tokens = env.backend.count_prompt(messages)
        if tokens <= room or not order:
            return Prompt(messages, tokens, tuple(trimmed))
        drop = order.pop(0)
        trimmed.append(drop)
        texts = {notes[drop]} if drop in notes else set()
        parts = parts.with_(
            history=[h for h in parts.history if h.turn_id != drop],
            memories=[m for m in parts.memories if m not in texts],
        )


class SpeakerStage:
    """Stream the reply; its decision is recorded as `reply.completed` once it is whole."""

    name = "speaker"

    def __init__(self, prompts: PromptSet):
        self.prompts = prompts

    def start(self, ctx: TurnContext, env: StageEnv) -> tuple[Prompt, LLMResponse]:
        """Build the prompt, fit it to the window and start generating.

        A SILENT turn sends nothing: its empty prompt and the placeholder reply, whole.
        """
        if is_silent(ctx):
            usage = Usage(finish_reason="stop")
            options = turn_gen(ctx)
            silent = LLMResponse(
                env.backend, [], options, chunks=[SILENT_REPLY], usage=usage, done=True
            )
            return Prompt([], 0), silent
        prompt = fit_prompt(ctx, env)
        # Stop sequences end the reply where the next speaker's line would start.
        options = reply_options(turn_gen(ctx), ctx.persona.name)
        return prompt, env.backend.stream(prompt.messages, options)

    @staticmethod
    def check(ctx: TurnContext, response: LLMResponse) -> CheckedReply:
        """The streamed reply cleaned for storing (see `reply_check.check_reply`); a
        SILENT turn's placeholder as it is, flagged `silent`."""
        if is_silent(ctx):
            return CheckedReply(response.full_text, (SILENT,))
        return check_reply(
            response.full_text,
            speaker_labels(ctx.persona.name),
            hit_cap=response.usage.hit_cap(response.options.max_tokens),
            previous=[h.reply for h in ctx.history],
        )

    @staticmethod
    def decision(
        ctx: TurnContext,
        prompt: Prompt,
        response: LLMResponse,
        checked: CheckedReply | None = None,
    ) -> ReplyCompleted:
        """The reply.completed payload: the checked reply, and the raw one if it changed."""
        reply = checked.text if checked else response.full_text
        return ReplyCompleted(
            turn_id=ctx.turn_id,
            chat_id=ctx.request.chat_id,
            reply=reply,
            prompt=[PromptMessage(role=m.role, content=m.content) for m in prompt.messages],
            usage=ReplyUsage(
                prompt_tokens=response.usage.prompt_tokens,
                completion_tokens=response.usage.completion_tokens,
            ),
            first_token_ms=round((response.first_token_s or 0.0) * 1000, 2),
            generation_ms=round((response.total_s or 0.0) * 1000, 2),
            prompt_tokens_counted=prompt.tokens,
            trimmed=list(prompt.trimmed),
            flags=list(checked.flags) if checked else [],
            raw_reply=response.full_text if reply != response.full_text else None,
        )
