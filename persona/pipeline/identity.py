"""Traits, values and temporal identity: pure rules over the persona's control state.

`update` takes the state the writer read, this turn's readings and the settings, and
returns the next state with the drift and the reasons; it reads no clock and no storage,
so the same inputs give the same bytes (docs/control-plane.md, "Traits and values").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from persona.config import IdentitySettings
from persona.events.identity import TRAITS, IdentityState, OverrideNote

NORMAL = "NORMAL"
RECONSTRUCTION = "RECONSTRUCTION"
SHOCK_LOCK = "SHOCK_LOCK"
DEGRADED_SAFE = "DEGRADED_SAFE"

# What one unit of reward signal asks of each value (sign included): a negative reward
# lowers the alignment-like values and raises the safety bias, never the other way round.
VALUE_DRIVERS = {
    "user_alignment": (1.0, 0.0),
    "openness": (0.5, 0.0),
    "stability": (0.5, 0.0),
    "safety_bias": (0.0, 0.5),  # (per positive signal, per negative signal)
}


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


@dataclass(frozen=True)
class TurnReading:
    """What one turn says about the traits, and whether its reward may teach."""

    calm: float  # 1 - the message's arousal
    empathy: float  # the smoothed emotional share of the conversation
    curiosity: float  # telemetry N (novelty)
    signal: float  # reward_signal, -1..1
    reward_applies: bool  # not the chat's first turn
    flagged: bool  # any safety flag on the message
    shock: bool  # a safety override (escalated risk)
    overloaded: bool  # global state OVERLOADED


@dataclass(frozen=True)
class Update:
    """The next state, whether the reward was applied, the drift and the reasons."""

    state: IdentityState
    applied: bool
    drift: dict[str, float]
    reasons: list[str]


def phase_of(budget: float, s: IdentitySettings) -> str:
    """The phase the stability budget alone gives (SHOCK_LOCK comes from a shock)."""
    if budget < s.degraded_below:
        return DEGRADED_SAFE
    if budget < s.reconstruction_below:
        return RECONSTRUCTION
    return NORMAL


def idle_hours(since: str | None, now: datetime) -> float:
    """Chat-clock hours since the last update (0 for none or a clock that went back)."""
    if since is None:
        return 0.0
    then = datetime.fromisoformat(since)
    return max(0.0, (now - then).total_seconds() / 3600.0)


def value_step(value: float, signal: float, name: str, lr: float) -> float:
    """One value's change: soft-bounded, so a value approaches 0 or 1 and never passes it."""
    up, down = VALUE_DRIVERS[name]
    drive = up * signal if signal > 0 else up * signal + down * -signal
    room = (1.0 - value) if drive > 0 else value
    return lr * drive * room


def update(
    prev: IdentityState, user_id: str, r: TurnReading, now: datetime, s: IdentitySettings
) -> Update:
    """The persona's control state after one completed turn."""
    if prev.frozen:
        return Update(prev, False, {}, ["frozen by the operator: no trait, value or budget change"])
    reasons: list[str] = []
    hours = idle_hours(prev.updated_at, now)
    budget = min(1.0, prev.budget + s.recover_per_hour * hours)
    if budget > prev.budget:
        reasons.append(f"budget +{budget - prev.budget:.3f} after {hours:.2f} h idle")
    baseline = prev.baseline(user_id)
    traits = {
        name: round(
            (1 - s.trait_rate) * prev.traits.get(name, 0.5)
            + s.trait_rate * (0.5 * getattr(r, name) + 0.5 * baseline[name]),
            6,
        )
        for name in TRAITS
    }
    lock_left = prev.lock_left
    if r.shock:
        budget = max(0.0, budget - s.shock_cost)
        phase, lock_left = SHOCK_LOCK, s.shock_lock_turns
        reasons.append(f"{SHOCK_LOCK}: safety shock, budget -{s.shock_cost}")
    elif lock_left > 0:
        phase, lock_left = SHOCK_LOCK, lock_left - 1
        reasons.append(f"holding {SHOCK_LOCK}: {lock_left + 1} turn(s) left")
    else:
        phase = phase_of(budget, s)
    blocked = None
    if not r.reward_applies:
        blocked = "the chat's first turn has no earlier reply to judge"
    elif r.flagged:
        blocked = "a safety-flagged turn never teaches"
    elif r.overloaded:
        blocked = "an overloaded turn never teaches"
    elif phase in (SHOCK_LOCK, DEGRADED_SAFE):
        blocked = f"phase {phase}: drift stopped"
    elif r.signal == 0:
        blocked = "no reward signal"
    drift: dict[str, float] = {}
    values = dict(prev.values)
    baselines = dict(prev.baselines)
    if blocked is not None:
        reasons.append(f"no drift: {blocked}")
    else:
        lr = s.value_rate * (1 - s.inertia) * budget
        for name in sorted(values):
            delta = round(value_step(values[name], r.signal, name, lr), 6)
            values[name] = round(_clamp(values[name] + delta), 6)
            drift[name] = delta
        moved = {
            name: round(
                _clamp(
                    baseline[name] + s.baseline_rate * r.signal * (traits[name] - baseline[name])
                ),
                6,
            )
            for name in TRAITS
        }
        for name in TRAITS:
            drift[f"baseline.{name}"] = round(moved[name] - baseline[name], 6)
        baselines[user_id] = moved
        spent = s.drift_cost * sum(abs(values[n] - prev.values.get(n, 0.5)) for n in values)
        budget = max(0.0, budget - spent)
        phase = phase_of(budget, s)
        reasons.append(
            f"reward {r.signal:+.2f} applied: lr {lr:.4f} = {s.value_rate} x (1 - inertia"
            f" {s.inertia}) x budget; budget -{spent:.4f}"
        )
    state = prev.model_copy(
        update={
            "traits": traits,
            "values": values,
            "baselines": baselines,
            "budget": round(budget, 6),
            "phase": phase,
            "lock_left": lock_left,
            "updated_at": now.isoformat(),
        }
    )
    return Update(state, blocked is None, drift, reasons)


AUTO = "AUTO"


def apply_override(
    prev: IdentityState, kind: str, payload: dict[str, Any], note: OverrideNote
) -> IdentityState:
    """The state after an operator override (payload already validated by its kind)."""
    prev = prev.model_copy(update={"last_override": note})
    if kind == "trait_set":
        return prev.model_copy(update={"traits": {**prev.traits, **payload}})
    if kind == "value_set":
        return prev.model_copy(update={"values": {**prev.values, **payload}})
    if kind == "freeze_updates":
        return prev.model_copy(update={"frozen": bool(payload["freeze"])})
    if kind == "subjectivity_mode":
        mode = payload["mode"]
        return prev.model_copy(update={"subjectivity_mode": None if mode == AUTO else mode})
    if kind == "global_state":
        state = payload["state"]
        return prev.model_copy(update={"global_state": None if state == AUTO else state})
    raise ValueError(f"unknown override kind {kind!r}")
