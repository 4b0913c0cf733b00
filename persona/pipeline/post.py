"""Post-reply stages: work not needed for the first token, recorded with the reply.

Each decides inside the writer's transaction (persona-scoped state such as a
relationship edge is read there, so concurrent chats of one persona never lose an
update) and returns the events to append atomically with the reply and completion.
"""

from __future__ import annotations

from persona.clock import iso
from persona.events import (
    ChatStateRecorded,
    EdgeAsserted,
    FactRecorded,
    IdentityUpdated,
    MemoryAccessed,
    MemoryWritten,
    Metacognition,
    Perception,
    ReplyCompleted,
    TelemetryRecorded,
    Utterance,
    Workspace,
)
from persona.pipeline import identity
from persona.pipeline.context import Emit, PersonaView, PostStage, StageEnv, TurnContext
from persona.pipeline.extract import Fact, entities, facts, object_key, supersedes
from persona.pipeline.reply_check import DEGENERATE
from persona.pipeline.state import reward_applies, step
from persona.storage.queries import EdgeRow

# The relationship edge a turn's reward_signal moves.
AFFINITY_REL = "talks_with"


def episodic_id(turn_id: str) -> str:
    """The id of the episodic memory a turn writes (links memory and turn)."""
    return f"ep:{turn_id}"


class MemoryAccess:
    """Record which memories the turn's prompt used (last accessed, access count).

    After the reply, like every write: the stream's first token never waits for it.
    """

    name = "memory_access"

    def decide(self, ctx: TurnContext, env: StageEnv, persona: PersonaView) -> list[Emit]:
        used = ctx.need(Workspace).selected_memories
        if not used:
            return []
        return [
            Emit(
                MemoryAccessed(
                    persona_id=ctx.request.persona_id,
                    turn_id=ctx.turn_id,
                    memory_ids=list(used),
                )
            )
        ]


class EpisodicWrite:
    """Remember the exchange as an episodic memory of the persona (not an OOC one).

    A reply that degenerated (a loop, cut at the cap, a copy of an earlier reply) is not
    remembered, even trimmed:
    memories feed later prompts, and a bad one would be imitated.
    """

    name = "episodic"

    def decide(self, ctx: TurnContext, env: StageEnv, persona: PersonaView) -> list[Emit]:
        reply = ctx.get(ReplyCompleted)
        if reply is not None and DEGENERATE.intersection(reply.flags):
            return []
        perception = ctx.need(Perception)
        if perception.ooc:
            return []  # out of character: it steers the story, it is not part of it
        return [
            Emit(
                MemoryWritten(
                    memory_id=episodic_id(ctx.turn_id),
                    persona_id=ctx.request.persona_id,
                    tier="L1",
                    kind="exchange",
                    chat_id=ctx.request.chat_id,
                    turn_id=ctx.turn_id,
                    content=f"{ctx.request.message}\n{ctx.reply}",
                    said=[
                        Utterance(role="user", name="User", text=ctx.request.message),
                        Utterance(role="persona", name=ctx.persona.name, text=ctx.reply),
                    ],
                    importance=perception.importance,
                    importance_score=perception.importance_score,
                    # The user's words only: a small model's reply is not a source of names.
                    entities=entities(ctx.request.message),
                    witnesses=[ctx.request.user_id],
                    valid_from=iso(ctx.now),
                )
            )
        ]


def affinity(previous: float | None, signal: float, rate: float) -> float:
    """The persona→user affinity after a reward: an EMA that starts from 0."""
    return (1.0 - rate) * (previous or 0.0) + rate * signal


def fact_node(subject: str, ctx: TurnContext) -> str:
    """The graph node of a fact's subject: this user, this persona, or a named entity."""
    if subject == "user":
        return f"user:{ctx.request.user_id}"
    if subject == "persona":
        return f"persona:{ctx.request.persona_id}"
    # What this user said about someone: another user may know that name differently.
    return f"entity:{ctx.request.user_id}:{subject}"


def fact_rel(fact: Fact) -> str:
    """The edge relation: a negated fact is its own relation, `not_<relation>`."""
    return f"not_{fact.relation}" if fact.negated else fact.relation


def edge_fact(edge: EdgeRow, subject: str) -> Fact:
    """The fact a stored edge records (to test whether a new fact supersedes it)."""
    negated = edge.rel.startswith("not_")
    return Fact(subject, edge.rel.removeprefix("not_"), edge.dst, "", negated)


class FactWrite:
    """The user's first-person facts (extract.facts) as L1 fact memories and typed edges.

    Each fact retires, never deletes, only the current edges with the same subject and
    relation that it contradicts (`extract.supersedes`): "I moved to Porto" retires
    `lives_in Lisbon`, "I don't like jazz anymore" retires `likes jazz`, and nothing
    else. Read through the writer's transaction, like the affinity edge. The persona's
    own replies are not mined: a small model's words would become beliefs.
    """

    name = "facts"

    def decide(self, ctx: TurnContext, env: StageEnv, persona: PersonaView) -> list[Emit]:
        if ctx.need(Perception).ooc:
            return []
        out: list[Emit] = []
        seen: set[str] = set()
        for i, fact in enumerate(facts(ctx.request.message, "user")):
            src, rel = fact_node(fact.subject, ctx), fact_rel(fact)
            edge_id = f"{ctx.request.persona_id}|{src}|{rel}|{object_key(fact.object)}"
            if edge_id in seen:
                continue
            seen.add(edge_id)
            rels = (fact.relation, f"not_{fact.relation}")
            current = persona.current_edges(ctx.request.persona_id, src, rels)
            retired = [
                e.edge_id
                for e in current
                if e.edge_id != edge_id and supersedes(fact, edge_fact(e, fact.subject))
            ]
            memory_id = f"fa:{ctx.turn_id}:{i}"
            out.append(
                Emit(
                    MemoryWritten(
                        memory_id=memory_id,
                        persona_id=ctx.request.persona_id,
                        tier="L1",
                        kind="fact",
                        chat_id=ctx.request.chat_id,
                        turn_id=ctx.turn_id,
                        content=fact.text,
                        said=[Utterance(role="user", name="User", text=fact.text)],
                        importance=ctx.need(Perception).importance,
                        importance_score=ctx.need(Perception).importance_score,
                        entities=entities(fact.text),
                        witnesses=[ctx.request.user_id],
                        valid_from=iso(ctx.now),
                    )
                )
            )
            out.append(
                Emit(
                    FactRecorded(
                        persona_id=ctx.request.persona_id,
                        turn_id=ctx.turn_id,
                        memory_id=memory_id,
                        edge_id=edge_id,
                        src=src,
                        rel=rel,
                        dst=fact.object,
                        text=fact.text,
                        supersedes=retired,
                    ),
                    scope="persona",
                )
            )
        return out


