"""Accepted turns leave a trace: queued before the answer, failed if they never start."""

from __future__ import annotations

import asyncio
from contextlib import closing

import pytest
from helpers import ReplyGate, run_turn

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.errors import ChatConflict, TurnFailed
from persona.events import Generation, TurnQueued, TurnStarted
from persona.llm.base import GenOptions
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.context import TurnRequest
from persona.pipeline.recovery import (
    INTERRUPTED,
    INTERRUPTED_QUEUED,
    SHUTDOWN,
    SHUTDOWN_QUEUED,
)
from persona.pipeline.runner import TurnHandle
from persona.projector.replay import verify
from persona.storage import queries
from persona.storage.db import connect
from persona.storage.eventlog import NewEvent, count_events, read_events

HANG_GUARD_S = 60


async def submit(engine: Engine, message: str, chat_id: str = "c") -> TurnHandle:
    pid = await engine.runner.resolve(chat_id, None, "local", engine.default_persona_id)
    request = TurnRequest(message, "local", chat_id, pid, 0.0, GenOptions(max_tokens=50))
    return await engine.runner.submit(request)


def chat_events(engine: Engine, chat_id: str) -> list:
    with closing(connect(engine.settings.db_path)) as conn:
        return list(read_events(conn, stream_id=f"chat:{chat_id}"))


def failures(engine: Engine) -> dict[str, tuple[str, str]]:
    """turn_id -> (stage, error) of every turn.failed in the log."""
    with closing(connect(engine.settings.db_path)) as conn:
        return {
            e.payload.turn_id: (e.payload.stage, e.payload.error)
            for e in read_events(conn)
            if e.type == "turn.failed"
        }


def assert_replay_matches(engine: Engine, tmp_path) -> None:
    live, replayed = verify(engine.settings.db_path, tmp_path / "scratch.db")
    assert live == replayed


