"""Persona-scoped control state: traits, values, temporal identity and operator overrides.

Both events carry the whole state after them, on the persona's stream (several chats and the
operator touch it); the projector keeps the newest per persona, so a restart, a rebuild and
`persona verify` read exactly the state the log left.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from persona.events.base import EventPayload, Model

TRAITS = ("calm", "empathy", "curiosity")
VALUES = ("stability", "openness", "safety_bias", "user_alignment")
# Temporal identity phases (see docs/control-plane.md, "Temporal identity").
PHASES = ("NORMAL", "RECONSTRUCTION", "SHOCK_LOCK", "DEGRADED_SAFE")
OVERRIDE_KINDS = ("trait_set", "value_set", "subjectivity_mode", "freeze_updates", "global_state")


def neutral(names: tuple[str, ...]) -> dict[str, float]:
    """Every name at the neutral 0.5."""
    return dict.fromkeys(names, 0.5)


class OverrideNote(Model):
    """The newest operator override: what, by whom, why (shown in meta and the drawer)."""

    kind: str
    actor: str
    reason: str
    at: str | None = None


class IdentityState(Model):
    """A persona's control state (one per persona; baselines per user)."""

    traits: dict[str, float] = Field(
        default_factory=lambda: neutral(TRAITS), description="short-term trait state, 0..1"
    )
    baselines: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="long-term trait baseline per user id (neutral 0.5)"
    )
    values: dict[str, float] = Field(default_factory=lambda: neutral(VALUES))
    frozen: bool = Field(default=False, description="operator freeze: no drift while set")
    global_state: str | None = Field(default=None, description="operator: SILENT or None")
    subjectivity_mode: str | None = Field(
        default=None, description="operator: a forced subjectivity mode, None for AUTO"
    )
    budget: float = Field(default=1.0, ge=0.0, le=1.0, description="stability budget")
    phase: str = "NORMAL"
    lock_left: int = Field(default=0, ge=0, description="SHOCK_LOCK turns still to hold")
    updated_at: str | None = Field(default=None, description="chat time of the last turn")
    last_override: OverrideNote | None = None

    def baseline(self, user_id: str) -> dict[str, float]:
        """The user's trait baseline (neutral until a reward moved it)."""
        return self.baselines.get(user_id, neutral(TRAITS))


class IdentityUpdated(EventPayload):
    """A completed turn moved (or, with reasons, did not move) the persona's control state."""

    event_type: ClassVar[str] = "identity.updated"
    version: ClassVar[int] = 1

    persona_id: str
    user_id: str
    turn_id: str
    chat_id: str
    signal: float
    applied: bool = Field(description="the reward moved baseline and values")
    state: IdentityState
    drift: dict[str, float] = Field(description="value and baseline change this turn")
    reasons: list[str]


class OperatorOverride(EventPayload):
    """An operator changed the persona's control state by hand (who and why recorded)."""

    event_type: ClassVar[str] = "operator.override"
    version: ClassVar[int] = 1

    persona_id: str
    kind: Literal["trait_set", "value_set", "subjectivity_mode", "freeze_updates", "global_state"]
    payload: dict[str, Any]
    reason: str
    actor: str
    state: IdentityState
