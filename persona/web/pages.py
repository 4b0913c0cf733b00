"""HTML pages: the chat screen, its message form, and its live stream of HTML fragments."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from persona.engine import Engine
from persona.errors import ChatConflict, MessageTooLong, PersonaNotFound, QueueFull, ShuttingDown
from persona.pipeline.broadcast import RESYNC, TurnEvent
from persona.pipeline.meta import build_meta
from persona.storage import chat_queries, queries
from persona.web.deps import EngineDep
from persona.web.schemas import ID_PATTERN, MAX_MESSAGE_CHARS, ChatRequest
from persona.web.templating import fragment, templates
from persona.web.turns import build_request, new_session_id

router = APIRouter(include_in_schema=False)

CHAT = "chat.html"
TRACE_HEADER = "X-Trace-Id"
_ID = re.compile(ID_PATTERN)
# A urlencoded form of the longest message, every character percent-encoded UTF-8, fits.
MAX_FORM_BYTES = 16 * MAX_MESSAGE_CHARS
RECENT_CHATS = 30
# The page stream's event names: never `error`, which an EventSource also fires for its
# own connection failures (the page would take a failed turn for a broken stream).
PAGE_EVENTS = {
    "sync": "turn-sync",  # first on every (re)connect: the conversation as the log has it
    "queued": "turn-queued",
    "start": "turn-start",
    "delta": "turn-delta",
    "done": "turn-done",
    "error": "turn-failed",
    RESYNC: RESYNC,  # last, when the tab fell too far behind: it reconnects and syncs
}
# How soon (ms) a dropped tab's EventSource reconnects after its `resync` event.
RESYNC_RETRY_MS = 250
SETTLED = ("completed", "failed")


def valid_id(value: str) -> bool:
    """Whether a path or form value is a well-formed id (fullmatch: no trailing newline)."""
    return _ID.fullmatch(value) is not None


# ---- read side: the data a page or fragment shows -------------------------------------------


def view_turns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation's turns as the template shows them."""
    return [
        {
            "trace_id": r["trace_id"],
            "user": r["user_message"],
            "reply": r["reply"],
            "status": r["status"],
            "error": r["error"],
        }
        for r in rows
    ]


def head_meta(conn: sqlite3.Connection, chat: dict[str, Any] | None) -> dict[str, Any] | None:
    """The meta of the chat's head turn (the drawer), built from its events."""
    if chat is None or chat["head_turn_id"] is None:
        return None
    turn = queries.get_turn(conn, chat["head_turn_id"])
    if turn is None:
        return None
    return build_meta(queries.trace_events(conn, turn["trace_id"])).model_dump(mode="json")


def rail(
    conn: sqlite3.Connection, persona_id: str, q: str = "", archived: bool = False
) -> dict[str, Any]:
    """The chat rail: the persona's listed chats, and those the search or archive view picks."""
    _, chats = chat_queries.list_chats(conn, persona_id, limit=RECENT_CHATS)
    filtered = bool(q.strip()) or archived
    found = (
        chat_queries.list_chats(conn, persona_id, archived, q, RECENT_CHATS)[1] if filtered else []
    )
    # Where the rail's forms send the browser back to: this view of the rail.
    back = urlencode({k: v for k, v in (("q", q), ("archived", "1" if archived else "")) if v})
    rail_view = {"q": q, "archived": archived, "filtered": filtered, "found": found, "back": back}
    return {"chats": chats, "rail": rail_view}


def chat_view(
    conn: sqlite3.Connection,
    chat_id: str,
    persona_id: str | None,
    default_persona: str,
    q: str = "",
    archived: bool = False,
) -> dict[str, Any] | None:
    """Everything the chat page shows; None when its persona does not exist."""
    chat = queries.get_chat(conn, chat_id)
    chosen = chat["persona_id"] if chat else persona_id or default_persona
    persona = queries.get_persona(conn, chosen)
    if persona is None:
        return None
    return {
        "session_id": chat_id,
        "title": chat["title"] if chat else "New chat",
        "persona": persona,
        # A new chat remembers a chosen persona until its first turn creates it.
        "persona_id_field": persona_id if chat is None else None,
        **rail(conn, chosen, q, archived),
        "turns": view_turns(queries.conversation(conn, chat_id)),
        "meta": head_meta(conn, chat),
        "max_chars": MAX_MESSAGE_CHARS,
    }


def warming(engine: Engine) -> bool:
    """Whether the engine is still loading its model (its `ready` event not yet set)."""
    ready = getattr(engine, "ready", None)
    return ready is not None and not ready.is_set()