async def until(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Poll a plain predicate from async code (bounded)."""
    async with asyncio.timeout(timeout):
        while not (value := predicate()):
            await asyncio.sleep(0.01)
        return value


async def test_a_turn_is_recorded_as_queued_before_submit_returns(engine, backend, tmp_path):
    gate = ReplyGate(backend)
    try:
        first = await submit(engine, "first")
        assert await asyncio.to_thread(gate.reached.wait, 10)
        second = await submit(engine, "second")

        # Already in the log and the projection: queued, on no path yet.
        turns = await engine.store.read(queries.conversation, "c")
        assert [(t["user_message"], t["status"]) for t in turns] == [
            ("first", "started"),
            ("second", "queued"),
        ]
        row = await engine.store.read(queries.get_turn, second.turn_id)
        assert (row["parent_turn_id"], row["depth"], row["started_seq"]) == (None, None, None)
        assert row["queued_seq"] is not None
        trace = await engine.store.read(queries.trace_events, second.trace_id)
        assert [e.type for e in trace] == ["turn.queued"]
        queued = trace[0].payload
        assert isinstance(queued, TurnQueued)
        assert (queued.message, queued.ahead, queued.turn_id) == ("second", 1, second.turn_id)
        assert engine.runner.queued("c") == 2
    finally:
        gate.open()
    await first.result
    await second.result

    # Started once the first ended: it continues the first.
    row = await engine.store.read(queries.get_turn, second.turn_id)
    assert (row["status"], row["parent_turn_id"], row["depth"]) == ("completed", first.turn_id, 1)
    assert row["started_seq"] > row["queued_seq"]
    # A chat with nothing waiting keeps no state in the runner.
    assert engine.runner.queued("c") == 0 and engine.runner.busy_chats() == 0
    assert_replay_matches(engine, tmp_path)


async def test_turns_start_in_the_order_they_were_accepted(engine, backend):
    gate = ReplyGate(backend)
    try:
        handles = [await submit(engine, f"message {i}") for i in range(4)]
    finally:
        gate.open()
    for handle in handles:
        await handle.result
    events = chat_events(engine, "c")
    queued = [e.trace_id for e in events if e.type == "turn.queued"]
    started = [e.trace_id for e in events if e.type == "turn.started"]
    assert queued == started == [h.trace_id for h in handles]


async def test_two_first_messages_to_a_new_chat_start_it_once(engine):
    a, b = await asyncio.gather(submit(engine, "a", "new"), submit(engine, "b", "new"))
    await a.result
    await b.result
    types = [e.type for e in chat_events(engine, "new")]
    assert types.count("chat.started") == 1
    assert types[:2] == ["chat.started", "turn.queued"]  # the chat exists before its turns
    assert types.count("turn.queued") == 2


async def test_a_turn_for_a_chat_of_another_persona_writes_nothing(engine):
    await run_turn(engine, "hello", chat_id="c")
    before = engine.store.sync_read(count_events)
    request = TurnRequest("hi", "local", "c", "someone-else", 0.0, GenOptions())
    with pytest.raises(ChatConflict):
        await engine.runner.submit(request)  # (resolve would have refused it earlier)
    assert engine.store.sync_read(count_events) == before
    assert engine.runner.busy_chats() == 0


def _started(turn_id: str, parent: str | None, depth: int) -> TurnStarted:
    return TurnStarted(
        turn_id=turn_id,
        chat_id="c",
        persona_id="default",
        user_id="local",
        parent_turn_id=parent,
        depth=depth,
        message="cut off",
        gen=Generation(temperature=0.7, max_tokens=50),
        backend="scripted",
        config_hash="x",
    )


async def test_recovery_fails_started_and_queued_turns_with_their_reasons(engine, tmp_path):
    head = await run_turn(engine, "hello", chat_id="c")
    # What a killed process leaves: one turn started, one queued behind it.
    queued = TurnQueued(
        turn_id="t-queued",
        chat_id="c",
        persona_id="default",
        user_id="local",
        message="never started",
        ahead=1,
    )
    await engine.store.append(
        [
            NewEvent(_started("t-started", head["turn_id"], 1), "chat:c", "runner", "tr-a"),
            NewEvent(queued, "chat:c", "runner", "tr-b"),
        ]
    )

    assert await engine.runner.recover() == 2

    assert failures(engine) == {
        "t-started": ("recovery", INTERRUPTED),
        "t-queued": ("queue", INTERRUPTED_QUEUED),
    }
    turns = await engine.store.read(queries.conversation, "c")
    assert [(t["turn_id"], t["status"]) for t in turns] == [
        (head["turn_id"], "completed"),
        ("t-started", "failed"),
        ("t-queued", "failed"),  # shown where the chat stood, after the started one
    ]
    never = await engine.store.read(queries.get_turn, "t-queued")
    assert (never["parent_turn_id"], never["depth"], never["started_at"]) == (
        head["turn_id"],
        1,
        None,
    )
    assert await engine.runner.recover() == 0  # nothing is failed twice
    assert_replay_matches(engine, tmp_path)


def _engine(tmp_path, grace_s: float, backend: ScriptedBackend) -> Engine:
    settings = Settings(
        db_path=tmp_path / "stop.db",
        llm={"provider": "scripted"},
        server={"shutdown_grace_s": grace_s},
    )
    return Engine(settings, backend=backend, clock=FixedClock())


async def test_shutdown_cancels_a_turn_past_its_grace_and_fails_the_queued_one(tmp_path):
    backend = ScriptedBackend(delay_s=3600)  # the reply never comes
    engine = _engine(tmp_path, 0.05, backend)
    await engine.start()
    first = await submit(engine, "held")
    await until(lambda: backend.calls)  # the reply has begun
    second = await submit(engine, "behind it")

    await asyncio.wait_for(engine.stop(), HANG_GUARD_S)

    stages = failures(engine)
    assert stages[first.turn_id] == ("speaker", SHUTDOWN)
    assert stages[second.turn_id] == ("queue", SHUTDOWN_QUEUED)
    for handle, error in ((first, SHUTDOWN), (second, SHUTDOWN_QUEUED)):
        with pytest.raises(TurnFailed) as failed:  # every caller is answered
            await asyncio.wait_for(handle.result, HANG_GUARD_S)
        assert str(failed.value) == error
    assert engine.runner.busy_chats() == 0

    again = _engine(tmp_path, 0.05, ScriptedBackend())
    await again.start()
    try:
        before = again.store.sync_read(count_events)
        assert await again.runner.recover() == 0  # shutdown left nothing to recover
        assert again.store.sync_read(count_events) == before
        turns = await again.store.read(queries.conversation, "c")
        assert [(t["user_message"], t["status"]) for t in turns] == [
            ("held", "failed"),
            ("behind it", "failed"),
        ]
    finally:
        await again.stop()
    assert_replay_matches(again, tmp_path)


async def test_shutdown_lets_a_running_turn_finish_within_its_grace(tmp_path):
    backend = ScriptedBackend(["one two three four"], delay_s=0.05)
    engine = _engine(tmp_path, 30.0, backend)
    await engine.start()
    first = await submit(engine, "running")
    await until(lambda: backend.calls)
    second = await submit(engine, "queued")

    await asyncio.wait_for(engine.stop(), HANG_GUARD_S)

    assert (await first.result).reply == "one two three four"
    assert failures(engine) == {second.turn_id: ("queue", SHUTDOWN_QUEUED)}  # never ran
    assert len(backend.calls) == 1


def test_a_message_sent_while_shutting_down_gets_503_and_writes_nothing(client) -> None:
    engine = client.app.state.engine
    before = engine.store.sync_read(
        lambda conn: conn.execute("SELECT count(*) FROM events").fetchone()[0]
    )
    engine.runner._closing = True  # as drain() sets it when shutdown begins
    try:
        api = client.post("/persona/chat", json={"message": "hello"})
        form = client.post("/chats/chat-x/messages", data={"message": "hello"})
    finally:
        engine.runner._closing = False
    assert (api.status_code, api.headers["retry-after"]) == (503, "5")
    assert "shutting down" in api.json()["error"]
    assert form.status_code == 503 and "shutting down" in form.text
    after = engine.store.sync_read(
        lambda conn: conn.execute("SELECT count(*) FROM events").fetchone()[0]
    )
    assert after == before
