"""Traits, values and temporal identity: the pure rules on their edges, and the state's home
(persona-scoped events, the same after a restart, a rebuild and `persona verify`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import run_turn

from persona.config import IdentitySettings, Settings
from persona.decision_replay import replay_decisions
from persona.engine import Engine
from persona.events import ChatState, IdentityState, Telemetry
from persona.events.identity import OverrideNote
from persona.llm.scripted import ScriptedBackend
from persona.pipeline import identity
from persona.pipeline.identity import TurnReading, apply_override, update
from persona.pipeline.metacognition import decide_subjectivity
from persona.projector.replay import projection_digests, rebuild, verify
from persona.storage import queries
from persona.storage.db import connect

S = IdentitySettings()
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
READ = TurnReading(
    calm=0.9,
    empathy=0.1,
    curiosity=0.7,
    signal=1.0,
    reward_applies=True,
    flagged=False,
    shock=False,
    overloaded=False,
)
ALIGNMENT_LIKE = ("user_alignment", "openness", "stability")


def test_a_positive_reward_raises_alignment_with_inertia_and_budget_in_the_rate():
    out = update(IdentityState(), "u", READ, NOW, S)
    assert out.applied
    # lr = value_rate 0.1 x (1 - inertia 0.5) x budget 1 = 0.05; soft bound (1 - 0.5).
    assert out.drift["user_alignment"] == pytest.approx(0.05 * 1.0 * 0.5)
    assert out.drift["openness"] == pytest.approx(0.05 * 0.5 * 0.5)
    assert out.drift["safety_bias"] == 0.0
    # The budget pays drift_cost 2.0 per unit of drift.
    spent = 2.0 * sum(abs(v) for k, v in out.drift.items() if not k.startswith("baseline."))
    assert out.state.budget == pytest.approx(1.0 - spent)
    half = update(IdentityState(budget=0.6), "u", READ, NOW, S)
    assert half.drift["user_alignment"] == pytest.approx(0.05 * 0.6 * 0.5)


def test_a_negative_reward_never_raises_alignment_like_values():
    out = update(IdentityState(), "u", replace(READ, signal=-1.0), NOW, S)
    assert out.applied
    for name in ALIGNMENT_LIKE:
        assert out.state.values[name] < 0.5, name
    assert out.state.values["safety_bias"] > 0.5
    # And from any starting point, a run of thumbs-down only lowers them.
    state = IdentityState(values={n: 0.95 for n in (*ALIGNMENT_LIKE, "safety_bias")})
    for _ in range(5):
        nxt = update(state, "u", replace(READ, signal=-1.0), NOW, S).state
        for name in ALIGNMENT_LIKE:
            assert nxt.values[name] <= state.values[name]
        state = nxt


def test_the_baseline_moves_slowly_toward_the_state_on_plus_and_away_on_minus():
    plus = update(IdentityState(), "u", READ, NOW, S)
    traits = plus.state.traits
    # state = 0.5 x 0.5 + 0.5 x (0.5 x reading + 0.5 x baseline 0.5)
    assert traits["calm"] == pytest.approx(0.5 * 0.5 + 0.5 * (0.5 * 0.9 + 0.25))
    base = plus.state.baseline("u")
    assert base["calm"] == pytest.approx(0.5 + 0.05 * (traits["calm"] - 0.5))
    minus = update(IdentityState(), "u", replace(READ, signal=-1.0), NOW, S).state.baseline("u")
    assert minus["calm"] == pytest.approx(0.5 - 0.05 * (traits["calm"] - 0.5))
    assert plus.state.baseline("someone else") == {"calm": 0.5, "empathy": 0.5, "curiosity": 0.5}


@pytest.mark.parametrize(
    "change,why",
    [
        ({"reward_applies": False}, "first turn"),
        ({"flagged": True}, "safety-flagged"),
        ({"overloaded": True}, "overloaded"),
        ({"signal": 0.0}, "no reward signal"),
    ],
)
def test_no_drift_on_first_flagged_overloaded_or_silent_turns(change, why):
    out = update(IdentityState(), "u", replace(READ, **change), NOW, S)
    assert not out.applied and out.drift == {}
    assert out.state.values == IdentityState().values and out.state.baselines == {}
    assert any(why in r for r in out.reasons)


def test_a_freeze_stops_every_change_and_an_override_is_noted():
    note = OverrideNote(kind="freeze_updates", actor="ops", reason="audit")
    frozen = apply_override(IdentityState(), "freeze_updates", {"freeze": True}, note)
    out = update(frozen, "u", READ, NOW + timedelta(hours=5), S)
    assert out.state == frozen and not out.applied
    assert frozen.last_override == note
    thawed = apply_override(frozen, "freeze_updates", {"freeze": False}, note)
    assert update(thawed, "u", READ, NOW, S).applied


def test_a_shock_locks_drift_then_the_budget_recovers_with_idle_time():
    out = update(IdentityState(), "u", replace(READ, shock=True, flagged=True), NOW, S)
    assert out.state.phase == identity.SHOCK_LOCK and out.state.lock_left == 2
    assert out.state.budget == pytest.approx(0.7)
    state = out.state
    for left in (1, 0):  # two turns of lock, no drift even with a reward
        out = update(state, "u", READ, NOW, S)
        assert out.state.phase == identity.SHOCK_LOCK and out.state.lock_left == left
        assert not out.applied
        state = out.state
    out = update(state, "u", READ, NOW, S)
    assert out.state.phase == identity.NORMAL and out.applied
    # 3 idle hours of chat time give back 0.3 (recover_per_hour 0.1), capped at 1.
    low = IdentityState(budget=0.3, updated_at=NOW.isoformat())
    later = update(low, "u", replace(READ, signal=0.0), NOW + timedelta(hours=3), S).state
    assert later.budget == pytest.approx(0.6) and later.phase == identity.NORMAL


def test_phases_follow_the_budget_and_degraded_safe_stops_drift():
    assert identity.phase_of(0.5, S) == identity.NORMAL
    assert identity.phase_of(0.49, S) == identity.RECONSTRUCTION
    assert identity.phase_of(0.19, S) == identity.DEGRADED_SAFE
    out = update(IdentityState(budget=0.1), "u", READ, NOW, S)
    assert out.state.phase == identity.DEGRADED_SAFE and not out.applied


async def test_the_identity_state_survives_restart_rebuild_and_verify(settings, clock, tmp_path):
    first = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await first.start()
    try:
        opener = (await run_turn(first, "hello", reward=1.0))["meta"]["identity"]
        before = (await run_turn(first, "that was kind", reward=1.0))["meta"]["identity"]
        other = (await run_turn(first, "hi", chat_id="chat-2", reward=-1.0))["meta"]["identity"]
        pid = first.default_persona_id
    finally:
        await first.stop()
    assert not opener["applied"]  # a chat's first turn ignores its reward
    assert before["applied"] and before["values"]["user_alignment"] > 0.5
    assert not other["applied"] and other["values"] == before["values"]  # persona-scoped
    conn = connect(settings.db_path)
    try:
        stored = queries.identity_state(conn, pid)
        digests = projection_digests(conn)
        rebuild(conn)
        assert projection_digests(conn) == digests
        assert queries.identity_state(conn, pid) == stored
    finally:
        conn.close()
    live, replayed = verify(settings.db_path, tmp_path / "scratch.db")
    assert live == replayed
    second = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await second.start()
    try:
        after = (await run_turn(second, "and again", reward=1.0))["meta"]["identity"]
    finally:
        await second.stop()
    # The next turn continues from the stored state, not from neutral.
    assert after["values"]["user_alignment"] > before["values"]["user_alignment"]
    assert stored.values == before["values"]


# ---- DEGRADED_SAFE forces the safe subjectivity mode --------------------------------


def test_degraded_safe_forces_s3_safe_over_the_operator_and_the_usual_s3_exit_follows():
    settings = Settings().metacognition.subjectivity
    grounded = Telemetry(C=0.9, N=0.5, M=0.9, S=1.0, R=0.9)
    parent = ChatState(turns=3, subjectivity_mode="S1_REFLECTIVE", subjectivity_score=0.8)
    mode = decide_subjectivity(
        parent, grounded, "NORMAL", 0, settings, forced="S2_AUTONOMOUS", phase="DEGRADED_SAFE"
    )
    assert mode.mode == "S3_SAFE" and mode.reasons[-1] == "S3_SAFE: identity phase DEGRADED_SAFE"
    for phase in ("NORMAL", "RECONSTRUCTION", "SHOCK_LOCK", None):
        assert decide_subjectivity(parent, grounded, "NORMAL", 0, settings, phase=phase).mode != (
            "S3_SAFE"
        ), phase
    # Once the phase ends, S3_SAFE leaves by its usual exit (dwell and score).
    held = parent.model_copy(update={"subjectivity_mode": "S3_SAFE", "subjectivity_dwell": 2})
    assert decide_subjectivity(held, grounded, "NORMAL", 0, settings).mode != "S3_SAFE"


async def test_a_degraded_identity_turns_s3_safe_until_idle_time_ends_the_phase(
    settings, clock, tmp_path
):
    # Any spent budget is DEGRADED_SAFE here: the first applied reward enters the phase.
    settings = settings.model_copy(
        update={
            "identity": settings.identity.model_copy(
                update={"degraded_below": 1.0, "reconstruction_below": 1.0}
            )
        }
    )
    engine = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await engine.start()
    try:

        async def turn(message: str, reward: float = 0.0) -> dict[str, Any]:
            return (await run_turn(engine, message, reward=reward))["meta"]

        await turn("Tell me about lighthouses")
        entered = await turn("Lighthouses guide ships at night", reward=1.0)
        assert entered["identity"]["phase"] == identity.DEGRADED_SAFE
        assert entered["subjectivity"]["mode"] != "S3_SAFE"  # the phase is read at turn begin
        modes = [await turn(m) for m in ("Lighthouses have lamps", "Lighthouses stand tall")]
        for meta in modes:
            assert meta["subjectivity"]["mode"] == "S3_SAFE"
            assert "identity phase DEGRADED_SAFE" in meta["subjectivity"]["reasons"][-1]
        clock.advance(timedelta(hours=20))  # idle time restores the budget
        last = await turn("Lighthouses keep ships safe")
        assert last["identity"]["phase"] == identity.NORMAL
        assert last["subjectivity"]["mode"] == "S3_SAFE"  # this turn began degraded
        after = await turn("Lighthouses are tall towers")
        assert after["subjectivity"]["mode"] != "S3_SAFE"
    finally:
        await engine.stop()
    live, replayed = verify(settings.db_path, tmp_path / "scratch.db")
    assert live == replayed
    # `persona verify --replay`: the decisions re-run from the recorded phase, exactly.
    report = await replay_decisions(settings.db_path, settings)
    assert report.ok and report.turns == 6, [d.render() for d in report.differences]
