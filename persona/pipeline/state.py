"""Chat-scoped state: a pure `step(previous, decisions) -> next` per completed turn.

The snapshot is recorded with the turn (`chat_state.recorded`); the next turn reads its
parent turn's snapshot, so rewinding to a turn or branching from it restores exactly
the state that held after it.
"""

from __future__ import annotations

from persona.events import ChatState, Metacognition, Perception, Workspace

# Weight of the newest turn in the smoothed intent distribution.
INTENT_SMOOTHING = 0.5


def next_reward_avg(previous: float, signal: float, rate: float) -> float:
    """Exponential moving average of reward_signal (full precision, -1..1)."""
    return (1.0 - rate) * previous + rate * signal


def smooth_intents(previous: dict[str, float], current: dict[str, float]) -> dict[str, float]:
    """Blend this turn's intent distribution into the running one (first turn: as is)."""
    if not previous:
        return dict(sorted(current.items()))
    keys = sorted(set(previous) | set(current))
    a = INTENT_SMOOTHING
    return {k: round(a * current.get(k, 0.0) + (1 - a) * previous.get(k, 0.0), 6) for k in keys}


def step(
    previous: ChatState,
    perception: Perception,
    workspace: Workspace,
    metacognition: Metacognition,
    reward_signal: float,
    reward_rate: float,
) -> ChatState:
    """The state after a completed turn, from its parent's state and its decisions."""
    state = metacognition.dialogue_state
    return ChatState(
        turns=previous.turns + 1,
        dialogue_state=state,
        dwell=previous.dwell + 1 if state == previous.dialogue_state else 1,
        intents=smooth_intents(previous.intents, perception.intent),
        reward_avg=next_reward_avg(previous.reward_avg, reward_signal, reward_rate),
        workspace=tuple(workspace.selected_memories),
    )
