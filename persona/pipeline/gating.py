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

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from persona.config import GatingSettings
from persona.events import Budget, GateDecision, MemoryRetrieval, Perception, Workspace
from persona.events.decisions import Competition
from persona.llm.base import ChatMessage
from persona.pipeline.competition import CompetitionParams, Contender, compete
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
from persona.pipeline.text import content_words
from persona.storage import queries
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

    kind: Literal["history", "memory", "edge", "emotion", "goal"]
    id: str
    priority: float
    text: str  # a memory or note as the prompt shows it; an exchange's two messages
    history: PathTurn | None = None
    redundant: bool = False
    salience: float = 0.0  # the competition's starting activation (not for history)


# Salience of the non-memory contenders (docs/memory.md says why).
EDGE_BASE, EDGE_RELEVANCE = 0.2, 0.6  # a fact about the user: more when the message touches it
EMOTION_FLOOR = 0.3  # a felt emotion competes from this strength
USER_FACTS = 10  # current fact edges about the user read per turn

_RELATION_WORDS = {
    "likes": "likes",
    "not_likes": "does not like",
    "lives_in": "lives in",
    "from": "is from",
    "works_as": "works as",
    "works_at": "works at",
    "name_is": "is called",
    "age": "is aged",
    "birthday": "has a birthday on",
    "has_pet": "has",
    "has_sibling": "has",
    "has_child": "has",
    "has_partner": "has a partner,",
    "speaks": "speaks",
    "studies": "studies",
    "goal": "wants to",
}
_GOALS = {
    "smalltalk": "a light chat",
    "meta_conversation": "to talk about this conversation",
    "emotional_support": "support",
    "task_oriented": "help with a task",
    "factual_query": "a fact",
    "creative_roleplay": "a story or role-play",
    "self_disclosure": "to share something about themselves",
    "safety_risk": "safety",
}


def edge_text(edge: queries.EdgeRow) -> str:
    """A fact edge as a short note: "The user lives in Porto."."""
    words = _RELATION_WORDS.get(edge.rel, edge.rel.replace("_", " "))
    return f"The user {words} {edge.dst}."


def _redundant(memory_id: str, in_history: set[str]) -> bool:
    """A memory written by a turn whose exchange is in the history (ep:<turn>, fa:<turn>:i)."""
    kind, _, rest = memory_id.partition(":")
    return kind in ("ep", "fa") and rest.split(":")[0] in in_history


def candidates(
    ctx: TurnContext,
    memory: MemoryRetrieval,
    carry_bonus: float,
    edges: Sequence[queries.EdgeRow] = (),
) -> list[Candidate]:
    """Everything that competes for the workspace, with its salience or priority."""
    items: list[Candidate] = []
    in_history = {h.turn_id for h in ctx.history}
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
        salience = min(1.0, round(m.score + bonus, 4))
        items.append(
            Candidate(
                "memory",
                m.memory_id,
                round(MEMORY_TOP * salience, 4),
                memory_text(m),
                redundant=_redundant(m.memory_id, in_history),
                salience=salience,
            )
        )
    message = content_words(ctx.request.message)
    for e in edges:
        text = edge_text(e)
        terms = content_words(e.dst)
        touched = len(message & terms) / len(terms) if terms else 0.0
        salience = round(EDGE_BASE + EDGE_RELEVANCE * touched, 4)
        priority = round(MEMORY_TOP * salience, 4)
        items.append(Candidate("edge", e.edge_id, priority, text, salience=salience))
    perception = ctx.need(Perception)
    if perception.appraisal and perception.appraisal.emotions:
        name, strength = max(perception.appraisal.emotions.items(), key=lambda kv: (kv[1], kv[0]))
        if strength >= EMOTION_FLOOR:
            salience = round(strength, 4)
            items.append(
                Candidate(
                    "emotion",
                    f"emotion:{name}",
                    round(MEMORY_TOP * salience, 4),
                    f"The user seems to feel {name}.",
                    salience=salience,
                )
            )
    goal = perception.top_intent
    if goal in _GOALS and goal != "smalltalk":
        salience = round(perception.intent.get(goal, 0.0), 4)
        items.append(
            Candidate(
                "goal",
                f"goal:{goal}",
                round(MEMORY_TOP * salience, 4),
                f"The user wants {_GOALS[goal]}.",
                salience=salience,
            )
        )
    return items


def contest(items: list[Candidate], s: GatingSettings) -> tuple[Competition, dict[str, Candidate]]:
    """Run the workspace competition over the non-history candidates (redundant ones sit
    out); return its record and the winners, their priority now their final activation."""
    contenders = [c for c in items if c.kind != "history" and not c.redundant]
    params = CompetitionParams(
        k=s.workspace_k,
        iterations=s.iterations,
        excitation=s.excitation,
        inhibition=s.inhibition,
        similarity=s.similarity,
    )
    result = compete(
        [Contender(c.id, c.kind, c.salience, frozenset(content_words(c.text))) for c in contenders],
        params,
    )
    record = Competition(
        k=s.workspace_k,
        iterations=result.iterations,
        salience={c.id: c.salience for c in sorted(contenders, key=lambda c: c.id)},
        kinds={c.id: c.kind for c in sorted(contenders, key=lambda c: c.id)},
        trace=[dict(t) for t in result.trace],
        winners=list(result.winners),
        inhibitions=result.inhibitions,
    )
    by_id = {c.id: c for c in contenders}
    winners = {
        w: replace(by_id[w], priority=round(MEMORY_TOP * result.activations[w], 4))
        for w in result.winners
        if result.activations[w] >= s.min_activation
    }
    return record, winners


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
        s = env.settings.gating
        r = ctx.request
        edges = await env.store.read(queries.user_facts, r.persona_id, r.user_id, USER_FACTS)
        items = candidates(ctx, ctx.need(MemoryRetrieval), s.carry_bonus, edges)
        competition, winners = contest(items, s)
        # The hard limit is the room the window leaves; notes (memories, facts, emotion,
        # goal) also have a soft one, a share of it, so recent history keeps its place.
        notes_room = int(available * s.notes_share)
        notes_used = 0
        ranked = [winners.get(i.id, i) for i in items]
        for item in sorted(ranked, key=lambda i: (-i.priority, i.kind, i.id)):
            tokens = costs.of(item)
            note = item.kind not in ("history",)
            if note and item.text and not heading_paid:
                tokens += costs.heading  # the first note brings the note list's heading
            if item.redundant:
                selected, reason = False, "already in recent history"
            elif note and item.id not in winners:
                lost = item.id not in competition.winners
                selected = False
                reason = "lost the workspace competition" if lost else "below the activation floor"
            elif used + tokens > available:
                selected, reason = False, "over budget"
            elif note and notes_used + tokens > notes_room:
                selected, reason = False, "over the notes' soft limit"
            else:
                selected, reason = True, "fits"
                used += tokens
                notes_used += tokens if note else 0
                heading_paid = heading_paid or (note and bool(item.text))
            decided.append(
                GateDecision(
                    kind=item.kind,
                    id=item.id,
                    priority=item.priority,
                    tokens=tokens,
                    selected=selected,
                    reason=reason,
                    text=item.text if item.kind in ("edge", "emotion", "goal") else None,
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
                selected_notes=[
                    d.id for d in decided if d.kind in ("edge", "emotion", "goal") and d.selected
                ],
                competition=competition,
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
