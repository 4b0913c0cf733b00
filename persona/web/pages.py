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
    "tree": "turn-tree",  # the tree moved (regenerate, edit, rewind, branch, stop): re-render
    RESYNC: RESYNC,  # last, when the tab fell too far behind: it reconnects and syncs
}
# How soon (ms) a dropped tab's EventSource reconnects after its `resync` event.
RESYNC_RETRY_MS = 250
SETTLED = ("completed", "failed", "stopped")


def valid_id(value: str) -> bool:
    """Whether a path or form value is a well-formed id (fullmatch: no trailing newline)."""
    return _ID.fullmatch(value) is not None


# ---- read side: the data a page or fragment shows -------------------------------------------


def view_turn(row: dict[str, Any]) -> dict[str, Any]:
    """One turn as the template shows it, with its place among its siblings."""
    siblings = row.get("siblings") or []
    index = row.get("sibling_index") or 0
    return {
        "trace_id": row["trace_id"],
        "turn_id": row["turn_id"],
        "user": row["user_message"],
        "reply": row["reply"],
        "status": row["status"],
        "error": row["error"],
        "truncated": bool(row.get("truncated")),
        "siblings": siblings,
        "sibling_index": index,
        # The neighbours the ‹ and › controls choose (None at either end).
        "prev": siblings[index - 2] if index > 1 else None,
        "next": siblings[index] if 0 < index < len(siblings) else None,
    }


def view_turns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation's turns as the template shows them."""
    return [view_turn(r) for r in rows]


def undo_offered(conn: sqlite3.Connection, chat_id: str) -> bool:
    """Whether the chat's last move was a rewind, which the page then offers to undo."""
    last = queries.last_move(conn, chat_id)
    return last is not None and last[0] == "chat.rewound"


def conversation_view(conn: sqlite3.Connection, chat_id: str) -> dict[str, Any]:
    """The conversation block's data: its turns and whether an undo of a rewind is offered."""
    return {
        "turns": view_turns(queries.conversation(conn, chat_id)),
        "undo_rewind": undo_offered(conn, chat_id),
    }


def turn_view(conn: sqlite3.Connection, chat_id: str, trace_id: str) -> dict[str, Any] | None:
    """One turn of the conversation by its trace, as the template shows it (None: not there)."""
    for row in queries.conversation(conn, chat_id):
        if row["trace_id"] == trace_id:
            return view_turn(row)
    return None


def head_meta(conn: sqlite3.Connection, chat: dict[str, Any] | None) -> dict[str, Any] | None:
    """The meta of the newest completed turn on the chat's active path (the drawer), built
    from its events. A stopped leaf has no meta of its own (its state is its parent's)."""
    turn_id = chat["head_turn_id"] if chat else None
    while turn_id is not None:
        turn = queries.get_turn(conn, turn_id)
        if turn is None:
            return None
        if turn["status"] == "completed":
            events = queries.trace_events(conn, turn["trace_id"])
            return build_meta(events).model_dump(mode="json")
        turn_id = turn["parent_turn_id"]
    return None


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
        **conversation_view(conn, chat_id),
        "meta": head_meta(conn, chat),
        "max_chars": MAX_MESSAGE_CHARS,
    }


def warming(engine: Engine) -> bool:
    """Whether the engine is still loading its model (its `ready` event not yet set)."""
    ready = getattr(engine, "ready", None)
    return ready is not None and not ready.is_set()


def stream_view(conn: sqlite3.Connection, chat_id: str, trace_id: str = "") -> dict[str, Any]:
    """What the stream's fragments need besides the event: the persona, the chat list and
    the turn of `trace_id` as stored (its siblings and actions; None before it is)."""
    chat = queries.get_chat(conn, chat_id)
    persona = queries.get_persona(conn, chat["persona_id"]) if chat else None
    return {
        "session_id": chat_id,
        "persona": persona or {"name": "Persona"},
        "chats": rail(conn, chat["persona_id"])["chats"] if chat else [],
        "stored": turn_view(conn, chat_id, trace_id) if chat and trace_id else None,
    }


def user_actions(turn: dict[str, Any], view: dict[str, Any]) -> str:
    """The actions of an ended turn's message (Edit), swapped in beside it."""
    return fragment(CHAT, "user_actions", turn=turn, oob=True, max_chars=MAX_MESSAGE_CHARS, **view)


