"""Metacognition: how am I doing (telemetry, dialogue state, global state, subjectivity
mode and failure detection), each a pure step from the parent turn's chat state.

Telemetry, each 0..1 (raw here, smoothed per chat in `state.smooth_telemetry`):
  C  coherence       share of the message's content words already in the selected context
                     (recent exchanges and memories); 0.5 when the message has none.
  N  narrativity     how far the turn carries the chat's thread on: the mean of topic
                     continuity (the highest word overlap with the user's last
                     `novelty_window` messages on the active path) and intent continuity
                     (cosine of this message's intents with the chat's smoothed ones);
                     0.5 on a chat's first turn, which has no thread yet.
  M  memory          mean retrieval score of the memories that made it into the workspace.
  S  self-modeling   how well the persona's model of itself holds: the mean of the
                     attention schema's running success rate (0.5 before any prediction)
                     and the persona's stability budget (temporal identity).
  R  responsiveness  the user's judgement of the replies: 0.5 + 0.5 * the reward average
                     after this turn's reward_signal (the parent's full-precision average).
Novelty (1 - topic continuity) is recorded beside them (`Metacognition.novelty`): the
identity step's curiosity reads it.

reward_signal judges the previous reply, so a chat's first turn ignores it (recorded in
`reward`). When the average after this turn is at or below `dialogue.careful_reward`, the
reply turns careful: max_tokens shrinks by `careful_tokens` and the style hint asks for a
more careful, shorter answer (`dialogue.generation.careful`).

Order within the stage: telemetry -> smoothed telemetry -> failure detection (it may force
auto-recovery) -> dialogue state (`dialogue.decide`) -> global state -> subjectivity mode.
Every threshold and its reason is in docs/control-plane.md.
"""

from __future__ import annotations

import math

from persona.config import FailureSettings, GlobalStateSettings, SubjectivitySettings
from persona.events import (
    Budget,
    ChatState,
    MemoryRetrieval,
    Metacognition,
    Perception,
    Telemetry,
    Workspace,
)
from persona.events.decisions import (
    AttentionDecision,
    FailureDecision,
    GlobalStateDecision,
    RewardJudgement,
    SubjectivityDecision,
)
from persona.pipeline import dialogue
from persona.pipeline.attention import decide_attention
from persona.pipeline.context import StageEnv, StageOutput, TurnContext
from persona.pipeline.identity import DEGRADED_SAFE
from persona.pipeline.revision import decide_candidates, decide_confidence
from persona.pipeline.state import (
    FIRST_TURN_REWARD,
    reward_after,
    reward_applies,
    smooth_telemetry,
    smoothed_intent,
)
from persona.pipeline.text import Matcher, content_words, jaccard

NORMAL, OVERLOADED, REFLECTIVE = "NORMAL", "OVERLOADED", "REFLECTIVE"
SAFETY_LOCK, SILENT = "SAFETY_LOCK", "SILENT"
# In the order of precedence: an earlier state that applies wins.
GLOBAL_STATES = (SILENT, SAFETY_LOCK, OVERLOADED, REFLECTIVE, NORMAL)

S0_REACTIVE, S1_REFLECTIVE, S2_AUTONOMOUS, S3_SAFE = (
    "S0_REACTIVE",
    "S1_REFLECTIVE",
    "S2_AUTONOMOUS",
    "S3_SAFE",
)
SUBJECTIVITY_MODES = (S0_REACTIVE, S1_REFLECTIVE, S2_AUTONOMOUS, S3_SAFE)
# The non-safe modes by rank: the score's bands.
RANKED_MODES = (S0_REACTIVE, S1_REFLECTIVE, S2_AUTONOMOUS)

# Collapse risk per level: level = floor(risk / LEVEL_STEP), at most MAX_LEVEL.
LEVEL_STEP, MAX_LEVEL = 0.2, 4
# Shares of the collapse risk: a full lost run, a full degenerate run, the safety risk.
LOST_SHARE, DEGENERATE_SHARE, SAFETY_SHARE = 0.4, 0.4, 0.2

