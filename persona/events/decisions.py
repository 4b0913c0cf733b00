"""The stage decisions: each stage returns one of these, and it is its event's payload."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, ClassVar, Literal

from pydantic import Field

from persona.events.base import EventPayload, Model
from persona.events.memory import Utterance
from persona.events.state import canonical_state


class Safety(Model):
    """Perceived safety risk of a message: per category, in total, as flags, and why.

    `override` is `escalated` (one source of truth for the crisis handling).
    """

    total_risk: float = Field(ge=0.0, le=1.0)
    override: bool
    cues: list[str] = Field(default_factory=list)
    categories: dict[str, float] = Field(
        default_factory=dict, description="risk per category (self_harm, violence, ...)"
    )
    intervened: bool = False
    escalated: bool = False
    blocked: bool = False
    reasons: list[str] = Field(default_factory=list, description="which cue, category, discount")


class Appraisal(Model):
    """The feeling a message carries: valence -1..1, arousal 0..1, discrete emotions 0..1."""

    valence: float = Field(ge=-1.0, le=1.0)
    arousal: float = Field(ge=0.0, le=1.0)
    emotions: dict[str, float] = Field(default_factory=dict, description="only those present")


class ClassifierInfo(Model):
    """What the classifier model answered (or that it failed) for a message."""

    ok: bool
    primary_intent: str
    confidence: float
    attempts: int
    model: str = ""


def _perception_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # v1 had no smoothing, appraisal, passes or flags. Nothing is invented: the smoothed
    # vector is the raw one, flags follow the recorded override, the rest stays unknown.
    p = dict(p)
    intent: dict[str, float] = p["intent"]
    ranked = sorted(intent, key=lambda k: -intent[k])
    safety = dict(p["safety"])
    override = bool(safety["override"])
    safety.update(
        categories={},
        intervened=override,
        escalated=override,
        blocked=False,
        reasons=["recorded before perception v2: no reasons kept"],
    )
    p.update(
        safety=safety,
        intent_smoothed=dict(intent),
        primary_intent=p["top_intent"],
        secondary_intent=ranked[1] if len(ranked) > 1 else None,
        appraisal=None,
        importance_score=None,
        passes=1,
        stability=None,
    )
    return p


class Perception(EventPayload):
    """Perception: what the user said and meant."""

    event_type: ClassVar[str] = "perception.completed"
    version: ClassVar[int] = 2
    upcasters = MappingProxyType({1: _perception_v1_to_v2})

    intent: dict[str, float] = Field(description="after the passes and the classifier")
    top_intent: str = Field(description="the same as primary_intent")
    intent_smoothed: dict[str, float] = Field(description="EMA over the chat (state.py)")
    primary_intent: str
    secondary_intent: str | None = Field(description="None when the runner-up is weak")
    cues: dict[str, list[str]] = Field(default_factory=dict)
    safety: Safety
    ooc: bool
    importance: float = Field(ge=0.0, le=1.0, description="memory weight, 0..1")
    importance_score: int | None = Field(
        ge=1, le=10, description="importance of the exchange 1..10 (None: before v2)"
    )
    appraisal: Appraisal | None = Field(description="None: recorded before v2")
    passes: int = Field(ge=1, description="recurrent passes run")
    stability: float | None = Field(
        ge=0.0, le=1.0, description="1 - half the L1 change of the last pass (None: before v2)"
    )
    classifier: ClassifierInfo | None = None


class CoreMemory(Model):
    """An L3 memory, always present: the genesis, a pinned memory, a belief."""

    memory_id: str
    content: str
    said: list[Utterance] = Field(default_factory=list, description="who said what")


class RetrievedMemory(Model):
    """One memory the memory stage ranked, with the parts of its score."""

    memory_id: str
    content: str
    chat_id: str | None = None
    score: float = Field(description="the fused score, 0..1 (1: first in every list)")
    lexical: float = Field(description="BM25 relative to the best match, 0..1")
    recency: float = Field(description="exponential decay in chat-clock hours, 1 = now")
    importance: float
    entity: float = Field(default=0.0, description="share of the message's names it mentions")
    dense: float | None = Field(default=None, description="cosine with the message (0..1)")
    tier: str = "L1"
    kind: str = "exchange"
    said: list[Utterance] = Field(default_factory=list, description="who said what")
    created_at: str | None = Field(default=None, description="chat time it was written")
    source_ref: str | None = None


class MemoryRetrieval(EventPayload):
    """Memory: what is relevant to this message."""

    event_type: ClassVar[str] = "memory.retrieved"

    query: str | None = Field(description="the search terms, space-separated")
    candidates: int = Field(ge=0)
    core: CoreMemory | None
    results: list[RetrievedMemory]
    dropped_terms: list[str] = Field(
        default_factory=list, description="terms matching too many memories to help"
    )
    pinned: list[CoreMemory] = Field(
        default_factory=list, description="memories the user pinned to L3: always in context"
    )
    dense_model: str | None = Field(default=None, description="the embedding model asked")
    query_vector: str | None = Field(
        default=None, description="the message's embedding (base64 float32), for replay"
    )


class Budget(Model):
    """How the context window is split (tokens)."""

    context: int
    reply: int
    message: int
    available: int
    core: int = 0
    used: int = 0


class GateDecision(Model):
    """One candidate of the workspace competition and why it did or did not get in."""

    kind: Literal["history", "memory", "edge", "emotion", "goal"]
    id: str
    priority: float
    tokens: int
    selected: bool
    reason: str
    text: str | None = Field(
        default=None, description="the note an edge, emotion or goal adds to the prompt"
    )


class Competition(Model):
    """The workspace competition: who competed, the activation trace, who won."""

    k: int
    iterations: int
    salience: dict[str, float] = Field(description="each contender's starting activation")
    kinds: dict[str, str]
    trace: list[dict[str, float]] = Field(description="activations after each iteration")
    winners: list[str] = Field(description="strongest first")
    inhibitions: int = Field(ge=0, description="(stronger inhibits a similar weaker) events")


class Workspace(EventPayload):
    """Gating: what got into the prompt, within the token budget."""

    event_type: ClassVar[str] = "workspace.selected"

    budget: Budget
    candidates: list[GateDecision]
    selected_memories: list[str]
    selected_history: list[str]
    selected_notes: list[str] = Field(
        default_factory=list, description="edge, emotion and goal candidates in the prompt"
    )
    competition: Competition | None = Field(
        default=None, description="None in turns recorded before the competition"
    )


class Telemetry(Model):
    """C coherence, N narrativity, M memory, S self-modeling, R responsiveness (each 0..1).

    The formulas are in `persona.pipeline.metacognition` and docs/control-plane.md.
    """

    C: float
    N: float
    M: float
    S: float
    R: float


class AppliedGeneration(Model):
    """The generation options the dialogue state set for the reply (request values win)."""

    temperature: float
    max_tokens: int
    style_hint: str
    careful: bool = Field(description="the reward average asked for shorter, careful replies")
    explicit: list[str] = Field(
        default_factory=list, description="options the request set itself (kept as asked)"
    )


class DialogueDecision(Model):
    """The dialogue state machine's step: where it went, why, and what it carries on."""

    state: str
    previous: str | None
    dwell: int = Field(ge=1, description="consecutive turns in `state`, this one included")
    left_state: str | None = Field(description="the state held before `state`")
    safety_hold: int = Field(ge=0, description="turns S6_SAFETY still holds after this one")
    scores: dict[str, float] = Field(description="smoothed score per state")
    raw_scores: dict[str, float] = Field(description="this message's score per state")
    reasons: list[str]
    generation: AppliedGeneration


