"""The dialogue state machine: a pure step from the parent turn's state to this turn's.

The rules, in order (thresholds in `[metacognition.dialogue]`, reasons in
docs/control-plane.md):
  1. A safety override forces S6_SAFETY and (re)starts its hold.
  2. In S6_SAFETY the state holds while the hold lasts or the risk is at or above
     `safety_exit_risk`; nothing else (not even a dominant message) leaves it sooner.
  2b. Auto-recovery (failure detection's collapse level at `recovery_level`) forces
     S4_META: plain, brief talk about the conversation until it recovers.
  3. An out-of-character message enters S4_META at once.
  4. A dominant message (raw state score >= `dominant`, ahead of the next state by
     `dominant_margin`) enters its state at once, even on the first turn or inside the
     dwell, unless that state was left within `return_block` turns (oscillation).
  5. Hysteresis on the smoothed scores: a state holds for `min_dwell` turns and while its
     score is >= `exit`; when it lets go, the best other state enters if its score is
     >= `enter`, else S0_NEUTRAL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from persona.config import DialogueSettings
from persona.events import ChatState
from persona.events.decisions import AppliedGeneration, DialogueDecision
from persona.events.state import canonical_state
from persona.llm.base import GenOptions

NEUTRAL, SAFETY, META = "S0_NEUTRAL", "S6_SAFETY", "S4_META"

# Which intents speak for which state (safety_risk only through the override).
STATE_INTENTS: dict[str, tuple[str, ...]] = {
    "S1_CASUAL": ("smalltalk",),
    "S2_TASK": ("task_oriented", "factual_query"),
    "S3_EMOTIONAL": ("emotional_support", "self_disclosure"),
    "S4_META": ("meta_conversation",),
    "S5_CREATIVE": ("creative_roleplay",),
}


@dataclass(frozen=True)
class StateStyle:
    """What a state asks of the reply: None keeps the configured value."""

    temperature: float | None
    max_tokens: int | None  # a cap: never raises the configured or requested value
    hint: str


# Low temperature where being right matters (task, safety), high where variety helps.
STYLES: dict[str, StateStyle] = {
    "S0_NEUTRAL": StateStyle(None, None, "Answer naturally"),
    "S1_CASUAL": StateStyle(0.8, 200, "Light, warm and brief"),
    "S2_TASK": StateStyle(0.3, None, "Precise: answer first, then details"),
    "S3_EMOTIONAL": StateStyle(0.6, 220, "Warm: reflect feelings first, advise only if asked"),
    "S4_META": StateStyle(0.4, 160, "Plain and brief about the conversation"),
    "S5_CREATIVE": StateStyle(0.9, None, "Stay in the story, vivid and in character"),
    "S6_SAFETY": StateStyle(0.2, 200, "Calm and caring; point to real help"),
}
# Short on purpose: a small model follows a few plain words better than a sentence, and
# every word here is budgeted in each prompt (gating reserves the longest line).

CAREFUL_HINT = "Recent replies missed: be careful and brief"


def state_scores(intents: Mapping[str, float]) -> dict[str, float]:
    """Each state's score: the sum of its intents' shares (0..1 for a distribution)."""
    return {
        state: round(sum(intents.get(i, 0.0) for i in names), 4)
        for state, names in STATE_INTENTS.items()
    }


def _best(scores: Mapping[str, float], exclude: str) -> tuple[str, float]:
    # Ties go to the state listed first: deterministic.
    ranked = sorted(
        ((s, v) for s, v in scores.items() if s != exclude), key=lambda sv: (-sv[1], sv[0])
    )
    return ranked[0]


def _dominant(raw: Mapping[str, float], s: DialogueSettings) -> tuple[str, float, float] | None:
    ranked = sorted(raw.items(), key=lambda sv: (-sv[1], sv[0]))
    (top, score), (_, second) = ranked[0], ranked[1]
    margin = round(score - second, 4)  # scores have 4 decimals: no float residue at the edge
    if score >= s.dominant and margin >= s.dominant_margin:
        return top, score, margin
    return None


def next_state(
    parent: ChatState,
    raw_intent: Mapping[str, float],
    smoothed_intent: Mapping[str, float],
    risk: float,
    override: bool,
    ooc: bool,
    s: DialogueSettings,
    recover: bool = False,
) -> tuple[str, int, list[str]]:
    """This turn's state, the S6 hold it leaves, and the reasons, from the parent's state."""
    current = canonical_state(parent.dialogue_state) or NEUTRAL
    dwell = parent.dwell if parent.dialogue_state else 0
    raw, smoothed = state_scores(raw_intent), state_scores(smoothed_intent)
    if override:
        return SAFETY, s.safety_dwell, [f"safety override: risk {risk:.2f} (escalated)"]
    if current == SAFETY:
        if parent.safety_hold > 0:
            why = f"holding {SAFETY}: {parent.safety_hold} turn(s) of the hold left"
            return SAFETY, parent.safety_hold - 1, [why]
        if risk >= s.safety_exit_risk:
            return SAFETY, 0, [f"holding {SAFETY}: risk {risk:.2f} >= exit {s.safety_exit_risk}"]
        best, score = _best(smoothed, SAFETY)
        left = f"left {SAFETY}: hold over and risk {risk:.2f} < {s.safety_exit_risk}"
        if score >= s.enter:
            return best, 0, [left, f"entered {best}: smoothed {score:.2f} >= enter {s.enter}"]
        return NEUTRAL, 0, [left, f"no state's smoothed score reaches enter {s.enter}"]
    if recover:
        return META, 0, ["auto-recovery: failure detection forces S4_META"]
    if ooc:
        if current == META:
            return META, 0, ["out-of-character message: staying in S4_META"]
        return META, 0, ["entered S4_META: out-of-character message"]
    reasons: list[str] = []
    dominant = _dominant(raw, s)
    if dominant and dominant[0] != current:
        target, score, margin = dominant
        if target == parent.left_state and dwell < s.return_block:
            reasons.append(
                f"dominant {target} ({score:.2f}) not taken: left it {dwell} turn(s) ago"
                f" (< {s.return_block}, oscillation)"
            )
        else:
            return (
                target,
                0,
                [
                    f"entered {target}: dominant shift, raw {score:.2f} >= {s.dominant}"
                    f" and {margin:.2f} ahead >= {s.dominant_margin}"
                ],
            )
    if current != NEUTRAL:
        if dwell < s.min_dwell:
            return current, 0, [*reasons, f"holding {current}: dwell {dwell} < {s.min_dwell}"]
        if smoothed[current] >= s.exit:
            return (
                current,
                0,
                [
                    *reasons,
                    f"holding {current}: smoothed {smoothed[current]:.2f} >= exit {s.exit}",
                ],
            )
        reasons.append(f"left {current}: smoothed {smoothed[current]:.2f} < exit {s.exit}")
    best, score = _best(smoothed, current)
    if score >= s.enter:
        return best, 0, [*reasons, f"entered {best}: smoothed {score:.2f} >= enter {s.enter}"]
    if current == NEUTRAL:
        reasons.append(f"staying {NEUTRAL}: best smoothed {best} {score:.2f} < enter {s.enter}")
    return NEUTRAL, 0, reasons


def is_careful(reward_avg: float, s: DialogueSettings) -> bool:
    """Whether the reward average asks for careful replies (at or below `careful_reward`)."""
    return reward_avg <= s.careful_reward


def applied_generation(
    state: str, gen: GenOptions, explicit: frozenset[str], careful: bool, s: DialogueSettings
) -> AppliedGeneration:
    """The options the reply is generated with: the state's, unless the request set them."""
    style = STYLES[state]
    temperature = gen.temperature
    if "temperature" not in explicit and style.temperature is not None:
        temperature = style.temperature
    max_tokens = gen.max_tokens
    if "max_tokens" not in explicit:
        if style.max_tokens is not None:
            max_tokens = min(max_tokens, style.max_tokens)
        if careful:
            max_tokens = max(1, round(max_tokens * s.careful_tokens))
    hint = f"{style.hint}. {CAREFUL_HINT}" if careful else style.hint
    return AppliedGeneration(
        temperature=temperature,
        max_tokens=max_tokens,
        style_hint=hint,
        careful=careful,
        explicit=sorted(explicit),
    )