def stream_view(conn: sqlite3.Connection, chat_id: str) -> dict[str, Any]:
    """What the stream's fragments need besides the event: the persona and the chat list."""
    chat = queries.get_chat(conn, chat_id)
    persona = queries.get_persona(conn, chat["persona_id"]) if chat else None
    return {
        "session_id": chat_id,
        "persona": persona or {"name": "Persona"},
        "chats": rail(conn, chat["persona_id"])["chats"] if chat else [],
    }


async def render_event(engine: Engine, event: TurnEvent, shown: bool = False) -> str:
    """One turn event as HTML with out-of-band swaps that land it in the right element.

    `shown`: the page already holds this turn (queued, or from the sync): its start
    replaces that element instead of adding another.
    """
    data = event.data
    if event.kind == "delta":
        return fragment("stream.html", "delta", trace_id=event.trace_id, text=data["text"])
    view = await engine.store.read(stream_view, event.chat_id)
    turn: dict[str, Any] = {"trace_id": event.trace_id}
    if event.kind == "error":
        turn.update(status="failed", error=data.get("error", "unknown error"))
        return fragment(CHAT, "assistant", turn=turn, oob=True, **view)
    # The sidebar follows too: a chat appears on its first turn, counts change on each.
    chat_list = fragment(CHAT, "chat_list", oob=True, **view)
    if event.kind in ("queued", "start"):
        status = "queued" if event.kind == "queued" else "started"
        turn.update(user=data.get("message", ""), reply="", status=status)
        place = {"replace": True} if shown else {"append": True}
        return fragment(CHAT, "turn", turn=turn, **place, **view) + chat_list
    turn.update(reply=data["reply"], status="completed")
    drawer = fragment(CHAT, "drawer", meta=data["meta"], oob=True, **view)
    return fragment(CHAT, "assistant", turn=turn, oob=True, **view) + drawer + chat_list


def sync_view(
    conn: sqlite3.Connection, chat_id: str, default_persona: str
) -> dict[str, Any] | None:
    """What a (re)connecting tab is sent first; None while the chat has no turn."""
    if queries.get_chat(conn, chat_id) is None:
        return None
    return chat_view(conn, chat_id, None, default_persona)


def render_sync(view: dict[str, Any]) -> str:
    """The conversation, the drawer and the chat list as they stand, swapped in whole."""
    return (
        fragment(CHAT, "messages", sync=True, **view)
        + fragment(CHAT, "drawer", oob=True, **view)
        + fragment(CHAT, "chat_list", oob=True, **view)
    )


async def live_fragments(engine: Engine, chat_id: str) -> AsyncIterator[dict[str, Any]]:
    """Every turn of a chat, from any tab or client, as SSE events of HTML fragments.

    First the conversation as the log has it (a reconnecting tab catches up), then each
    event. Subscribing comes before that read, so a turn is in the sync, in the events
    after it, or in both; `shown` and `settled` keep both from adding it twice.
    """
    with engine.broadcaster.subscribe(chat_id) as sub:
        view = await engine.store.read(sync_view, chat_id, engine.default_persona_id)
        shown: set[str] = set()
        settled: set[str] = set()
        if view is not None:
            for turn in view["turns"]:
                shown.add(turn["trace_id"])
                if turn["status"] in SETTLED:
                    settled.add(turn["trace_id"])
            yield {"event": PAGE_EVENTS["sync"], "data": render_sync(view)}
        while True:
            event = await sub.get()
            if event.kind == RESYNC:
                data = fragment("stream.html", "resync")
                yield {"event": PAGE_EVENTS[RESYNC], "data": data, "retry": RESYNC_RETRY_MS}
                return
            trace = event.trace_id
            if trace in settled or (event.kind == "queued" and trace in shown):
                continue  # the sync already shows it (or how it ended)
            data = await render_event(engine, event, shown=trace in shown)
            shown.add(trace)
            yield {"event": PAGE_EVENTS[event.kind], "data": data}


# ---- the form -------------------------------------------------------------------------------