# A message that refers back to earlier talks (English and Japanese).
REFERS_BACK = (
    "remember",
    "last time",
    "you said",
    "you told me",
    "i told you",
    "we talked",
    "we discussed",
    "the other day",
    "覚えて",
    "この前",
    "前に話した",
    "前回",
    "先日",
    "言ったよね",
)


def judge_reward(ctx: TurnContext, rate: float) -> RewardJudgement:
    """What this turn's reward_signal does to the reward average, and why."""
    signal = ctx.request.reward_signal
    applied = reward_applies(ctx.parent_state)
    return RewardJudgement(
        signal=signal,
        applied=applied,
        reason="applied to the previous reply" if applied else FIRST_TURN_REWARD,
        avg=round(reward_after(ctx.parent_state, signal, rate), 6),
    )


def topic_continuity(ctx: TurnContext, window: int) -> float:
    """The highest word overlap of the message with the user's last `window` messages."""
    msg = content_words(ctx.request.message)
    earlier = ctx.recent_user_messages[-window:] if window else []
    return max((jaccard(msg, content_words(p)) for p in earlier), default=0.0)


def intent_continuity(previous: dict[str, float], current: dict[str, float]) -> float:
    """Cosine of this message's intents with the chat's smoothed ones (0 if either is empty)."""
    keys = sorted(set(previous) | set(current))
    dot = sum(previous.get(k, 0.0) * current.get(k, 0.0) for k in keys)
    norm = math.sqrt(sum(v * v for v in previous.values())) * math.sqrt(
        sum(v * v for v in current.values())
    )
    return min(dot / norm, 1.0) if norm else 0.0


def self_modeling(attention: AttentionDecision, budget: float) -> float:
    """The mean of the attention schema's running success rate and the stability budget."""
    rate = attention.running_rate if attention.running_rate is not None else 0.5
    return (rate + budget) / 2


def telemetry(
    ctx: TurnContext,
    reward_ema: float,
    topic: float,
    attention: AttentionDecision,
) -> Telemetry:
    """Compute C, N, M, S, R for this turn (`topic`: `topic_continuity` of the message)."""
    msg = content_words(ctx.request.message)
    workspace = ctx.need(Workspace)
    memories = {m.memory_id: m for m in ctx.need(MemoryRetrieval).results}
    selected_history = set(workspace.selected_history)
    context_words: set[str] = set()
    for h in ctx.history:
        if h.turn_id in selected_history:
            context_words |= content_words(h.user_message + " " + h.reply)
    for mid in workspace.selected_memories:
        context_words |= content_words(memories[mid].content)
    coherence = len(msg & context_words) / len(msg) if msg else 0.5
    parent = ctx.parent_state
    if parent.turns:
        intents = intent_continuity(parent.intents, ctx.need(Perception).intent)
        narrativity = (topic + intents) / 2
    else:
        narrativity = 0.5
    used = [memories[mid].score for mid in workspace.selected_memories]
    memory = sum(used) / len(used) if used else 0.0
    budget = ctx.identity.budget if ctx.identity else 1.0
    reward = reward_after(parent, ctx.request.reward_signal, reward_ema)
    return Telemetry(
        C=round(coherence, 4),
        N=round(narrativity, 4),
        M=round(min(memory, 1.0), 4),
        S=round(self_modeling(attention, budget), 4),
        R=round(0.5 + 0.5 * reward, 4),
    )


def refers_back(message: str) -> bool:
    """Whether the message asks about earlier talks ("remember", "last time", 「この前」)."""
    found = Matcher(message)
    return any(phrase in found for phrase in REFERS_BACK)


def memory_missing(
    message: str, workspace: Workspace, telemetry: Telemetry, s: FailureSettings
) -> bool:
    """The message refers back, no memory got in, and nothing in view speaks to it: its
    coherence is under `low_coherence` (a fact still in the selected history is in view)."""
    coherence = telemetry.C
    in_view = coherence >= s.low_coherence
    return refers_back(message) and not workspace.selected_memories and not in_view


