"""The chat-scoped state snapshot a completed turn leaves for its children."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from persona.events.base import Model

# The dialogue states, in the order the docs list them.
DIALOGUE_STATES = (
    "S0_NEUTRAL",
    "S1_CASUAL",
    "S2_TASK",
    "S3_EMOTIONAL",
    "S4_META",
    "S5_CREATIVE",
    "S6_SAFETY",
)

# What the names written before the state machine (0.2 logs) read as now.
LEGACY_DIALOGUE_STATES = {
    "opening": "S1_CASUAL",
    "smalltalk": "S1_CASUAL",
    "closing": "S1_CASUAL",
    "task": "S2_TASK",
    "inquiry": "S2_TASK",
    "support": "S3_EMOTIONAL",
    "sharing": "S3_EMOTIONAL",
    "meta": "S4_META",
    "out_of_character": "S4_META",
    "roleplay": "S5_CREATIVE",
    "crisis": "S6_SAFETY",
}


# An old "crisis" snapshot was written on an override turn: it holds S6 as a fresh one does
# (the default `metacognition.dialogue.safety_dwell`).
LEGACY_SAFETY_HOLD = 3


def canonical_state(name: str | None) -> str | None:
    """A dialogue state name as the state machine knows it (old names mapped; None stays)."""
    if name is None or name in DIALOGUE_STATES:
        return name
    return LEGACY_DIALOGUE_STATES.get(name, "S0_NEUTRAL")


class ChatState(Model):
    """What carries from a turn to the turns that continue from it.

    A turn reads its *parent* turn's snapshot, so a branch, a rewind or a restart sees
    exactly the state that held after that parent.
    """

    turns: int = Field(default=0, ge=0, description="completed turns on the path so far")
    dialogue_state: str | None = Field(default=None, description="None before the first turn")
    dwell: int = Field(default=0, ge=0, description="consecutive turns in dialogue_state")
    intents: dict[str, float] = Field(
        default_factory=dict, description="exponentially smoothed intent distribution"
    )
    reward_avg: float = Field(
        default=0.0, ge=-1.0, le=1.0, description="EMA of reward_signal, full precision"
    )
    workspace: tuple[str, ...] = Field(
        default=(), description="memory ids the turn's workspace held (carried forward)"
    )
    left_state: str | None = Field(
        default=None, description="the dialogue state held before dialogue_state"
    )
    safety_hold: int = Field(
        default=0, ge=0, description="turns S6_SAFETY still holds after the last override"
    )
    telemetry: dict[str, float] = Field(
        default_factory=dict, description="smoothed telemetry C, N, M, S, R (EMA per chat)"
    )
    global_state: str | None = Field(default=None, description="None before the first turn")
    global_dwell: int = Field(default=0, ge=0, description="consecutive turns in global_state")
    operator_state: str | None = Field(
        default=None,
        description="a global state only an operator may set (SILENT); nothing sets it yet",
    )
    subjectivity_mode: str | None = Field(default=None, description="None before the first turn")
    subjectivity_dwell: int = Field(default=0, ge=0, description="consecutive turns in the mode")
    subjectivity_score: float | None = Field(
        default=None, description="moving average of the subjectivity score"
    )
    lost_streak: int = Field(
        default=0, ge=0, description="turns running with low coherence and low memory"
    )
    degenerate_streak: int = Field(
        default=0, ge=0, description="replies running that the reply check flagged degenerate"
    )
    attention_predicted: tuple[str, ...] = Field(
        default=(), description="ids the attention schema expects in the next workspace"
    )
    attention_hits: int = Field(default=0, ge=0, description="predicted ids selected, all turns")
    attention_total: int = Field(default=0, ge=0, description="ids predicted, all turns")

    @model_validator(mode="before")
    @classmethod
    def _legacy_crisis_holds(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("dialogue_state") == "crisis"
            and "safety_hold" not in data
        ):
            return {**data, "safety_hold": LEGACY_SAFETY_HOLD}
        return data

    @field_validator("dialogue_state", "left_state", mode="before")
    @classmethod
    def _upcast_state_name(cls, value: Any) -> Any:
        # Snapshots written before the state machine hold names like "crisis": read them
        # as the state they meant, so a continuing chat keeps its state (crisis stays S6).
        return canonical_state(value) if isinstance(value, str) else value
