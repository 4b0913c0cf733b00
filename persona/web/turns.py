"""Turn submission shared by the JSON API and the HTML chat: validate, resolve, submit."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from typing import Any

from fastapi.responses import JSONResponse

from persona.engine import Engine
from persona.errors import TurnFailed
from persona.pipeline.broadcast import RESYNC, Subscription
from persona.pipeline.context import TurnRequest
from persona.pipeline.runner import TurnHandle
from persona.web.schemas import ChatRequest, ChatResponse

# Why a stream ends with `resync`, for clients of the JSON event stream.
RESYNC_REASON = "this stream fell too far behind: re-read the chat, then follow it again"


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
        gen_explicit=frozenset(asked.model_dump(exclude_none=True) if asked else ()),
        metadata=body.metadata,
    )
    await engine.runner.check_fits(request)  # raises MessageTooLong before any write
    return request


def sse(kind: str, data: dict[str, Any]) -> dict[str, str]:
    """One Server-Sent Event as sse-starlette expects it."""
    return {"event": kind, "data": json.dumps(data, ensure_ascii=False)}


async def turn_stream(
    engine: Engine,
    request: TurnRequest,
    on_submit: Callable[[TurnHandle], None] | None = None,
) -> AsyncIterator[dict[str, str]]:
    """Submit a turn; return its SSE frames: start, delta..., then done or error.

    Submitting happens here, before any response is sent, so a full queue is answered
    429 (QueueFull), not a stream. Subscribing happens first so no frame is missed.
    """
    stack = ExitStack()
    sub = stack.enter_context(engine.broadcaster.subscribe(request.chat_id))
    try:
        handle = await engine.runner.submit(request)
    except BaseException:
        stack.close()
        raise
    if on_submit is not None:
        on_submit(handle)
    return _turn_frames(stack, sub, handle)


async def _turn_frames(
    stack: ExitStack, sub: Subscription, handle: TurnHandle
) -> AsyncIterator[dict[str, str]]:
    """The frames of one turn. If the client goes away the generator is closed but the
    turn, a task of its own, runs to the end. A client too slow for the deltas loses them
    (its buffer is dropped), never the end: done or error then comes from the result.
    (A stream never iterated at all is dropped by the broadcaster once its buffer fills.)
    """
    with stack:
        while True:
            event = await sub.get()
            if event.kind == RESYNC:
                yield await turn_end(handle)
                return
            if event.trace_id != handle.trace_id or event.kind in ("queued", "tree"):
                continue  # another turn of the same chat, this one's acceptance or a move
            data = dict(event.data)
            if event.kind == "start":
                data.pop("message", None)
            yield sse(event.kind, data)
            if event.kind in ("done", "error"):
                return


async def whole_result(handle: TurnHandle) -> Any:
    """A submitted turn's JSON answer: the reply and meta, or 502 with the error."""
    try:
        # shield: a client that goes away must not cancel the turn itself.
        result = await asyncio.shield(handle.result)
    except TurnFailed as exc:
        return JSONResponse(status_code=502, content={"error": str(exc), "trace_id": exc.trace_id})
    return ChatResponse(
        reply=result.reply, meta=result.meta, session_id=result.session_id, turn_id=result.turn_id
    )


async def turn_end(handle: TurnHandle) -> dict[str, str]:
    """The final frame of a turn, from its result: done, or error."""
    try:
        # shield: a client that goes away must not cancel the turn itself.
        result = await asyncio.shield(handle.result)
    except TurnFailed as exc:
        return sse("error", {"error": str(exc), "trace_id": exc.trace_id})
    return sse("done", {"reply": result.reply, "meta": result.meta.model_dump(mode="json")})


async def chat_events(engine: Engine, chat_id: str) -> AsyncIterator[dict[str, str]]:
    """Every turn event of a chat, as it happens, for as long as the client listens.

    A client that falls too far behind gets a last `resync` event and the stream ends.
    """
    with engine.broadcaster.subscribe(chat_id) as sub:
        while True:
            event = await sub.get()
            if event.kind == RESYNC:
                yield sse(RESYNC, {"session_id": chat_id, "reason": RESYNC_REASON})
                return
            yield sse(event.kind, {**event.data, "trace_id": event.trace_id})