def message_share(budget: Budget) -> float:
    """The message's share of the prompt room (context window less the reply)."""
    room = budget.context - budget.reply
    return round(min(budget.message / room, 1.0), 4) if room > 0 else 1.0


def memory_squeezed(workspace: Workspace) -> bool:
    """Relevant memories were found but the budget left room for none of them."""
    memories = [c for c in workspace.candidates if c.kind == "memory"]
    return any(c.reason == "over budget" for c in memories) and not any(
        c.selected for c in memories
    )


def decide_failure(
    parent: ChatState,
    telemetry: Telemetry,
    safety_risk: float,
    memory_missing: bool,
    s: FailureSettings,
) -> FailureDecision:
    """Identity health and collapse level from the continuity signals, and what follows.

    risk = 0.4 * lost run + 0.4 * degenerate run + 0.2 * the perceived safety risk, each
    run counted up to its full length (`lost_run`, `degenerate_run`); health = 1 - risk;
    level = risk / 0.2.
    """
    reasons: list[str] = []
    coherence, memory = telemetry.C, telemetry.M
    lost = parent.turns > 0 and coherence < s.low_coherence and memory < s.low_memory
    lost_streak = parent.lost_streak + 1 if lost else 0
    if lost:
        reasons.append(
            f"lost turn {lost_streak}: C {coherence:.2f} < {s.low_coherence}"
            f" and M {memory:.2f} < {s.low_memory}"
        )
    degenerate = parent.degenerate_streak
    if degenerate:
        reasons.append(f"{degenerate} degenerate repl{'y' if degenerate == 1 else 'ies'} running")
    risk = (
        LOST_SHARE * min(lost_streak / s.lost_run, 1.0)
        + DEGENERATE_SHARE * min(degenerate / s.degenerate_run, 1.0)
        + SAFETY_SHARE * safety_risk
    )
    risk = round(min(max(risk, 0.0), 1.0), 4)
    level = min(MAX_LEVEL, int(risk / LEVEL_STEP + 1e-9))
    recovery = dialogue.META if level >= s.recovery_level else None
    if recovery:
        reasons.append(f"auto-recovery: level {level} >= {s.recovery_level} forces {recovery}")
    health = round(1.0 - risk, 4)
    low_health = health < s.disclose_health
    if memory_missing:
        reasons.append(
            "continuity: the message refers back and no memory got in"
            f" (C {coherence:.2f} < {s.low_coherence})"
        )
    if low_health:
        reasons.append(f"continuity: health {health:.2f} < {s.disclose_health}")
    return FailureDecision(
        health=health,
        collapse_risk=risk,
        level=level,
        lost_streak=lost_streak,
        degenerate_streak=degenerate,
        recovery=recovery,
        memory_missing=memory_missing,
        disclose=memory_missing or low_health,
        reasons=reasons,
    )


