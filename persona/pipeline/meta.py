"""The `meta` record of a turn: a pure function of the turn's events.

The same function serves the JSON API, the state drawer and any trace view. `meta_v1`
is a stable compact contract for clients: add keys, never rename.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from persona.events import (
    Budget,
    ChatState,
    ChatStateRecorded,
    EdgeAsserted,
    EventPayload,
    GateDecision,
    IdentityUpdated,
    MemoryRetrieval,
    MemoryWritten,
    Metacognition,
    Perception,
    ReplyCompleted,
    Safety,
    Telemetry,
    TurnCompleted,
    TurnStarted,
    Workspace,
)
from persona.events.decisions import (
    Appraisal,
    AttentionDecision,
    BeliefRevised,
    Competition,
    ConfidenceDecision,
    DecisionOption,
    DialogueDecision,
    FailureDecision,
    GlobalStateDecision,
    RewardJudgement,
    SubjectivityDecision,
)
from persona.events.identity import OverrideNote
from persona.storage.eventlog import Event

META_VERSION = 2

P = TypeVar("P", bound=EventPayload)


class _Meta(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetaSafety(_Meta):
    """The safety verdict of the turn: risk, per category, raised flags, and why."""

    total_risk: float
    override: bool
    categories: dict[str, float] = Field(default_factory=dict)
    flags: list[str] = Field(
        default_factory=list, description="raised, in order: intervened, escalated, blocked"
    )
    reasons: list[str] = Field(default_factory=list)


class MetaPerception(_Meta):
    """How the message was read beyond the raw intent vector (None: recorded before v2)."""

    intent_smoothed: dict[str, float]
    primary_intent: str
    secondary_intent: str | None
    appraisal: Appraisal | None
    importance: int | None = Field(description="1..10")
    ooc: bool
    passes: int
    stability: float | None


class MetaRetrieved(_Meta):
    """A retrieved memory, its score parts, and whether it got into the prompt."""

    memory_id: str
    score: float
    lexical: float
    recency: float
    importance: float
    used: bool
    content: str = Field(description="the first 280 characters")
    entity: float = Field(default=0.0, description="share of the message's names it mentions")
    dense: float | None = Field(default=None, description="cosine with the message (dense on)")
    tier: str = "L1"


class MetaMemory(_Meta):
    """What the memory stage searched for, found and wrote."""

    query: str | None
    core: str | None
    retrieved: list[MetaRetrieved]
    written: str | None
    dropped_terms: list[str] = Field(
        default_factory=list, description="query terms too common to search with"
    )
    pinned: list[str] = Field(default_factory=list, description="pinned L3 memory ids")


class MetaEdge(_Meta):
    """A relationship edge the turn moved."""

    src: str
    rel: str
    dst: str
    weight: float


class MetaLLM(_Meta):
    """The speaker's model call."""

    backend: str
    model: str
    first_token_ms: float
    generation_ms: float
    prompt_tokens: int
    completion_tokens: int


class MetaV1(_Meta):
    """The stable compact meta every client can rely on."""

    trace_id: str
    intent: dict[str, float]
    dialogue_state: str
    telemetry: Telemetry
    safety: MetaSafety
    perception: MetaPerception
    decision_candidates: list[GateDecision]
    memory: MetaMemory
    timing_ms: dict[str, float] = Field(description="per stage, in pipeline order")
    meta_version: int
    engine_version: str
    build_sha: str
    config_hash: str
    # None in turns recorded before the global state and failure detection.
    telemetry_smoothed: Telemetry | None = Field(default=None, description="EMA per chat")
    global_state: str | None = Field(
        default=None, description="NORMAL, OVERLOADED, REFLECTIVE, SAFETY_LOCK or SILENT"
    )
    subjectivity_mode: str | None = Field(
        default=None, description="S0_REACTIVE, S1_REFLECTIVE, S2_AUTONOMOUS or S3_SAFE"
    )
    identity_health: float | None = Field(default=None, description="0..1, 1 = intact")
    collapse_level: int | None = Field(default=None, description="0 (none) .. 4")
    confidence: float | None = Field(default=None, description="the turn's confidence 0..1")
    decision_options: list[DecisionOption] = Field(
        default_factory=list, description="the scored ways to answer; one is chosen"
    )
    attention_rate: float | None = Field(
        default=None, description="running share of predicted workspace ids that were selected"
    )
    novelty: float | None = Field(
        default=None, description="1 - the message's highest overlap with the user's recent ones"
    )


