"""JSON API: chat (whole or streamed), chat events, traces, health."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from persona.pipeline.meta import IncompleteTurn, Meta, build_meta
from persona.storage import queries
from persona.web.deps import EngineDep
from persona.web.schemas import (
    CHAT_STREAM_EVENT,
    ID_PATTERN,
    TURN_STREAM_EVENT,
    ChatRequest,
    ChatResponse,
    ErrorBody,
)
from persona.web.turns import build_request, chat_events, turn_stream, whole_result

router = APIRouter()
SessionId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]

# Every route, once an access token is configured (see docs/security.md).
_AUTH: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "An access token is configured and the request did not send it"
        " (`Authorization: Bearer <token>`)",
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    400: {"model": ErrorBody, "description": "Invalid JSON or UTF-8"},
    403: {"model": ErrorBody, "description": "Sent from another site's page (CSRF guard)"},
    404: {"model": ErrorBody, "description": "Unknown persona or session"},
    409: {"model": ErrorBody, "description": "Session belongs to another persona"},
    413: {
        "model": ErrorBody,
        "description": "The body is over the size cap, or the message and `gen.max_tokens`"
        " do not fit the model's context window",
    },
    422: {"model": ErrorBody, "description": "Invalid field values"},
    429: {
        "model": ErrorBody,
        "description": "The chat, or the server, has as many turns waiting as it may:"
        " retry after the `Retry-After` header's seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
    },
    503: {
        "model": ErrorBody,
        "description": "The server is shutting down: retry after `Retry-After` seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
    },
}
# The 200 of an SSE route: the stream only (its class has no media type of its own, so
# FastAPI adds no JSON body beside it; the errors stay JSON). Its schema is one event.
_SSE = "text/event-stream"


@router.get("/health", responses=_AUTH)
async def health(engine: EngineDep) -> dict[str, str]:
    """Liveness, and whether the model has loaded (`warming` until it has)."""
    return {"status": "ok", "model": "ready" if engine.ready.is_set() else "warming"}


# Probes and monitors use HEAD; kept out of the schema, where GET documents it.
router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)


@router.post(
    "/persona/chat",
    response_model=ChatResponse,
    responses={**_ERRORS, 502: {"model": ErrorBody, "description": "The LLM failed"}},
)
async def chat(body: ChatRequest, engine: EngineDep) -> Any:
    """Run one turn and return the whole reply with its meta."""
    request = await build_request(engine, body)
    handle = await engine.runner.submit(request)  # QueueFull: 429 before anything is written
    return await whole_result(handle)


@router.post(
    "/persona/chat/stream",
    responses={
        **_ERRORS,
        200: {
            "content": {_SSE: {"schema": TURN_STREAM_EVENT}},
            "description": "SSE: start {trace_id, session_id, turn_id}, delta {text}..., "
            "then done {reply, meta} or error {error, trace_id} (see docs/api.md)",
        },
    },
    response_class=EventSourceResponse,
)
async def chat_stream(body: ChatRequest, engine: EngineDep) -> EventSourceResponse:
    """Run one turn and stream it as Server-Sent Events.

    A client too slow to read every delta still gets the turn's final done or error.
    """
    request = await build_request(engine, body)
    frames = await turn_stream(engine, request)  # submitted: a full queue answers 429 here
    return EventSourceResponse(frames, ping=15)


@router.get(
    "/persona/chat/{session_id}/events",
    response_class=EventSourceResponse,
    responses={
        **_AUTH,
        200: {
            "content": {_SSE: {"schema": CHAT_STREAM_EVENT}},
            "description": "SSE, until the client leaves: queued, start, delta..., done or"
            " error for every turn of the chat, each with its trace_id; a client too far"
            " behind gets a last resync (see docs/api.md)",
        },
        422: {"model": ErrorBody, "description": "Invalid session id"},
    },
)
async def session_events(session_id: SessionId, engine: EngineDep) -> EventSourceResponse:
    """Follow every turn of a chat (from any client) as Server-Sent Events.

    Each turn sends queued (accepted, waiting for the turns ahead), start, delta..., then
    done or error. A client that reads too slowly (more than `server.subscriber_buffer`
    events behind) is dropped: its stream ends with one `resync` event {session_id,
    reason}. Re-read GET /persona/chat/{session_id}, then follow this stream again.
    """
    return EventSourceResponse(chat_events(engine, session_id), ping=15)


@router.get(
    "/persona/chat/{session_id}",
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "Unknown session"},
        422: {"model": ErrorBody, "description": "Invalid session id"},
    },
)
async def session_history(session_id: SessionId, engine: EngineDep) -> Any:
    """A chat and its messages."""
    chat = await engine.store.read(queries.get_chat, session_id)
    if chat is None:
        return JSONResponse(status_code=404, content={"error": f"unknown session {session_id!r}"})
    turns = await engine.store.read(queries.conversation, session_id)
    return {"chat": chat, "messages": messages_of(turns)}


def messages_of(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The active branch as messages, oldest first (a failed turn has only its user's)."""
    out: list[dict[str, Any]] = []
    for t in turns:
        common = {"turn_id": t["turn_id"], "trace_id": t["trace_id"], "turn_status": t["status"]}
        out.append({"role": "user", "content": t["user_message"], **common})
        if t["reply"] is not None:
            out.append({"role": "assistant", "content": t["reply"], **common})
        if t["error"] is not None:
            out[-1]["turn_error"] = t["error"]
    return out


@router.get(
    "/persona/traces/{trace_id}",
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "Unknown trace"},
        422: {"model": ErrorBody, "description": "Invalid trace id"},
    },
)
async def trace(
    trace_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")], engine: EngineDep
) -> Any:
    """Every event of one turn, in order, and its meta once it completed (else null)."""
    events = await engine.store.read(queries.trace_events, trace_id)
    if not events:
        return JSONResponse(status_code=404, content={"error": f"unknown trace {trace_id!r}"})
    try:
        meta: Meta | None = build_meta(events)
    except IncompleteTurn:
        meta = None
    return {
        "trace_id": trace_id,
        "events": [e.public() for e in events],
        "meta": meta.model_dump(mode="json") if meta else None,
    }