def decide_global(
    parent: ChatState,
    dialogue_state: str,
    share: float,
    squeezed: bool,
    coherence: float,
    s: GlobalStateSettings,
    operator: str | None = None,
) -> GlobalStateDecision:
    """The global state: the first of SILENT, SAFETY_LOCK, OVERLOADED, REFLECTIVE that
    applies, else NORMAL. OVERLOADED and REFLECTIVE enter and leave at different
    thresholds and hold `min_dwell` turns (hysteresis); SAFETY_LOCK follows S6_SAFETY,
    which has its own hold; SILENT only by the operator (`ChatState.operator_state`)."""
    current = parent.global_state or NORMAL
    held = current in (OVERLOADED, REFLECTIVE) and parent.global_dwell < s.min_dwell
    reasons: list[str] = []

    def done(state: str, why: str) -> GlobalStateDecision:
        stayed = state == current and parent.global_state is not None
        return GlobalStateDecision(
            state=state,
            previous=parent.global_state,
            dwell=parent.global_dwell + 1 if stayed else 1,
            message_share=share,
            reasons=[*reasons, why],
        )

    # The persona's operator state (identity_state) is the source; the chat field is legacy.
    if operator == SILENT or parent.operator_state == SILENT:
        return done(SILENT, "SILENT: set by the operator")
    if dialogue_state == dialogue.SAFETY:
        return done(SAFETY_LOCK, f"{SAFETY_LOCK}: dialogue state {dialogue.SAFETY} holds")
    if current == SAFETY_LOCK:
        reasons.append(f"left {SAFETY_LOCK}: {dialogue.SAFETY} ended")
    if current == OVERLOADED:
        if held:
            return done(OVERLOADED, f"holding {OVERLOADED}: dwell {parent.global_dwell}")
        limit = s.overload_exit
    else:
        limit = s.overload_enter
    if share >= limit:
        return done(
            OVERLOADED, f"{OVERLOADED}: the message takes {share:.2f} of the room >= {limit}"
        )
    if squeezed:
        return done(OVERLOADED, f"{OVERLOADED}: no room left for any relevant memory")
    if current == OVERLOADED:
        reasons.append(f"left {OVERLOADED}: message share {share:.2f} < {limit}")
    if current == REFLECTIVE and held:
        return done(REFLECTIVE, f"holding {REFLECTIVE}: dwell {parent.global_dwell}")
    if dialogue_state == dialogue.META:
        return done(REFLECTIVE, f"{REFLECTIVE}: the conversation is about itself (S4_META)")
    limit = s.reflective_exit if current == REFLECTIVE else s.reflective_enter
    if parent.turns >= s.reflective_after and coherence < limit:
        return done(REFLECTIVE, f"{REFLECTIVE}: smoothed C {coherence:.2f} < {limit}")
    if current == REFLECTIVE:
        reasons.append(f"left {REFLECTIVE}: not S4_META and smoothed C {coherence:.2f} >= {limit}")
    return done(NORMAL, f"{NORMAL}: no lock, load or reflection")


def subjectivity_score(t: Telemetry, s: SubjectivitySettings) -> float:
    """The weighted telemetry score (the weights sum to 1)."""
    weighted = (
        s.weight_c * t.C + s.weight_n * t.N + s.weight_m * t.M + s.weight_s * t.S + s.weight_r * t.R
    )
    return round(weighted, 4)