class MetaIdentity(BaseModel):
    """The persona's control state after the turn, as this user sees it."""

    traits: dict[str, float]
    baseline: dict[str, float] = Field(description="this user's long-term trait baseline")
    values: dict[str, float]
    frozen: bool
    operator_global_state: str | None
    operator_subjectivity_mode: str | None
    budget: float
    phase: str
    applied: bool = Field(description="the reward moved baseline and values")
    drift: dict[str, float]
    reasons: list[str]
    last_override: OverrideNote | None


def meta_identity(p: IdentityUpdated) -> MetaIdentity:
    """Only this user's baseline: other users' baselines are not theirs to see."""
    st = p.state
    return MetaIdentity(
        traits=st.traits,
        baseline=st.baseline(p.user_id),
        values=st.values,
        frozen=st.frozen,
        operator_global_state=st.global_state,
        operator_subjectivity_mode=st.subjectivity_mode,
        budget=st.budget,
        phase=st.phase,
        applied=p.applied,
        drift=p.drift,
        reasons=p.reasons,
        last_override=st.last_override,
    )


class Meta(MetaV1):
    """Every decision of a completed turn (never null in a reply)."""

    turn_id: str
    session_id: str
    persona_id: str
    parent_turn_id: str | None
    depth: int
    top_intent: str
    ooc: bool
    importance: float
    token_budget: Budget
    edges: list[MetaEdge]
    llm: MetaLLM
    state: ChatState
    dialogue: DialogueDecision | None = Field(
        default=None, description="the state machine's step: reasons, scores, generation"
    )
    reward: RewardJudgement | None = Field(
        default=None, description="whether the reward_signal was applied, and why"
    )
    global_transition: GlobalStateDecision | None = Field(
        default=None, description="the global state's step: previous, dwell, reasons"
    )
    subjectivity: SubjectivityDecision | None = Field(
        default=None, description="the subjectivity mode's step: score, smoothed, reasons"
    )
    failure: FailureDecision | None = Field(
        default=None, description="identity health, collapse level, recovery, disclosure"
    )
    confidence_detail: ConfidenceDecision | None = Field(
        default=None, description="margin, stability, grounding, threshold"
    )
    attention: AttentionDecision | None = Field(
        default=None, description="the attention schema: prediction checked, next prediction"
    )
    revisions: list[BeliefRevised] = Field(
        default_factory=list, description="the belief-revision rounds, in order"
    )
    identity: MetaIdentity | None = Field(
        default=None, description="traits, values, temporal identity and operator overrides"
    )
    competition: Competition | None = Field(
        default=None, description="the workspace competition: salience, trace, winners"
    )
    reply_flags: list[str] = Field(
        default_factory=list,
        description="what the reply check did to the reply: label, continued, loop, cut, repeat",
    )
    meta_v1: MetaV1


class IncompleteTurn(ValueError):
    """The events given do not hold a completed turn."""


def _one(events: Sequence[Event], kind: type[P]) -> tuple[Event, P]:
    # The last one: a belief-revision round records memory, gating and metacognition
    # again, and the turn used the last round's.
    for e in reversed(events):
        if isinstance(e.payload, kind):
            return e, e.payload
    raise IncompleteTurn(f"no {kind.event_type} event in the turn")


def timing(events: Sequence[Event]) -> dict[str, float]:
    """Milliseconds per stage in pipeline order, and `overhead_total` outside the model.

    `begin` is recorded on turn.started, each stage on its event, `speaker` on
    reply.completed, `post` (post-reply decisions) and `writes` (the appends of begin
    and the stages) on turn.completed. Only the completion's own append is left out:
    an event cannot time the transaction that stores it (bench/ measures it).
    """
    out: dict[str, float] = {}
    for e in events:
        if e.latency_ms is None:
            continue
        if isinstance(e.payload, TurnStarted):
            out["begin"] = e.latency_ms
        elif isinstance(e.payload, ReplyCompleted):
            out["speaker"] = e.latency_ms
        elif isinstance(e.payload, TurnCompleted):
            out["post"] = e.latency_ms
            out["writes"] = e.payload.writes_ms
        else:  # a stage's decision (built-in or added), named by its actor
            out[e.actor] = e.latency_ms
    if out:
        out["overhead_total"] = round(sum(v for k, v in out.items() if k != "speaker"), 3)
    return out


def meta_safety(safety: Safety) -> MetaSafety:
    """The safety verdict as meta shows it (flags as the names of those raised)."""
    raised = [("intervened", safety.intervened), ("escalated", safety.escalated)]
    raised.append(("blocked", safety.blocked))
    return MetaSafety(
        total_risk=safety.total_risk,
        override=safety.override,
        categories=dict(sorted(safety.categories.items())),
        flags=[name for name, on in raised if on],
        reasons=safety.reasons,
    )


