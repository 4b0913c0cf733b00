"""Backpressure: a bounded queue per chat (429 past it) and a bounded buffer per stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from helpers import LiveServer, ReplyGate, engine_with, read_sse, run_turn, wait_until

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.base import GenOptions
from persona.llm.scripted import FailAfter, ScriptedBackend
from persona.pipeline.broadcast import RESYNC, Broadcaster, TurnEvent
from persona.pipeline.context import TurnRequest
from persona.storage import queries
from persona.storage.eventlog import count_events
from persona.web.pages import RESYNC_RETRY_MS, live_fragments
from persona.web.turns import RESYNC_REASON, chat_events, turn_stream

LIMIT = 3
BUFFER = 16  # the smallest the settings allow
# Sixty words: far more deltas than a stream may buffer.
LONG_REPLY = " ".join(f"word{i}" for i in range(60))


@pytest.fixture
def limited(tmp_path) -> Iterator[tuple[LiveServer, ScriptedBackend]]:
    """A live server whose chats take at most LIMIT turns waiting or running."""
    settings = Settings(
        db_path=tmp_path / "bp.db",
        llm={"provider": "scripted"},
        server={"chat_queue_limit": LIMIT},
    )
    backend = ScriptedBackend()
    with LiveServer(Engine(settings, backend=backend, clock=FixedClock())) as server:
        yield server, backend


def _events(server: LiveServer) -> int:
    return server.engine.store.sync_read(count_events)


def test_a_full_chat_answers_429_with_retry_after_and_writes_nothing(limited) -> None:
    server, backend = limited
    engine = server.engine
    gate = ReplyGate(backend)  # every reply waits: the chat's turns pile up
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for i in range(LIMIT):
                sent = http.post("/chats/busy/messages", data={"message": f"m{i}"})
                assert sent.status_code == 202
            assert gate.reached.wait(10)
            before = _events(server)

            form = http.post("/chats/busy/messages", data={"message": "one too many"})
            api = http.post("/persona/chat", json={"message": "and me", "session_id": "busy"})
            stream = http.post(
                "/persona/chat/stream", json={"message": "me too", "session_id": "busy"}
            )

            # A second per turn ahead: LIMIT turns wait or run.
            for refused in (form, api, stream):
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == str(LIMIT)
            assert "text/html" in form.headers["content-type"] and "<html" not in form.text
            assert f"<li>chat &#39;busy&#39; already has {LIMIT} turns waiting" in form.text
            assert f"(in about {LIMIT} s)" in form.text
            assert "already has" in api.json()["error"]
            assert stream.headers["content-type"].startswith("application/json")
            assert _events(server) == before  # refused before anything was written
            assert engine.runner.queued("busy") == LIMIT

            # Other chats are not held back by a full one.
            assert http.post("/chats/calm/messages", data={"message": "hi"}).status_code == 202

            gate.open()

            def settled() -> bool:
                turns = engine.store.sync_read(queries.conversation, "busy")
                return len(turns) == LIMIT and all(t["status"] == "completed" for t in turns)

            wait_until(settled, timeout=20)
            wait_until(lambda: engine.runner.busy_chats() == 0, timeout=20)
            again = http.post("/chats/busy/messages", data={"message": "room again"})
            assert again.status_code == 202
    finally:
        gate.open()


# ---- bounded buffers per stream -----------------------------------------------------------


async def test_a_subscriber_that_never_reads_is_dropped_at_its_bound() -> None:
    broadcaster = Broadcaster(BUFFER)
    with broadcaster.subscribe("c") as slow, broadcaster.subscribe("c") as live:
        read = []
        for i in range(BUFFER * 4):
            broadcaster.publish(TurnEvent("delta", "c", "t", {"i": i}))
            read.append((await live.get()).data["i"])
            if i < BUFFER:  # up to the bound, the slow one keeps every event
                assert not slow.dropped and len(slow) == i + 1
            else:  # one more and it is gone, its buffer freed
                assert slow.dropped and len(slow) == 0
            assert broadcaster.buffered() <= BUFFER
        assert read == list(range(BUFFER * 4))  # the live reader got everything, in order
        assert broadcaster.subscriber_count("c") == 1
        for _ in range(2):  # told to resync, however often it asks
            assert (await slow.get()).kind == RESYNC
    assert broadcaster.subscriber_count("c") == 0 and broadcaster.buffered() == 0


async def until(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not (value := predicate()):
            await asyncio.sleep(0.01)
        return value


async def test_a_slow_event_stream_is_dropped_while_a_live_one_gets_everything(tmp_path) -> None:
    async with engine_with(tmp_path, server={"subscriber_buffer": BUFFER}) as engine:
        backend = engine.backend
        assert isinstance(backend, ScriptedBackend)
        backend.delay_s = 0.001  # chunks arrive one at a time, as from a real model
        backend.enqueue(LONG_REPLY)
        slow = chat_events(engine, "c")
        slow_first = asyncio.ensure_future(anext(slow))

        async def follow() -> list[dict[str, str]]:
            frames = []
            async for frame in chat_events(engine, "c"):
                frames.append(frame)
                if frame["event"] in ("done", "error"):
                    return frames
            return frames

        live = asyncio.ensure_future(follow())
        await until(lambda: engine.broadcaster.subscriber_count("c") == 2)
        result = await run_turn(engine, "tell me everything", chat_id="c")
        frames = await asyncio.wait_for(live, 10)

        deltas = [json.loads(f["data"])["text"] for f in frames if f["event"] == "delta"]
        assert len(deltas) > BUFFER and "".join(deltas) == result["reply"]
        # The slow one read one frame, then fell behind: dropped, nothing held for it.
        assert (await slow_first)["event"] == "queued"
        assert engine.broadcaster.subscriber_count("c") == 0
        assert engine.broadcaster.buffered() == 0
        last = await anext(slow)
        assert last["event"] == RESYNC
        assert json.loads(last["data"]) == {"session_id": "c", "reason": RESYNC_REASON}
        with pytest.raises(StopAsyncIteration):
            await anext(slow)


async def test_a_stuck_page_stream_is_dropped_and_told_to_resync(tmp_path) -> None:
    async with engine_with(tmp_path, server={"subscriber_buffer": BUFFER}) as engine:
        assert isinstance(engine.backend, ScriptedBackend)
        engine.backend.enqueue(LONG_REPLY)
        page = live_fragments(engine, "c")
        first = asyncio.ensure_future(anext(page))
        await until(lambda: engine.broadcaster.subscriber_count("c") == 1)
        await run_turn(engine, "hi", chat_id="c")

        assert (await first)["event"] == "turn-queued"
        assert engine.broadcaster.subscriber_count("c") == 0
        assert engine.broadcaster.buffered() == 0
        last = await anext(page)
        # The tab shows it is catching up, then reconnects soon (and syncs from the log).
        assert last["event"] == RESYNC and last["retry"] == RESYNC_RETRY_MS
        assert 'id="live"' in last["data"] and 'hx-swap-oob="true"' in last["data"]
        with pytest.raises(StopAsyncIteration):
            await anext(page)


@pytest.mark.parametrize(
    ("reply", "end"),
    [(LONG_REPLY, "done"), (FailAfter(LONG_REPLY, "cut off"), "error")],
)
async def test_a_turn_stream_too_slow_for_its_deltas_still_gets_the_end(
    tmp_path, reply, end
) -> None:
    async with engine_with(tmp_path, server={"subscriber_buffer": BUFFER}) as engine:
        assert isinstance(engine.backend, ScriptedBackend)
        engine.backend.enqueue(reply)
        pid = engine.default_persona_id
        request = TurnRequest("go on", "local", "c", pid, 0.0, GenOptions(max_tokens=200))
        frames = await turn_stream(engine, request)  # submitted; nothing read yet

        def ended() -> bool:
            turns = engine.store.sync_read(queries.conversation, "c")
            return bool(turns) and turns[0]["status"] in ("completed", "failed")

        await until(ended)
        assert engine.broadcaster.subscriber_count("c") == 0  # dropped long ago
        out = [frame async for frame in frames]

        assert [f["event"] for f in out] == [end]  # the deltas are lost, never the end
        data = json.loads(out[0]["data"])
        turn = engine.store.sync_read(queries.conversation, "c")[0]
        if end == "done":
            assert data["reply"] == turn["reply"] == LONG_REPLY
            assert data["meta"]["trace_id"] == turn["trace_id"]
        else:
            assert data == {"error": "LLM failed: cut off", "trace_id": turn["trace_id"]}


# ---- the page stream catches a tab up -----------------------------------------------------


def test_a_page_stream_starts_with_the_conversation_as_the_log_has_it(
    live_server: LiveServer, backend: ScriptedBackend
) -> None:
    first = httpx.post(
        f"{live_server.url}/persona/chat", json={"message": "first", "session_id": "sync"}
    ).json()
    gate = ReplyGate(backend)
    try:
        with httpx.Client(base_url=live_server.url, timeout=10) as http:
            assert http.post("/chats/sync/messages", data={"message": "second"}).status_code == 202
            assert gate.reached.wait(10)
            third = http.post("/chats/sync/messages", data={"message": "third"})
            assert third.status_code == 202
            third_trace = third.headers["x-trace-id"]

            with http.stream("GET", "/chats/sync/stream") as response:
                frames = read_sse(response, as_json=False, stop_after=())
                kind, sync = next(frames)
                assert kind == "turn-sync"
                assert '<section id="messages" class="messages" aria-live="polite"' in sync
                assert 'hx-swap-oob="true">' in sync[: sync.index("</p>")]
                assert first["reply"] in sync
                for status in ("completed", "started", "queued"):
                    assert sync.count(f'data-status="{status}"') == 1
                assert f'class="turn queued" id="turn-{third_trace}"' in sync
                assert f"<code>{first['meta']['trace_id']}</code>" in sync  # the drawer
                assert '<nav id="chat-list"' in sync

                gate.open()
                seen, done = [], 0
                for kind, data in frames:
                    seen.append((kind, data))
                    done += kind == "turn-done"
                    if done == 2:
                        break
    finally:
        gate.open()
    kinds = [kind for kind, _ in seen]
    assert "turn-queued" not in kinds  # the sync already showed the third as queued
    start = next(data for kind, data in seen if kind == "turn-start")
    # The third starts where the sync put it: that element is replaced, not added again.
    assert f'<article class="turn" id="turn-{third_trace}" hx-swap-oob="true">' in start
    assert "beforeend:#messages" not in start


async def test_events_the_sync_already_shows_are_not_sent_again(tmp_path) -> None:
    async with engine_with(tmp_path) as engine:
        assert isinstance(engine.backend, ScriptedBackend)
        done = await run_turn(engine, "hello", chat_id="c")
        gate = ReplyGate(engine.backend)
        try:
            request = TurnRequest(
                "held", "local", "c", engine.default_persona_id, 0.0, GenOptions()
            )
            held = await engine.runner.submit(request)
            assert await asyncio.to_thread(gate.reached.wait, 10)
            page = live_fragments(engine, "c")
            sync = await anext(page)
            assert sync["event"] == "turn-sync" and done["reply"] in sync["data"]
            assert f'id="a-{held.trace_id}" data-status="started"' in sync["data"]
            # Late copies of what the sync showed (as if buffered while it was read): the
            # ended turn's events, and the running turn's acceptance.
            old = done["trace_id"]
            for event in (
                TurnEvent("queued", "c", old, {"message": "hello"}),
                TurnEvent("delta", "c", old, {"text": "again"}),
                TurnEvent("done", "c", old, {"reply": "x", "meta": done["meta"]}),
                TurnEvent("queued", "c", held.trace_id, {"message": "held"}),
            ):
                engine.broadcaster.publish(event)
        finally:
            gate.open()
        frame = await asyncio.wait_for(anext(page), 10)
        # The first frame after the sync is the running turn's next chunk.
        assert frame["event"] == "turn-delta"
        assert f"#text-{held.trace_id}" in frame["data"]
        await held.result
        await page.aclose()


def test_a_flood_over_many_chats_meets_the_server_wide_limit(tmp_path) -> None:
    # Per-chat bounds alone let a flood spread over new chat ids through.
    settings = Settings(
        db_path=tmp_path / "flood.db",
        llm={"provider": "scripted"},
        server={"chat_queue_limit": 8, "turn_limit": 3, "concurrent_turns": 1},
    )
    backend = ScriptedBackend()
    gate = ReplyGate(backend)
    try:
        with (
            LiveServer(Engine(settings, backend=backend, clock=FixedClock())) as server,
            httpx.Client(base_url=server.url, timeout=10) as http,
        ):
            for i in range(3):
                sent = http.post(f"/chats/flood-{i}/messages", data={"message": "hi"})
                assert sent.status_code == 202
            assert gate.reached.wait(10)
            before = _events(server)
            refused = http.post("/persona/chat", json={"message": "hi", "session_id": "flood-3"})
            assert (
                refused.status_code == 429 and "the server already has 3" in refused.json()["error"]
            )
            assert refused.headers["retry-after"] == "3"  # three turns ahead, one at a time
            assert _events(server) == before
            # One runs at a time: the other two chats' turns wait, queued.
            statuses = server.engine.store.sync_read(
                lambda conn: sorted(r[0] for r in conn.execute("SELECT status FROM turns"))
            )
            assert statuses == ["queued", "queued", "started"]
            gate.open()
            wait_until(lambda: server.engine.runner.busy_chats() == 0, timeout=20)
            again = http.post("/persona/chat", json={"message": "hi", "session_id": "flood-3"})
            assert again.status_code == 200
    finally:
        gate.open()
