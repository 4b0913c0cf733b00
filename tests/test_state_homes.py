"""Where state lives: persona-scoped state under concurrency, a turn tree, old databases."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import assert_rebuild_and_verify_agree, run_turn

from persona import cli
from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.events import ChatStarted, Generation, TurnCompleted, TurnStarted
from persona.events.state import DIALOGUE_STATES
from persona.llm.base import GenOptions
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.context import TurnRequest
from persona.pipeline.post import affinity
from persona.projector.replay import rebuild
from persona.storage import queries
from persona.storage.db import connect
from persona.storage.eventlog import NewEvent

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v0_1_0.db"
EDGE = ("persona:default", "talks_with", "user:local")


async def test_concurrent_turns_in_many_chats_give_the_serial_affinity(engine, backend):
    n = 4
    for i in range(n):  # each chat's first turn: a reply for the rewarded turns to judge
        await run_turn(engine, f"first words in chat {i}", chat_id=f"c{i}")
    backend.delay_s = 0.002  # interleave the turns' streams
    handles = [
        await engine.runner.submit(
            TurnRequest(f"hello from chat {i}", "local", f"c{i}", "default", 1.0, GenOptions())
        )
        for i in range(n)
    ]
    await asyncio.gather(*(h.result for h in handles))
    serial = None
    for _ in range(n):
        serial = affinity(serial, 1.0, engine.settings.relationship.affinity_rate)
    edge = await engine.store.read(queries.get_edge, *EDGE)
    assert edge["weight"] == serial == pytest.approx(0.5904)
    assert edge["evidence"] == n
    # Each assertion saw the previous one: the chain of previous weights is unbroken.
    conn = connect(engine.settings.db_path)
    try:
        rows = conn.execute(
            "SELECT payload FROM events WHERE type = 'edge.asserted' ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    chain = [json.loads(r[0]) for r in rows]
    assert chain[0]["previous_weight"] is None
    assert [c["previous_weight"] for c in chain[1:]] == [c["weight"] for c in chain[:-1]]


async def test_persona_state_survives_restart_rebuild_and_verify(settings, clock, tmp_path):
    first = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await first.start()
    await asyncio.gather(
        *(run_turn(first, f"hi {i}", chat_id=f"c{i}", reward=0.5) for i in range(3))
    )
    await run_turn(first, "and again", chat_id="c0", reward=-1.0)
    weight = (await first.store.read(queries.get_edge, *EDGE))["weight"]
    state = await first.store.read(
        queries.chat_state, (await first.store.read(queries.get_chat, "c0"))["head_turn_id"]
    )
    await first.stop()

    second = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await second.start()
    try:
        assert (await second.store.read(queries.get_edge, *EDGE))["weight"] == weight
        head = (await second.store.read(queries.get_chat, "c0"))["head_turn_id"]
        assert await second.store.read(queries.chat_state, head) == state
        assert state is not None and state.turns == 2 and state.reward_avg < 0
    finally:
        await second.stop()
    assert_rebuild_and_verify_agree(settings.db_path, tmp_path / "scratch.db")


async def test_a_turn_reads_its_parent_turns_state_not_the_newest_row(engine):
    await run_turn(engine, "I love sailing", reward=1.0)
    second = (await run_turn(engine, "Tell me more", reward=1.0))["meta"]
    # The first turn's reward is ignored (no reply to judge); R follows the parent's
    # full-precision average: 0.0, then 0.3.
    assert second["telemetry"]["R"] == round(0.5 + 0.5 * 0.3, 4)
    assert second["state"]["turns"] == 2 and second["depth"] == 1
    assert second["state"]["reward_avg"] == pytest.approx(0.3)


def _turn(events: list[NewEvent], chat: str, turn: str, parent: str | None, depth: int):
    events.append(
        NewEvent(
            payload=TurnStarted(
                turn_id=turn,
                chat_id=chat,
                persona_id="default",
                user_id="local",
                parent_turn_id=parent,
                depth=depth,
                message=f"message {turn}",
                gen=Generation(temperature=0.7, max_tokens=50),
                backend="scripted",
                config_hash="h",
            ),
            stream_id=f"chat:{chat}",
            actor="runner",
            trace_id=f"{turn:0<32}"[:32],
        )
    )
    events.append(
        NewEvent(
            payload=TurnCompleted(
                turn_id=turn, chat_id=chat, persona_id="default", reply=f"reply {turn}"
            ),
            stream_id=f"chat:{chat}",
            actor="runner",
            trace_id=f"{turn:0<32}"[:32],
        )
    )


async def test_a_two_branch_tree_and_its_active_path(engine):
    # a - b - c      (first branch)
    #      \- d - e  (second branch: the head after e completes)
    events = [
        NewEvent(
            payload=ChatStarted(chat_id="tree", persona_id="default", user_id="local", title="t"),
            stream_id="chat:tree",
            actor="runner",
        )
    ]
    _turn(events, "tree", "a", None, 0)
    _turn(events, "tree", "b", "a", 1)
    _turn(events, "tree", "c", "b", 2)
    _turn(events, "tree", "d", "a", 1)
    _turn(events, "tree", "e", "d", 2)
    await engine.store.append(events)
    path = await engine.store.read(queries.active_path, "e", 10)
    assert [t.turn_id for t in path] == ["a", "d", "e"]
    assert [t.turn_id for t in await engine.store.read(queries.active_path, "c", 10)] == [
        "a",
        "b",
        "c",
    ]
    assert [t.turn_id for t in await engine.store.read(queries.active_path, "e", 2)] == ["d", "e"]
    chat = await engine.store.read(queries.get_chat, "tree")
    assert chat["head_turn_id"] == "e"
    shown = await engine.store.read(queries.conversation, "tree")
    assert [t["turn_id"] for t in shown] == ["a", "d", "e"]  # the abandoned branch is hidden
    # The next turn continues the head, and its prompt holds only the active path.
    meta = (await run_turn(engine, "where were we?", chat_id="tree"))["meta"]
    assert meta["parent_turn_id"] == "e" and meta["depth"] == 3
    history = {c["id"] for c in meta["decision_candidates"] if c["kind"] == "history"}
    assert history == {"a", "d", "e"}


async def test_a_failed_turn_is_shown_but_never_becomes_a_parent(engine, backend):
    from persona.llm.scripted import FailAfter

    first = await run_turn(engine, "hello")
    backend.enqueue(FailAfter("half a rep", "boom"))
    with pytest.raises(Exception, match="LLM failed"):
        await run_turn(engine, "this one fails")
    third = (await run_turn(engine, "try again"))["meta"]
    assert third["parent_turn_id"] == first["turn_id"] and third["depth"] == 1
    shown = await engine.store.read(queries.conversation, "chat-1")
    assert [(t["user_message"], t["status"]) for t in shown] == [
        ("hello", "completed"),
        ("this one fails", "failed"),
        ("try again", "completed"),
    ]


@pytest.fixture
def legacy_db(tmp_path: Path) -> Path:
    target = tmp_path / "legacy.db"
    shutil.copyfile(LEGACY, target)
    return target


def _legacy_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall())
    finally:
        conn.close()


async def test_a_0_1_0_database_opens_migrates_verifies_and_continues(
    legacy_db, tmp_path, monkeypatch
):
    before = _legacy_counts(legacy_db)
    settings = Settings(db_path=legacy_db, llm={"provider": "scripted"})
    engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock())
    await engine.start()
    try:
        assert list(tmp_path.glob("legacy.db.bak-*")), "backed up before migrating"
        shown = await engine.store.read(queries.conversation, "legacy-a")
        assert [t["depth"] for t in shown] == [0, 1, 2, 3, 4, 4, 5]
        assert [t["status"] for t in shown].count("failed") == 1
        chat = await engine.store.read(queries.get_chat, "legacy-a")
        # Old linear turns fold into parents: the path from the head is every completed one.
        path = await engine.store.read(queries.active_path, chat["head_turn_id"], 50)
        assert len(path) == 6 and [t.depth for t in path] == [0, 1, 2, 3, 4, 5]
        mem = await engine.store.read(queries.count_memories, "default")
        assert mem == 1 + before["memory.written"]
        # The drawer's meta is rebuilt from 0.1.0 events.
        from persona.pipeline.meta import build_meta

        head = await engine.store.read(queries.get_turn, chat["head_turn_id"])
        meta = build_meta(await engine.store.read(queries.trace_events, head["trace_id"]))
        assert meta.engine_version == "0.1.0" and meta.dialogue_state in DIALOGUE_STATES
        # The chat continues on top of its old head. 0.1.0 kept no state snapshot: the
        # machine starts neutral, but the reward now judges a real earlier reply.
        result = (await run_turn(engine, "I'm back!", chat_id="legacy-a", reward=1.0))["meta"]
        assert result["parent_turn_id"] == chat["head_turn_id"] and result["depth"] == 6
        assert result["dialogue"]["previous"] is None
        assert result["dialogue_state"] in DIALOGUE_STATES and result["reward"]["applied"]
    finally:
        await engine.stop()
    assert _legacy_counts(legacy_db)["turn.started"] == before["turn.started"] + 1
    monkeypatch.setenv("PERSONA_DB_PATH", str(legacy_db))
    assert cli.main(["verify", "--quiet"]) == 0


def test_the_cli_migrates_a_0_1_0_database_with_a_replay(legacy_db, monkeypatch, capsys):
    monkeypatch.setenv("PERSONA_DB_PATH", str(legacy_db))
    assert cli.main(["verify", "--quiet"]) == 0  # migrates (with its replay), then verifies
    conn = connect(legacy_db)
    try:
        assert queries.count_memories(conn, "default") > 1
        assert len(queries.conversation(conn, "legacy-b")) == 2
    finally:
        conn.close()


def test_a_reshaping_migration_refuses_to_run_without_its_replay(legacy_db):
    from persona.storage.migrations import MigrationError, migrate

    conn = connect(legacy_db)
    try:
        with pytest.raises(MigrationError, match="rebuild"):
            migrate(conn, legacy_db)
        applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        assert applied == {1, 2}  # nothing applied, the old projections intact
    finally:
        conn.close()


# ---- the dialogue state machine's state ---------------------------------------------


async def test_the_safety_hold_survives_restart_rebuild_and_verify(settings, clock, tmp_path):
    first = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await first.start()
    try:
        crisis = (await run_turn(first, "I want to end my life"))["meta"]
        benign = (await run_turn(first, "What is the capital of France?"))["meta"]
    finally:
        await first.stop()
    assert (crisis["dialogue_state"], crisis["state"]["safety_hold"]) == ("S6_SAFETY", 3)
    assert (benign["dialogue_state"], benign["state"]["safety_hold"]) == ("S6_SAFETY", 2)
    assert_rebuild_and_verify_agree(settings.db_path, tmp_path / "scratch.db")
    # A fresh engine reads the parent's snapshot: the hold goes on counting, not restarting.
    second = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await second.start()
    try:
        metas = [(await run_turn(second, "What is the capital of France?"))["meta"] for _ in "ab"]
    finally:
        await second.stop()
    assert [m["dialogue_state"] for m in metas] == ["S6_SAFETY", "S6_SAFETY"]
    assert [m["dialogue"]["dwell"] for m in metas] == [3, 4]
    assert [m["state"]["safety_hold"] for m in metas] == [1, 0]


async def test_an_old_crisis_snapshot_continues_in_safety(settings, clock):
    engine = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await engine.start()
    events = [
        NewEvent(
            payload=ChatStarted(chat_id="old", persona_id="default", user_id="local", title="t"),
            stream_id="chat:old",
            actor="runner",
        )
    ]
    _turn(events, "old", "a", None, 0)
    try:
        await engine.store.append(events)
    finally:
        await engine.stop()
    # The snapshot as the engine before the state machine wrote it (the log is append-only,
    # so it goes in as a raw row), then the projections are rebuilt from the log.
    old = {"turns": 1, "dialogue_state": "crisis", "dwell": 1, "intents": {}, "reward_avg": 0.0}
    payload = {"turn_id": "a", "chat_id": "old", "state": old}
    conn = connect(settings.db_path)
    try:
        with conn:
            conn.execute(
                "INSERT INTO events (event_id, stream_id, stream_version, trace_id, wall_time,"
                " actor, type, schema_version, payload) VALUES ('old-state', 'chat:old', 4,"
                " ?, '2026-01-01T00:00:00+00:00', 'state', 'chat_state.recorded', 1, ?)",
                (f"{'a':0<32}", json.dumps(payload)),
            )
        rebuild(conn)
    finally:
        conn.close()
    engine = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await engine.start()
    try:
        meta = (await run_turn(engine, "What is the capital of France?", chat_id="old"))["meta"]
    finally:
        await engine.stop()
    assert meta["parent_turn_id"] == "a" and meta["dialogue"]["previous"] == "S6_SAFETY"
    assert meta["dialogue_state"] == "S6_SAFETY" and meta["state"]["safety_hold"] == 2


# ---- global state, telemetry EMA, subjectivity and failure state ----------------------


async def test_the_control_state_survives_restart_rebuild_and_verify(settings, clock, tmp_path):
    first = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await first.start()
    try:
        await run_turn(first, "I love sailing small boats")
        before = (await run_turn(first, "(( I love sailing small boats ))"))["meta"]
    finally:
        await first.stop()
    assert before["global_state"] == "REFLECTIVE" and before["state"]["global_dwell"] == 1
    assert_rebuild_and_verify_agree(settings.db_path, tmp_path / "scratch.db")
    second = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await second.start()
    try:
        after = (await run_turn(second, "What is the capital of France?"))["meta"]
        last = (await run_turn(second, "What is the capital of France?"))["meta"]
    finally:
        await second.stop()
    # REFLECTIVE holds its minimum dwell across the restart, then lets go.
    assert after["global_transition"]["previous"] == "REFLECTIVE"
    assert (after["global_state"], after["state"]["global_dwell"]) == ("REFLECTIVE", 2)
    assert last["global_state"] == "NORMAL"
    # The moving averages continue from the parent's snapshot, not from scratch.
    raw, carried = after["telemetry"], before["state"]["telemetry"]
    assert raw["C"] != carried["C"]
    assert after["telemetry_smoothed"] == {
        k: round(0.5 * raw[k] + 0.5 * carried[k], 4) for k in raw
    }
    score, prev = after["subjectivity"]["score"], before["state"]["subjectivity_score"]
    assert after["subjectivity"]["smoothed"] == round(0.5 * score + 0.5 * prev, 4)
    assert after["subjectivity"]["previous"] == before["subjectivity_mode"]