class RewardJudgement(Model):
    """What the turn's reward_signal (a verdict on the previous reply) did."""

    signal: float
    applied: bool
    reason: str
    avg: float = Field(description="the reward average after this turn")


class GlobalStateDecision(Model):
    """The global state of the turn (NORMAL, OVERLOADED, REFLECTIVE, SAFETY_LOCK, SILENT)."""

    state: str
    previous: str | None
    dwell: int = Field(ge=1, description="consecutive turns in `state`, this one included")
    message_share: float = Field(description="the message's share of the prompt room")
    reasons: list[str]


class SubjectivityDecision(Model):
    """The subjectivity mode (S0_REACTIVE, S1_REFLECTIVE, S2_AUTONOMOUS, S3_SAFE)."""

    mode: str
    previous: str | None
    dwell: int = Field(ge=1, description="consecutive turns in `mode`, this one included")
    score: float = Field(description="this turn's weighted telemetry score, 0..1")
    smoothed: float = Field(description="the score's moving average over the chat")
    reasons: list[str]


class FailureDecision(Model):
    """Failure detection: identity health, collapse level, recovery and disclosure."""

    health: float = Field(ge=0.0, le=1.0, description="identity health, 1 = intact")
    collapse_risk: float = Field(ge=0.0, le=1.0, description="1 - health")
    level: int = Field(ge=0, le=4, description="collapse level, 0 (none) .. 4")
    lost_streak: int = Field(ge=0, description="turns running with low coherence and memory")
    degenerate_streak: int = Field(ge=0, description="degenerate replies running before this")
    recovery: str | None = Field(description="the dialogue state auto-recovery forced")
    memory_missing: bool = Field(description="the message refers back and no memory got in")
    disclose: bool = Field(description="the speaker is told to disclose uncertainty")
    reasons: list[str]