def decide_subjectivity(
    parent: ChatState,
    telemetry: Telemetry,
    global_state: str,
    level: int,
    s: SubjectivitySettings,
    forced: str | None = None,
    phase: str | None = None,
) -> SubjectivityDecision:
    """The subjectivity mode from the smoothed score, with bands and hysteresis.

    `phase` is the persona's temporal identity phase as the turn began: DEGRADED_SAFE
    forces S3_SAFE like a lock or collapse does; once it ends, the usual S3 exit applies.
    """
    score = subjectivity_score(telemetry, s)
    prev = parent.subjectivity_score
    smoothed = score if prev is None else round(s.smoothing * score + (1 - s.smoothing) * prev, 4)
    current = parent.subjectivity_mode or S0_REACTIVE
    reasons: list[str] = []

    def done(mode: str, why: str) -> SubjectivityDecision:
        stayed = mode == current and parent.subjectivity_mode is not None
        return SubjectivityDecision(
            mode=mode,
            previous=parent.subjectivity_mode,
            dwell=parent.subjectivity_dwell + 1 if stayed else 1,
            score=score,
            smoothed=smoothed,
            reasons=[*reasons, why],
        )

    if global_state == SAFETY_LOCK:
        return done(S3_SAFE, f"{S3_SAFE}: global state {SAFETY_LOCK}")
    if level >= MAX_LEVEL:
        return done(S3_SAFE, f"{S3_SAFE}: collapse level {level}")
    if phase == DEGRADED_SAFE:
        return done(S3_SAFE, f"{S3_SAFE}: identity phase {DEGRADED_SAFE}")
    # The operator's forced mode; the safety rules above still win.
    if forced is not None and forced in SUBJECTIVITY_MODES:
        return done(forced, f"{forced}: forced by the operator")
    if current == S3_SAFE:
        if parent.subjectivity_dwell < s.min_dwell:
            return done(S3_SAFE, f"holding {S3_SAFE}: dwell {parent.subjectivity_dwell}")
        if smoothed < s.safe_exit:
            return done(S3_SAFE, f"holding {S3_SAFE}: smoothed {smoothed:.2f} < {s.safe_exit}")
        reasons.append(f"left {S3_SAFE}: smoothed {smoothed:.2f} >= {s.safe_exit}")
        current = S0_REACTIVE
    elif smoothed < s.safe_enter:
        return done(S3_SAFE, f"{S3_SAFE}: smoothed {smoothed:.2f} < {s.safe_enter}")
    elif parent.subjectivity_mode is not None and parent.subjectivity_dwell < s.min_dwell:
        return done(current, f"holding {current}: dwell {parent.subjectivity_dwell}")
    bands = (s.reflective, s.autonomous)
    rank = RANKED_MODES.index(current)
    up = sum(smoothed >= t for t in bands)
    down = sum(smoothed >= t - s.hysteresis for t in bands)
    new = max(up, min(rank, down))
    mode = RANKED_MODES[new]
    return done(mode, f"{mode}: smoothed {smoothed:.2f} (bands {bands}, hysteresis {s.hysteresis})")


class MetacognitionStage:
    """Assess the turn: telemetry, the reward's effect and the dialogue state."""

    name = "metacognition"

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput:
        s = env.settings.metacognition
        parent = ctx.parent_state
        perception = ctx.need(Perception)
        workspace = ctx.need(Workspace)
        reward = judge_reward(ctx, s.reward_ema)
        history_turns = env.settings.gating.history_turns
        attention = decide_attention(parent, ctx.turn_id, workspace, history_turns)
        topic = topic_continuity(ctx, s.novelty_window)
        raw = telemetry(ctx, s.reward_ema, topic, attention)
        smoothed = smooth_telemetry(parent.telemetry, raw, s.telemetry_smoothing)
        missing = memory_missing(ctx.request.message, workspace, raw, s.failure)
        risk = perception.safety.total_risk
        failure = decide_failure(parent, raw, risk, missing, s.failure)
        decision = dialogue.decide(
            parent,
            perception.intent,
            smoothed_intent(parent, perception),
            perception.safety.total_risk,
            perception.safety.override,
            perception.ooc,
            ctx.request.gen,
            ctx.request.gen_explicit,
            careful=dialogue.is_careful(reward.avg, s.dialogue),
            s=s.dialogue,
            recover=failure.recovery is not None,
        )
        glob = decide_global(
            parent,
            decision.state,
            message_share(workspace.budget),
            memory_squeezed(workspace),
            smoothed.C,
            s.global_state,
            operator=ctx.identity.global_state if ctx.identity else None,
        )
        mode = decide_subjectivity(
            parent,
            raw,
            glob.state,
            failure.level,
            s.subjectivity,
            forced=ctx.identity.subjectivity_mode if ctx.identity else None,
            phase=ctx.identity.phase if ctx.identity else None,
        )
        confidence = decide_confidence(perception, raw, s.revision_threshold)
        return StageOutput(
            Metacognition(
                telemetry=raw,
                dialogue_state=decision.state,
                dialogue=decision,
                reward=reward,
                telemetry_smoothed=smoothed,
                global_state=glob,
                subjectivity=mode,
                failure=failure,
                confidence=confidence,
                candidates=decide_candidates(
                    perception, confidence.value, decision.state, glob.state
                ),
                attention=attention,
                novelty=round(1.0 - topic, 4),
            )
        )