class FormError(ValueError):
    """The submitted form is unusable; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, errors: list[str]):
        super().__init__("; ".join(errors))
        self.status = status
        self.errors = errors


def _number(raw: str) -> float | str:
    try:
        return float(raw)
    except ValueError:
        return raw  # left to the model's validation, which names the field


async def chat_request_from_form(request: Request, session_id: str) -> ChatRequest:
    """Parse the urlencoded message form into a ChatRequest (raises FormError)."""
    if not valid_id(session_id):
        raise FormError(422, [f"invalid session id {session_id!r}"])
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if body and content_type != "application/x-www-form-urlencoded":
        raise FormError(415, ["send the form urlencoded (application/x-www-form-urlencoded)"])
    if len(body) > MAX_FORM_BYTES:
        raise FormError(413, ["the message is too long"])
    try:
        form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise FormError(400, ["the form is not valid UTF-8"]) from None
    data: dict[str, Any] = {"message": form.get("message", ""), "session_id": session_id}
    if form.get("persona_id"):
        data["persona_id"] = form["persona_id"]
    if form.get("reward_signal", "").strip():
        data["reward_signal"] = _number(form["reward_signal"].strip())
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise FormError(422, describe(exc)) from None


def describe(exc: ValidationError) -> list[str]:
    """One readable line per invalid field (a union's alternatives report once)."""
    lines: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "form"
        lines.setdefault(field, str(error["msg"]).removeprefix("Value error, "))
    return [f"{field}: {message}" for field, message in lines.items()]


# ---- routes ---------------------------------------------------------------------------------


def error_page(request: Request, status: int, title: str, message: str) -> Response:
    """A full HTML error page."""
    context = {"status_code": status, "title": title, "message": message}
    return templates.TemplateResponse(request, "error.html", context, status_code=status)


def form_errors(request: Request, status: int, errors: list[str]) -> Response:
    """The error list shown under the message box."""
    return templates.TemplateResponse(
        request, CHAT, {"errors": errors}, status_code=status, block_name="form_error"
    )


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> RedirectResponse:
    """Start a new chat: a fresh id; nothing is written until its first message."""
    return RedirectResponse(f"/chats/{new_session_id()}", status_code=303)


# The longest search the chat rail takes.
MAX_RAIL_QUERY_CHARS = 200


@router.api_route("/chats/{session_id}", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def chat_page(
    request: Request,
    session_id: str,
    engine: EngineDep,
    persona_id: str | None = None,
    q: str = "",
    archived: str = "",
) -> Response:
    """The chat: the chat rail (searched, or its archived chats), messages, the composer and
    the state drawer."""
    for value in (session_id, persona_id):
        if value is not None and not valid_id(value):
            return error_page(request, 422, "Invalid id", f"{value!r} is not a valid id.")
    if len(q) > MAX_RAIL_QUERY_CHARS:
        return error_page(request, 422, "Invalid search", "The search is too long.")
    view = await engine.store.read(
        chat_view, session_id, persona_id, engine.default_persona_id, q, archived == "1"
    )
    if view is None:
        return error_page(request, 404, "Unknown persona", f"No persona {persona_id!r}.")
    return templates.TemplateResponse(request, CHAT, {**view, "warming": warming(engine)})


@router.post("/chats/{session_id}/messages", status_code=202)
async def post_message(request: Request, session_id: str, engine: EngineDep) -> Response:
    """Start a turn and answer 202 at once; every tab renders it from the chat's stream."""
    try:
        body = await chat_request_from_form(request, session_id)
        turn = await build_request(engine, body)
    except FormError as exc:
        return form_errors(request, exc.status, exc.errors)
    except PersonaNotFound as exc:
        return form_errors(request, 404, [str(exc)])
    except ChatConflict as exc:
        return form_errors(request, 409, [str(exc)])
    except MessageTooLong as exc:
        return form_errors(request, 413, [str(exc)])
    try:
        handle = await engine.runner.submit(turn)  # the chat's stream shows it, in every tab
    except QueueFull as exc:
        response = form_errors(request, 429, [f"{exc} (in about {exc.retry_after_s} s)"])
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except ChatConflict as exc:  # another persona's first message made the chat meanwhile
        return form_errors(request, 409, [str(exc)])
    except ShuttingDown as exc:
        response = form_errors(request, 503, [f"{exc}: send it again in a moment"])
        response.headers["Retry-After"] = "5"
        return response
    # The sending tab shows the message as queued until the stream starts this trace.
    return Response(status_code=202, headers={TRACE_HEADER: handle.trace_id})


@router.get("/chats/{session_id}/stream")
async def chat_stream(session_id: str, engine: EngineDep) -> Response:
    """Server-Sent Events of HTML fragments for every turn of the chat.

    Each connection starts with `turn-sync` (the conversation as the log has it); one that
    falls too far behind ends with `resync`, after which the browser reconnects.
    """
    if not valid_id(session_id):
        return PlainTextResponse(f"invalid session id {session_id!r}", status_code=422)
    return EventSourceResponse(live_fragments(engine, session_id), ping=15)
