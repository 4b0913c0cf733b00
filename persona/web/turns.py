"""Turn submission shared by the JSON API and the HTML chat: validate, resolve, submit."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from persona.engine import Engine
from persona.pipeline.context import TurnRequest
from persona.pipeline.runner import TurnHandle
from persona.web.schemas import ChatRequest


def new_session_id() -> str:
    """A fresh chat id."""
    return f"chat-{uuid.uuid4().hex[:16]}"


async def build_request(engine: Engine, body: ChatRequest) -> TurnRequest:
    """Resolve persona and chat, check the message fits (raises before any write)."""
    chat_id = body.session_id or new_session_id()
    persona_id = await engine.runner.resolve(
        chat_id, body.persona_id, body.user_id, engine.default_persona_id
    )
    # The backend's defaults for its model, then the [generation] settings, then the body.
    settings, asked = engine.settings.generation, body.gen
    gen = engine.backend.default_gen().with_overrides(
        temperature=settings.temperature, max_tokens=settings.max_tokens
    )
    if asked is not None:
        gen = gen.with_overrides(temperature=asked.temperature, max_tokens=asked.max_tokens)
    request = TurnRequest(
        message=body.message,
        user_id=body.user_id,
        chat_id=chat_id,
        persona_id=persona_id,
        reward_signal=float(body.reward_signal),
        gen=gen,
    )
    await engine.runner.check_fits(request)  # raises MessageTooLong before any write
    return request


def sse(kind: str, data: dict[str, Any]) -> dict[str, str]:
    """One Server-Sent Event as sse-starlette expects it."""
    return {"event": kind, "data": json.dumps(data, ensure_ascii=False)}


async def turn_stream(engine: Engine, request: TurnRequest) -> AsyncIterator[dict[str, str]]:
    """Submit a turn and yield its SSE frames: start, delta..., then done or error.

    Subscribing happens before submitting so no frame is missed; if the client goes
    away the generator is closed but the turn, a task of its own, runs to the end.
    """
    with engine.broadcaster.subscribe(request.chat_id) as queue:
        handle: TurnHandle = engine.runner.submit(request)
        while True:
            event = await queue.get()
            if event.trace_id != handle.trace_id:
                continue  # another turn of the same chat
            data = dict(event.data)
            if event.kind == "start":
                data.pop("message", None)
            yield sse(event.kind, data)
            if event.kind in ("done", "error"):
                return


async def chat_events(engine: Engine, chat_id: str) -> AsyncIterator[dict[str, str]]:
    """Every turn event of a chat, as it happens, for as long as the client listens."""
    with engine.broadcaster.subscribe(chat_id) as queue:
        while True:
            event = await queue.get()
            yield sse(event.kind, {**event.data, "trace_id": event.trace_id})