class Relationship:
    """Move the persona→user affinity edge toward this turn's reward_signal (from a chat's
    second turn: the signal judges the previous reply)."""

    name = "relationship"

    def decide(self, ctx: TurnContext, env: StageEnv, persona: PersonaView) -> list[Emit]:
        if not reward_applies(ctx.parent_state):
            return []  # a chat's first turn: its reward_signal has no reply to judge
        src, dst = f"persona:{ctx.request.persona_id}", f"user:{ctx.request.user_id}"
        previous = persona.edge_weight(src, AFFINITY_REL, dst)
        rate = env.settings.relationship.affinity_rate
        signal = ctx.request.reward_signal
        return [
            Emit(
                EdgeAsserted(
                    persona_id=ctx.request.persona_id,
                    src=src,
                    rel=AFFINITY_REL,
                    dst=dst,
                    weight=affinity(previous, signal, rate),
                    previous_weight=previous,
                    signal=signal,
                    rate=rate,
                    turn_id=ctx.turn_id,
                ),
                scope="persona",
            )
        ]


class IdentityStep:
    """Move the persona's traits, per-user baseline and values after a turn (identity.py).

    Read through the writer's transaction, like the affinity edge: two chats of one
    persona finishing at once never lose an update, and an operator override that landed
    meanwhile (a freeze) is what this step starts from.
    """

    name = "identity"

    def decide(self, ctx: TurnContext, env: StageEnv, persona: PersonaView) -> list[Emit]:
        perception, metacog = ctx.need(Perception), ctx.need(Metacognition)
        safety, smoothed = perception.safety, perception.intent_smoothed
        glob = metacog.global_state
        reading = identity.TurnReading(
            calm=1.0 - perception.appraisal.arousal if perception.appraisal else 0.5,
            empathy=min(
                1.0, smoothed.get("emotional_support", 0.0) + smoothed.get("self_disclosure", 0.0)
            ),
            curiosity=metacog.novelty if metacog.novelty is not None else metacog.telemetry.N,
            signal=ctx.request.reward_signal,
            reward_applies=reward_applies(ctx.parent_state),
            flagged=safety.intervened or safety.escalated or safety.blocked,
            shock=safety.override,
            overloaded=glob is not None and glob.state == "OVERLOADED",
        )
        prev = persona.identity_state(ctx.request.persona_id)
        out = identity.update(prev, ctx.request.user_id, reading, ctx.now, env.settings.identity)
        return [
            Emit(
                IdentityUpdated(
                    persona_id=ctx.request.persona_id,
                    user_id=ctx.request.user_id,
                    turn_id=ctx.turn_id,
                    chat_id=ctx.request.chat_id,
                    signal=reading.signal,
                    applied=out.applied,
                    state=out.state,
                    drift=out.drift,
                    reasons=out.reasons,
                ),
                scope="persona",
            )
        ]


class TelemetryRecord:
    """Record the turn's telemetry row (dashboards read it)."""

    name = "telemetry"

    def decide(self, ctx: TurnContext, env: StageEnv, persona: PersonaView) -> list[Emit]:
        metacog = ctx.need(Metacognition)
        return [
            Emit(
                TelemetryRecorded(
                    chat_id=ctx.request.chat_id,
                    persona_id=ctx.request.persona_id,
                    turn_id=ctx.turn_id,
                    telemetry=metacog.telemetry,
                    dialogue_state=metacog.dialogue_state,
                )
            )
        ]


class StateStep:
    """Record the chat state this turn leaves for the turns that continue from it."""

    name = "state"

    def decide(self, ctx: TurnContext, env: StageEnv, persona: PersonaView) -> list[Emit]:
        state = step(
            ctx.parent_state,
            ctx.need(Perception),
            ctx.need(Workspace),
            ctx.need(Metacognition),
            ctx.request.reward_signal,
            env.settings.metacognition.reward_ema,
            # Degenerate replies in a row feed failure detection.
            reply_flags=reply.flags if (reply := ctx.get(ReplyCompleted)) else (),
        )
        return [
            Emit(ChatStateRecorded(turn_id=ctx.turn_id, chat_id=ctx.request.chat_id, state=state))
        ]


# The built-in post-reply stages, in order (registered like the pre-reply ones).
DEFAULT_POST_STAGES: tuple[PostStage, ...] = (
    MemoryAccess(),
    EpisodicWrite(),
    FactWrite(),
    Relationship(),
    IdentityStep(),
    TelemetryRecord(),
    StateStep(),
)
