"""Gating: which candidates get into the prompt, within the model's context window.

First honest form: every candidate (recent exchanges, retrieved memories) gets a
priority; the highest-priority ones are packed greedily into the room the window leaves
after the reply and the fixed prompt. Costs are measured on the rendered prompt (chat
template included) with the backend's own tokenizer: each candidate costs what adding it
to the real prompt adds. A memory the previous turn's workspace held gets a small bonus
(continuity); a memory whose exchange is already in the history is left out. Later
issues replace the priority with a simulated competition; the decision record already
lists every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from persona.events import Budget, GateDecision, MemoryRetrieval, Perception, Workspace
from persona.llm.base import ChatMessage
from persona.pipeline.context import StageEnv, StageOutput, TurnContext, TurnRequest
from persona.pipeline.layout import (
    PromptParts,
    hard_safety,
    layout,
    memory_text,
    pinned_notes,
    soft_safety,
)
from persona.pipeline.perception import is_ooc, safety_risk
from persona.pipeline.post import episodic_id
from persona.storage.queries import PathTurn, PersonaRow

# Recency of history: the newest exchange starts here and each older one loses a step.
HISTORY_TOP = 0.95
HISTORY_STEP = 0.04
# A memory's priority is its fused score scaled to this: the best possible memory (first
# in every retrieval list) still ranks below the latest exchange, which the reply needs.
MEMORY_TOP = 0.9


@dataclass(frozen=True)
class Candidate:
    """Something that competes for the workspace."""

    kind: Literal["history", "memory"]
    id: str
    priority: float
    text: str  # a memory as the prompt shows it; an exchange's two messages
    history: PathTurn | None = None
    redundant: bool = False


def candidates(ctx: TurnContext, memory: MemoryRetrieval, carry_bonus: float) -> list[Candidate]:
    """Everything that competes for the workspace, with its priority."""
    items: list[Candidate] = []
    in_history = {episodic_id(h.turn_id) for h in ctx.history}
    carried = set(ctx.parent_state.workspace)
    for age, h in enumerate(reversed(ctx.history)):
        items.append(
            Candidate(
                "history",
                h.turn_id,
                round(HISTORY_TOP - HISTORY_STEP * age, 4),
                f"{h.user_message}\n{h.reply}",
                history=h,
            )
        )
    for m in memory.results:
        bonus = carry_bonus if m.memory_id in carried else 0.0
        items.append(
            Candidate(
                "memory",
                m.memory_id,
                round(MEMORY_TOP * m.score + bonus, 4),
                memory_text(m),
                redundant=m.memory_id in in_history,
            )
        )
    return items


class Costs:
    """What each candidate adds to the rendered prompt, measured with the backend.

    Rendering the whole prompt once per candidate was the slow way (bench/); an
    exchange costs its two messages framed by the chat template, a memory its line in
    the turn note, and the first memory the note's heading. The speaker counts the
    final prompt exactly and cuts the lowest priority part should these come out short.
    """

    def __init__(self, base: PromptParts, fixed: int, env: StageEnv):
        self.env = env
        self.empty = env.backend.count_prompt([])
        probe = "x"
        with_one = prompt_tokens(base.with_(memories=[probe]), env)
        self.heading = max(with_one - fixed - self.line(probe), 0)

    def line(self, text: str) -> int:
        return self.env.count_tokens(f"- {text}\n")

    def of(self, item: Candidate) -> int:
        if item.history is not None:
            pair = [
                ChatMessage(role="user", content=item.history.user_message),
                ChatMessage(role="assistant", content=item.history.reply),
            ]
            return self.env.backend.count_prompt(pair) - self.empty
        return self.line(item.text) if item.text else 0


def base_parts(ctx: TurnContext) -> PromptParts:
    """The prompt with nothing optional in it: identity, turn note, the message."""
    perception = ctx.need(Perception)
    # Safety is known here; the global state, subjectivity mode, dialogue state and
    # disclosure are not yet: the parts' defaults reserve their longest lines.
    return PromptParts(
        persona=ctx.persona,
        message=ctx.request.message,
        pinned=pinned_notes(ctx.need(MemoryRetrieval)),
        safety_override=hard_safety(perception.safety),
        safety_soft=soft_safety(perception.safety),
        ooc=perception.ooc,
    )


def prompt_tokens(parts: PromptParts, env: StageEnv) -> int:
    """Tokens of the rendered prompt for these parts."""
    return env.backend.count_prompt(layout(parts, env.prompts, env.backend.late_system_ok))


class GatingStage:
    """Pack the highest-priority candidates into the room the context window leaves."""

    name = "gating"

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput:
        base = base_parts(ctx)
        fixed = prompt_tokens(base, env)
        window = env.backend.context_window()
        reply = ctx.request.gen.max_tokens
        message = env.count_tokens(ctx.request.message)
        available = max(window - reply - fixed, 0)
        used = 0
        decided = []
        costs = Costs(base, fixed, env)
        heading_paid = False
        items = candidates(ctx, ctx.need(MemoryRetrieval), env.settings.gating.carry_bonus)
        for item in sorted(items, key=lambda i: (-i.priority, i.kind, i.id)):
            tokens = costs.of(item)
            if item.kind == "memory" and item.text and not heading_paid:
                tokens += costs.heading  # the first memory brings the note's heading
            if item.redundant:
                selected, reason = False, "already in recent history"
            elif used + tokens <= available:
                selected, reason = True, "fits"
                used += tokens
                heading_paid = heading_paid or (item.kind == "memory" and bool(item.text))
            else:
                selected, reason = False, "over budget"
            decided.append(
                GateDecision(
                    kind=item.kind,
                    id=item.id,
                    priority=item.priority,
                    tokens=tokens,
                    selected=selected,
                    reason=reason,
                )
            )
        return StageOutput(
            Workspace(
                budget=Budget(
                    context=window,
                    reply=reply,
                    message=message,
                    available=available,
                    core=fixed - message,
                    used=fixed + used,
                ),
                candidates=decided,
                selected_memories=[d.id for d in decided if d.kind == "memory" and d.selected],
                selected_history=[d.id for d in decided if d.kind == "history" and d.selected],
            )
        )


def message_room(request: TurnRequest, persona: PersonaRow, env: StageEnv) -> tuple[int, int]:
    """(tokens the message takes in the prompt, the most it may take) for this window.

    The turn note is sized as perception will see the message (safety, OOC), so a
    message refused here would not have fit, and one accepted always fits.
    """
    risk = safety_risk(request.message)[0]
    override = risk >= env.settings.perception.safety_override_threshold
    parts = PromptParts(
        persona=persona,
        message=request.message,
        safety_override=override,
        safety_soft=not override and risk >= env.settings.perception.safety_intervened_threshold,
        ooc=is_ooc(request.message, env.settings.perception.ooc_marker),
    )
    fixed = prompt_tokens(replace(parts, message=""), env)
    room = env.backend.context_window() - request.gen.max_tokens - fixed
    return prompt_tokens(parts, env) - fixed, room


def selected_history(ctx: TurnContext, workspace: Workspace) -> list[PathTurn]:
    """The history turns the workspace selected, oldest first."""
    chosen = set(workspace.selected_history)
    return [h for h in ctx.history if h.turn_id in chosen]
