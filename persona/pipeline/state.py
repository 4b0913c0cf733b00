"""Chat-scoped state: a pure `step(previous, decisions) -> next` per completed turn.

The snapshot is recorded with the turn (`chat_state.recorded`); the next turn reads its
parent turn's snapshot, so rewinding to a turn or branching from it restores exactly
the state that held after it.
"""

from __future__ import annotations

from collections.abc import Sequence

from persona.events import ChatState, Metacognition, Perception, Telemetry, Workspace
from persona.pipeline.reply_check import DEGENERATE

# Weight of the newest turn in the smoothed intent distribution.
INTENT_SMOOTHING = 0.5

FIRST_TURN_REWARD = "ignored: the chat's first turn has no earlier reply to judge"


def next_reward_avg(previous: float, signal: float, rate: float) -> float:
    """Exponential moving average of reward_signal (full precision, -1..1)."""
    return (1.0 - rate) * previous + rate * signal


def reward_applies(parent: ChatState) -> bool:
    """A reward_signal judges the previous reply: there is none before the first turn."""
    return parent.turns > 0


def reward_after(parent: ChatState, signal: float, rate: float) -> float:
    """The reward average after this turn's signal (unchanged when it is ignored)."""
    if not reward_applies(parent):
        return parent.reward_avg
    return next_reward_avg(parent.reward_avg, signal, rate)


def smooth_intents(previous: dict[str, float], current: dict[str, float]) -> dict[str, float]:
    """Blend this turn's intent distribution into the running one (first turn: as is)."""
    if not previous:
        return dict(sorted(current.items()))
    keys = sorted(set(previous) | set(current))
    a = INTENT_SMOOTHING
    return {k: round(a * current.get(k, 0.0) + (1 - a) * previous.get(k, 0.0), 6) for k in keys}


def smooth_telemetry(previous: dict[str, float], current: Telemetry, rate: float) -> Telemetry:
    """Blend this turn's telemetry into the chat's running one (first turn: as is)."""
    now = current.model_dump()
    if not previous:
        return current
    return Telemetry(
        **{k: round(rate * v + (1 - rate) * previous.get(k, v), 4) for k, v in now.items()}
    )


def degenerate_after(previous: int, reply_flags: Sequence[str]) -> int:
    """Degenerate replies running, this one included (0 once a reply comes out clean)."""
    return previous + 1 if DEGENERATE.intersection(reply_flags) else 0


def smoothed_intent(parent: ChatState, perception: Perception) -> dict[str, float]:
    """This turn's smoothed intents: perception's own (blended from the parent's here
    only for a decision recorded without them)."""
    if perception.intent_smoothed:
        return dict(perception.intent_smoothed)
    return smooth_intents(parent.intents, perception.intent)


def step(
    previous: ChatState,
    perception: Perception,
    workspace: Workspace,
    metacognition: Metacognition,
    reward_signal: float,
    reward_rate: float,
    reply_flags: Sequence[str] = (),
) -> ChatState:
    """The state after a completed turn, from its parent's state and its decisions.

    `reply_flags` are the reply check's flags of this turn's reply: degenerate ones
    (loop, cut, repeat: `reply_check.DEGENERATE`) lengthen the run failure detection reads.
    """
    dialogue = metacognition.dialogue
    glob, mode, failure = (
        metacognition.global_state,
        metacognition.subjectivity,
        metacognition.failure,
    )
    smoothed = metacognition.telemetry_smoothed
    attention = metacognition.attention
    state = metacognition.dialogue_state
    same = state == previous.dialogue_state
    return ChatState(
        turns=previous.turns + 1,
        dialogue_state=state,
        dwell=dialogue.dwell if dialogue else (previous.dwell + 1 if same else 1),
        intents=smoothed_intent(previous, perception),
        reward_avg=reward_after(previous, reward_signal, reward_rate),
        workspace=tuple(workspace.selected_memories),
        left_state=dialogue.left_state if dialogue else None,
        safety_hold=dialogue.safety_hold if dialogue else 0,
        telemetry=(smoothed or metacognition.telemetry).model_dump(),
        global_state=glob.state if glob else None,
        global_dwell=glob.dwell if glob else 0,
        operator_state=previous.operator_state,
        subjectivity_mode=mode.mode if mode else None,
        subjectivity_dwell=mode.dwell if mode else 0,
        subjectivity_score=mode.smoothed if mode else None,
        lost_streak=failure.lost_streak if failure else 0,
        degenerate_streak=degenerate_after(previous.degenerate_streak, reply_flags),
        attention_predicted=tuple(attention.next_predicted) if attention else (),
        attention_hits=previous.attention_hits + (attention.hits if attention else 0),
        attention_total=previous.attention_total + (len(attention.predicted) if attention else 0),
    )