class DecisionOption(Model):
    """One way to answer the turn, scored 0..1 from the turn's decisions; one is chosen."""

    name: str = Field(description="answer_in_state, short_task_answer, clarify, safety_redirect")
    score: float = Field(ge=0.0, le=1.0)
    chosen: bool
    reason: str


class ConfidenceDecision(Model):
    """How sure the turn is of its reading: 0..1 from its parts (docs/control-plane.md)."""

    value: float = Field(ge=0.0, le=1.0)
    margin: float = Field(description="primary minus runner-up intent share")
    stability: float = Field(description="perception's stability (1.0 when not recorded)")
    grounding: float = Field(description="max(C, M): context or memory behind the turn")
    threshold: float = Field(description="metacognition.revision_threshold")
    low: bool = Field(description="value < threshold")


class AttentionDecision(Model):
    """The attention schema: last turn's prediction checked, and the next prediction."""

    predicted: list[str] = Field(description="ids the parent turn expected in this workspace")
    hits: int = Field(ge=0, description="predicted ids that were selected")
    rate: float | None = Field(description="hits / predicted (None: nothing predicted)")
    running_rate: float | None = Field(description="all hits / all predicted over the path")
    next_predicted: list[str] = Field(description="ids expected in the next turn's workspace")


def _metacognition_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # Names before the state machine ("smalltalk", "crisis") read as the states they meant.
    return {**p, "dialogue_state": canonical_state(p.get("dialogue_state")) or "S0_NEUTRAL"}


class Metacognition(EventPayload):
    """Metacognition: how the conversation is going."""

    event_type: ClassVar[str] = "metacognition.completed"
    version: ClassVar[int] = 2
    upcasters = MappingProxyType({1: _metacognition_v1_to_v2})

    telemetry: Telemetry
    dialogue_state: str
    dialogue: DialogueDecision | None = None
    reward: RewardJudgement | None = None
    # Absent (None) in events recorded before the global state and failure detection.
    telemetry_smoothed: Telemetry | None = None
    global_state: GlobalStateDecision | None = None
    subjectivity: SubjectivityDecision | None = None
    failure: FailureDecision | None = None
    # Absent (None / empty) in events recorded before confidence and decision candidates.
    confidence: ConfidenceDecision | None = None
    candidates: list[DecisionOption] = Field(default_factory=list)
    attention: AttentionDecision | None = None
    # Absent (None) in events recorded before narrativity replaced novelty as N.
    novelty: float | None = Field(
        default=None, description="1 - topic continuity: how new the message is (curiosity)"
    )


class BeliefRevised(EventPayload):
    """A belief-revision round: memory, gating and metacognition re-ran, widened.

    Recorded after the round's own memory.retrieved, workspace.selected and
    metacognition.completed; the turn's last such events are the ones the speaker used.
    """

    event_type: ClassVar[str] = "belief.revised"

    round: int = Field(ge=1, description="1 .. the most rounds (2)")
    reason: str
    confidence_before: float
    confidence_after: float | None = Field(default=None, description="None: round not run yet")
    terms_added: list[str] = Field(
        default_factory=list, description="query terms from the previous exchange"
    )
    fts_candidates: int = Field(ge=0, description="lexical candidates asked for this round")
    recent_candidates: int = Field(ge=0, description="newest memories asked for this round")
    top_k: int = Field(ge=0, description="ranked memories kept this round")
    new_candidates: int = Field(default=0, description="more candidates than before the round")
    selected_added: list[str] = Field(default_factory=list, description="ids now in the workspace")
    selected_dropped: list[str] = Field(default_factory=list, description="ids no longer in it")
    changed: bool = Field(default=False, description="new candidates or a different workspace")


class ClassifierFailed(EventPayload):
    """A structured model call failed; the stage fell back to its own judgement."""

    event_type: ClassVar[str] = "classifier.failed"

    stage: str
    schema_name: str
    model: str | None = None
    error: str
    attempts: int