def build_meta(events: Sequence[Event]) -> Meta:
    """Assemble meta from a completed turn's events (IncompleteTurn otherwise)."""
    _, started = _one(events, TurnStarted)
    _, perception = _one(events, Perception)
    _, memory = _one(events, MemoryRetrieval)
    _, gating = _one(events, Workspace)
    _, metacog = _one(events, Metacognition)
    reply_event, reply = _one(events, ReplyCompleted)
    _one(events, TurnCompleted)
    written = next((e.payload for e in events if isinstance(e.payload, MemoryWritten)), None)
    state = next((e.payload for e in events if isinstance(e.payload, ChatStateRecorded)), None)
    ident = next((e.payload for e in events if isinstance(e.payload, IdentityUpdated)), None)
    edges = [
        MetaEdge(src=p.src, rel=p.rel, dst=p.dst, weight=round(p.weight, 4))
        for e in events
        if isinstance(p := e.payload, EdgeAsserted)
    ]
    selected = set(gating.selected_memories)
    trace_id = reply_event.trace_id or ""
    v1 = MetaV1(
        trace_id=trace_id,
        # Sorted by name: the same order whether the payload came from memory or the log.
        intent=dict(sorted(perception.intent.items())),
        dialogue_state=metacog.dialogue_state,
        telemetry=metacog.telemetry,
        safety=meta_safety(perception.safety),
        perception=MetaPerception(
            intent_smoothed=dict(sorted(perception.intent_smoothed.items())),
            primary_intent=perception.primary_intent,
            secondary_intent=perception.secondary_intent,
            appraisal=perception.appraisal,
            importance=perception.importance_score,
            ooc=perception.ooc,
            passes=perception.passes,
            stability=perception.stability,
        ),
        decision_candidates=gating.candidates,
        memory=MetaMemory(
            query=memory.query,
            core=memory.core.memory_id if memory.core else None,
            retrieved=[
                MetaRetrieved(
                    memory_id=m.memory_id,
                    score=m.score,
                    lexical=m.lexical,
                    recency=m.recency,
                    importance=m.importance,
                    used=m.memory_id in selected,
                    content=m.content[:280],
                    entity=m.entity,
                    dense=m.dense,
                    tier=m.tier,
                )
                for m in memory.results
            ],
            written=written.memory_id if written else None,
            dropped_terms=memory.dropped_terms,
            pinned=[m.memory_id for m in memory.pinned],
        ),
        timing_ms=timing(events),
        meta_version=META_VERSION,
        engine_version=started.engine_version,
        build_sha=started.build_sha,
        config_hash=started.config_hash,
        telemetry_smoothed=metacog.telemetry_smoothed,
        global_state=metacog.global_state.state if metacog.global_state else None,
        subjectivity_mode=metacog.subjectivity.mode if metacog.subjectivity else None,
        identity_health=metacog.failure.health if metacog.failure else None,
        collapse_level=metacog.failure.level if metacog.failure else None,
        confidence=metacog.confidence.value if metacog.confidence else None,
        decision_options=metacog.candidates,
        attention_rate=metacog.attention.running_rate if metacog.attention else None,
        novelty=metacog.novelty,
    )
    return Meta(
        **v1.model_dump(),
        turn_id=started.turn_id,
        session_id=started.chat_id,
        persona_id=started.persona_id,
        parent_turn_id=started.parent_turn_id,
        depth=started.depth,
        top_intent=perception.top_intent,
        ooc=perception.ooc,
        importance=perception.importance,
        # The plan gating made, with the size of the prompt actually sent.
        competition=gating.competition,
        token_budget=gating.budget.model_copy(update={"used": reply.prompt_tokens_counted})
        if reply.prompt_tokens_counted
        else gating.budget,
        edges=edges,
        llm=MetaLLM(
            backend=started.backend,
            model=reply_event.model or started.model,
            first_token_ms=reply.first_token_ms,
            generation_ms=reply.generation_ms,
            prompt_tokens=reply.usage.prompt_tokens,
            completion_tokens=reply.usage.completion_tokens,
        ),
        state=state.state if state else ChatState(),
        dialogue=metacog.dialogue,
        reward=metacog.reward,
        global_transition=metacog.global_state,
        subjectivity=metacog.subjectivity,
        failure=metacog.failure,
        confidence_detail=metacog.confidence,
        attention=metacog.attention,
        revisions=[p for e in events if isinstance(p := e.payload, BeliefRevised)],
        reply_flags=reply.flags,
        identity=meta_identity(ident) if ident else None,
        meta_v1=v1,
    )