async def render_event(engine: Engine, event: TurnEvent, shown: bool = False) -> str:
    """One turn event as HTML with out-of-band swaps that land it in the right element.

    `shown`: the page already holds this turn (queued, or from the sync): its start
    replaces that element instead of adding another.
    """
    data = event.data
    if event.kind == "delta":
        return fragment("stream.html", "delta", trace_id=event.trace_id, text=data["text"])
    ended = event.kind in ("done", "error")
    view = await engine.store.read(stream_view, event.chat_id, event.trace_id if ended else "")
    # An ended turn as stored: its siblings, its actions, a stop's truncated reply.
    stored = view.pop("stored")
    turn: dict[str, Any] = {"trace_id": event.trace_id, "turn_id": data.get("turn_id")}
    if event.kind == "error":
        turn.update(status="failed", error=data.get("error", "unknown error"))
        turn = stored or turn
        return fragment(CHAT, "assistant", turn=turn, oob=True, **view) + user_actions(turn, view)
    # The sidebar follows too: a chat appears on its first turn, counts change on each.
    chat_list = fragment(CHAT, "chat_list", oob=True, **view)
    if event.kind in ("queued", "start"):
        status = "queued" if event.kind == "queued" else "started"
        turn.update(user=data.get("message", ""), reply="", status=status)
        place = {"replace": True} if shown else {"append": True}
        return fragment(CHAT, "turn", turn=turn, **place, **view) + chat_list
    turn.update(reply=data["reply"], status="completed")
    if stored is not None:
        turn = {**stored, **turn, "turn_id": stored["turn_id"]}
    drawer = fragment(CHAT, "drawer", meta=data["meta"], oob=True, **view)
    assistant = fragment(CHAT, "assistant", turn=turn, oob=True, **view)
    return assistant + user_actions(turn, view) + drawer + chat_list


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
    event; a move of the tree sends the whole conversation again, as it stands then.
    Subscribing comes before that read, so a turn is in the sync, in the events after it,
    or in both; `shown` and `settled` keep both from adding it twice.
    """
    with engine.broadcaster.subscribe(chat_id) as sub:
        view = await engine.store.read(sync_view, chat_id, engine.default_persona_id)
        shown: set[str] = set()
        settled: set[str] = set()

        def swapped_in(view: dict[str, Any]) -> str:
            # The page will hold every turn of the view, and how those that ended ended.
            for turn in view["turns"]:
                shown.add(turn["trace_id"])
                if turn["status"] in SETTLED:
                    settled.add(turn["trace_id"])
            return render_sync(view)

        if view is not None:
            yield {"event": PAGE_EVENTS["sync"], "data": swapped_in(view)}
        while True:
            event = await sub.get()
            if event.kind == RESYNC:
                data = fragment("stream.html", "resync")
                yield {"event": PAGE_EVENTS[RESYNC], "data": data, "retry": RESYNC_RETRY_MS}
                return
            if event.kind == "tree":  # the tree moved: the whole conversation, as it stands now
                view = await engine.store.read(sync_view, chat_id, engine.default_persona_id)
                if view is not None:
                    yield {"event": PAGE_EVENTS["tree"], "data": swapped_in(view)}
                continue
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


@router.get("/chats/{session_id}/conversation", response_class=HTMLResponse)
async def conversation_block(request: Request, session_id: str, engine: EngineDep) -> Response:
    """The conversation alone (the active path, its siblings' controls and actions): the
    HTML every move re-renders, for a client that wants it without the stream."""
    if not valid_id(session_id):
        return PlainTextResponse(f"invalid session id {session_id!r}", status_code=422)
    view = await engine.store.read(
        chat_view, session_id, None, engine.default_persona_id, "", False
    )
    if view is None:
        return PlainTextResponse(f"unknown chat {session_id!r}", status_code=404)
    return templates.TemplateResponse(request, CHAT, view, block_name="messages")


@router.get("/chats/{session_id}/stream")
async def chat_stream(session_id: str, engine: EngineDep) -> Response:
    """Server-Sent Events of HTML fragments for every turn of the chat.

    Each connection starts with `turn-sync` (the conversation as the log has it); one that
    falls too far behind ends with `resync`, after which the browser reconnects.
    """
    if not valid_id(session_id):
        return PlainTextResponse(f"invalid session id {session_id!r}", status_code=422)
    return EventSourceResponse(live_fragments(engine, session_id), ping=15)