def decide(
    parent: ChatState,
    raw_intent: Mapping[str, float],
    smoothed_intent: Mapping[str, float],
    risk: float,
    override: bool,
    ooc: bool,
    gen: GenOptions,
    explicit: frozenset[str],
    careful: bool,
    s: DialogueSettings,
    recover: bool = False,
) -> DialogueDecision:
    """The whole dialogue decision of a turn (a pure function of its arguments)."""
    state, hold, reasons = next_state(
        parent, raw_intent, smoothed_intent, risk, override, ooc, s, recover
    )
    previous = canonical_state(parent.dialogue_state)
    stayed = state == (previous or NEUTRAL) and parent.dialogue_state is not None
    return DialogueDecision(
        state=state,
        previous=previous,
        dwell=parent.dwell + 1 if stayed else 1,
        left_state=parent.left_state if stayed else previous,
        safety_hold=hold,
        scores=state_scores(smoothed_intent),
        raw_scores=state_scores(raw_intent),
        reasons=reasons,
        generation=applied_generation(state, gen, explicit, careful, s),
    )


def state_line(state: str, style_hint: str) -> str:
    """How a state and its style hint read in the prompt's "Conversation state" line."""
    return f"{state}. Style: {style_hint.rstrip('.')}"


def prompt_state(decision: DialogueDecision) -> str:
    """The decided state's line in the prompt."""
    return state_line(decision.state, decision.generation.style_hint)


# The longest line a state can put in the prompt: gating reserves room for it before
# metacognition has decided the state.
LONGEST_STATE_LINE = max(
    (state_line(name, f"{style.hint}. {CAREFUL_HINT}") for name, style in STYLES.items()),
    key=len,
)
