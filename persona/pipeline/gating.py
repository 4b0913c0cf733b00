"""Gating: which candidates get into the prompt, within a token budget.

First honest form: every candidate (recent exchanges, retrieved memories) gets a
priority; the highest-priority ones are packed greedily into the budget measured with
the backend's real tokenizer. A memory the previous turn's workspace held gets a small
bonus (continuity); a memory whose exchange is already in the history is left out.
Later issues replace the priority with a simulated competition; the decision record
already lists every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from persona.events import Budget, GateDecision, MemoryRetrieval, Workspace
from persona.pipeline.context import StageEnv, StageOutput, TurnContext
from persona.pipeline.post import episodic_id

# Recency of history: the newest exchange starts here and each older one loses a step.
HISTORY_TOP = 0.95
HISTORY_STEP = 0.04


@dataclass(frozen=True)
class Candidate:
    """Something that competes for the workspace."""

    kind: Literal["history", "memory"]
    id: str
    priority: float
    text: str
    redundant: bool = False


def budget(ctx: TurnContext, env: StageEnv) -> Budget:
    """Split the context window: reply, user message, template, and what is left to fill."""
    total = env.settings.gating.context_tokens
    reply = ctx.request.gen.max_tokens
    message = env.count_tokens(ctx.request.message)
    available = max(total - reply - message - env.settings.gating.template_reserve, 0)
    return Budget(context=total, reply=reply, message=message, available=available)


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
            )
        )
    for m in memory.results:
        bonus = carry_bonus if m.memory_id in carried else 0.0
        items.append(
            Candidate(
                "memory",
                m.memory_id,
                round(m.score + bonus, 4),
                m.content,
                redundant=m.memory_id in in_history,
            )
        )
    return items


class GatingStage:
    """Pack the highest-priority candidates into the token budget."""

    name = "gating"

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput:
        b = budget(ctx, env)
        persona_text = ctx.persona.description + "\n" + ctx.persona.genesis
        core = env.count_tokens(persona_text)  # the core identity always goes in
        used = core
        decided = []
        items = candidates(ctx, ctx.need(MemoryRetrieval), env.settings.gating.carry_bonus)
        for item in sorted(items, key=lambda i: (-i.priority, i.kind, i.id)):
            tokens = env.count_tokens(item.text)
            if item.redundant:
                selected, reason = False, "already in recent history"
            elif used + tokens <= b.available:
                selected, reason = True, "fits"
                used += tokens
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
                budget=b.model_copy(update={"core": core, "used": used}),
                candidates=decided,
                selected_memories=[d.id for d in decided if d.kind == "memory" and d.selected],
                selected_history=[d.id for d in decided if d.kind == "history" and d.selected],
            )
        )
