"""`persona verify --replay`: every logged decision replays bit for bit from its inputs."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import run_turn

from persona.cli import main
from persona.clock import FixedClock
from persona.config import Settings
from persona.decision_replay import replay_decisions
from persona.engine import Engine
from persona.events import ChatState, Generation, TurnStarted
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.turn import inputs_hash
from persona.storage.db import connect
from persona.storage.eventlog import read_events
from persona.storage.queries import PersonaRow


async def _log(engine: Engine, backend: ScriptedBackend) -> None:
    """Several turns: two chats, a crisis and its dwell, a reward, classifier verdicts."""
    backend.enqueue_structured('{"primary_intent": "task_oriented", "confidence": 0.8}')
    await run_turn(engine, "What is the capital of France?", chat_id="a")
    backend.enqueue_structured('{"primary_intent": "emotional_support", "confidence": 0.6}')
    await run_turn(engine, "hey, how are you?", chat_id="b")
    backend.enqueue_structured('{"primary_intent": "safety_risk", "confidence": 0.9}')
    await run_turn(engine, "I want to kill myself.", chat_id="a")
    backend.enqueue_structured("not json", '{"primary_intent": "smalltalk", "confidence": 0.5}')
    await run_turn(engine, "ok, thanks for listening", chat_id="a", reward=-1.0)
    backend.enqueue_structured('{"primary_intent": "factual_query", "confidence": 0.7}')
    await run_turn(engine, "もう死にたい。", chat_id="b")
    # No verdict queued: the classifier fails and the log records that.
    await run_turn(engine, "Tell me what is the capital of Spain", chat_id="b")


def _write_log(settings: Settings) -> None:
    """The log of `_log`, written by an engine of its own (for the sync CLI tests)."""

    async def go() -> None:
        backend = ScriptedBackend()
        engine = Engine(settings, backend=backend, clock=FixedClock())
        await engine.start()
        try:
            await _log(engine, backend)
        finally:
            await engine.stop()

    asyncio.run(go())


def _cli_env(monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
    monkeypatch.setenv("PERSONA_DB_PATH", str(db))
    monkeypatch.setenv("PERSONA_LLM__PROVIDER", "scripted")
    monkeypatch.setenv("PERSONA_PERCEPTION__USE_CLASSIFIER", "true")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        db_path=tmp_path / "persona.db",
        llm={"provider": "scripted"},
        perception={"use_classifier": True},
    )


async def test_a_log_replays_with_no_difference(
    engine: Engine, backend: ScriptedBackend, settings: Settings
) -> None:
    await _log(engine, backend)
    before = settings.db_path.read_bytes()

    report = await replay_decisions(settings.db_path, settings)

    assert report.ok, [d.render() for d in report.differences]
    assert report.turns == 6
    # Perception, memory, gating and metacognition per turn; per belief-revision round,
    # memory, gating and metacognition again and the round's own record.
    rounds = sum(1 for e in read_events(connect(settings.db_path)) if e.type == "belief.revised")
    assert rounds > 0
    assert report.decisions == 4 * 6 + 4 * rounds
    assert settings.db_path.read_bytes() == before  # reads only


async def test_turn_started_records_the_hash_of_its_inputs(
    engine: Engine, backend: ScriptedBackend, settings: Settings
) -> None:
    await _log(engine, backend)
    conn = connect(settings.db_path)
    started = [e.payload for e in read_events(conn) if isinstance(e.payload, TurnStarted)]
    conn.close()
    hashes = [s.inputs_hash for s in started]
    assert all(len(h) == 64 for h in hashes) and len(set(hashes)) == len(hashes)


def test_the_same_inputs_give_the_same_hash_and_any_change_another() -> None:
    persona = PersonaRow("p", "Mira", "d", "g", {"calm": 0.5}, "t0", "t1", 3)
    gen = Generation(temperature=0.7, max_tokens=200)
    state = ChatState(turns=2)
    base = inputs_hash("hello", state, persona, "c" * 64, gen)

    assert inputs_hash("hello", ChatState(turns=2), persona, "c" * 64, gen) == base
    assert inputs_hash("hello!", state, persona, "c" * 64, gen) != base
    assert inputs_hash("hello", ChatState(turns=3), persona, "c" * 64, gen) != base
    other = PersonaRow("p", "Mira", "d", "g", {"calm": 0.6}, "t0", "t1", 3)
    assert inputs_hash("hello", state, other, "c" * 64, gen) != base
    assert inputs_hash("hello", state, persona, "d" * 64, gen) != base
    hot = Generation(temperature=0.9, max_tokens=200)
    assert inputs_hash("hello", state, persona, "c" * 64, hot) != base


def _doctor(path: Path, event_type: str, edit: dict[str, object]) -> None:
    """Edit one logged decision in a scratch copy (its append-only triggers dropped)."""
    conn = sqlite3.connect(path)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        conn.execute(f"DROP TRIGGER {name}")
    seq, raw = conn.execute(
        "SELECT seq, payload FROM events WHERE type = ? ORDER BY seq DESC LIMIT 1", (event_type,)
    ).fetchone()
    payload = json.loads(raw)
    payload.update(edit)
    conn.execute("UPDATE events SET payload = ? WHERE seq = ?", (json.dumps(payload), seq))
    conn.commit()
    conn.close()


def test_a_doctored_decision_is_reported_with_exit_1(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_log(settings)
    copy = tmp_path / "doctored.db"
    shutil.copy(settings.db_path, copy)
    _doctor(copy, "metacognition.completed", {"dialogue_state": "S1_CASUAL"})
    _cli_env(monkeypatch, copy)

    status = main(["verify", "--quiet", "--replay"])

    out = capsys.readouterr().out
    assert status == 1
    assert 'metacognition.dialogue_state: logged "S1_CASUAL", replayed' in out
    last = [e.payload for e in read_events(connect(copy)) if isinstance(e.payload, TurnStarted)][-1]
    assert f"DIFF turn {last.turn_id} (chat b)" in out


def test_verify_replay_of_an_honest_log_exits_0(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_log(settings)
    _cli_env(monkeypatch, settings.db_path)

    assert main(["verify", "--quiet", "--replay"]) == 0
    rounds = sum(1 for e in read_events(connect(settings.db_path)) if e.type == "belief.revised")
    decisions = 4 * 6 + 4 * rounds
    assert f"replay ok: 6 turn(s), {decisions} decisions identical" in capsys.readouterr().out
