"""A persona's chats: list, search, create, rename, archive and restore (JSON and the rail).

Every change is an event on the chat's stream (`chat.started`, `chat.renamed`,
`chat.archived`, `chat.restored`, actor `user`), decided and appended in one writer
transaction. Nothing is removed: an archived chat leaves the list, keeps every turn and
comes back when restored. A change that would change nothing (the same title, archiving an
archived chat) answers 200 with `event_id: null` and writes nothing; a refused one (unknown
chat 404, invalid title 422) writes nothing either.

Each chat has its own clock (persona.chat_clock): `GET/POST /persona/chats/{id}/clock`
reads it or moves it (`chat.clock_set`); a new chat may start at an in-story time.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from persona import chat_clock
from persona.clock import iso
from persona.controls import CONTROL_CLASS, first_control
from persona.engine import Engine
from persona.events import ChatStarted
from persona.events.base import EventPayload
from persona.events.chats import ChatArchived, ChatRenamed, ChatRestored
from persona.storage import chat_queries, queries
from persona.storage.eventlog import NewEvent
from persona.storage.store import WriteTx
from persona.web.changes import AUTH, Refused, read_form, refused, write_responses
from persona.web.deps import EngineDep
from persona.web.pages import FormError, describe, error_page, valid_id
from persona.web.schemas import ID_PATTERN, ErrorBody, Identifier
from persona.web.templating import templates
from persona.web.turns import new_session_id

router = APIRouter()

MAX_TITLE_CHARS = 120
NEW_CHAT_TITLE = "New chat"
MAX_QUERY_CHARS = 200
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_OFFSET = 1_000_000
# A urlencoded rename form, every character of the title percent-encoded UTF-8, and more.
MAX_FORM_BYTES = 16 * MAX_TITLE_CHARS + 4096
# What the chat page keeps in its query string when a form sends the browser back.
RAIL_FILTERS = ("q", "archived")
# The drawer's clock line.
CLOCK_FRAGMENT = "chat_clock.html"
# Who the HTML pages act as (the chat form sends no user either).
PAGE_USER = "local"

ChatId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]


def clean_title(value: str) -> str:
    """A title as stored: stripped, one line, 1..MAX_TITLE_CHARS characters (ValueError)."""
    # Controls first: str.strip() would take some of them for whitespace.
    if (found := first_control(value)) is not None:
        position, char = found
        raise ValueError(f"title contains control character U+{ord(char):04X} at {position}")
    title = value.strip()
    if not title:
        raise ValueError("title must not be blank")
    if any(c in title for c in "\t\n\r"):
        raise ValueError("title is one line (no tab or line break)")
    if len(title) > MAX_TITLE_CHARS:
        raise ValueError(f"title is at most {MAX_TITLE_CHARS} characters")
    return title


# ---- bodies -----------------------------------------------------------------------------------


class ChatItem(BaseModel):
    """One chat as the rail shows it."""

    chat_id: str
    persona_id: str
    title: str
    snippet: str = Field(description="its last message, on one line, at most 120 characters")
    created_at: str = Field(description="when it was started (wall time)")
    updated_at: str = Field(
        description=(
            "when the last turn of its active path ended, or its creation (wall time): the"
            " list's order. The chat's own clock is GET /persona/chats/{chat_id}/clock."
        )
    )
    turn_count: int = Field(description="completed turns")
    archived: bool = Field(description="hidden from the list; restorable, nothing removed")


class ChatList(BaseModel):
    """A page of a persona's chats, most recently active first."""

    persona_id: str
    total: int = Field(description="how many match the filters")
    limit: int
    offset: int
    items: list[ChatItem]


class ChatChange(BaseModel):
    """A chat after a change; `event_id` null when there was nothing to change."""

    chat: ChatItem
    event_id: str | None


# What clean_title accepts, published in the schema: one line, something visible.
TITLE_PATTERN = rf"^[^{CONTROL_CLASS}\t\n\r]*[^\s{CONTROL_CLASS}][^{CONTROL_CLASS}\t\n\r]*$"
TitleText = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=MAX_TITLE_CHARS,
        description=f"1..{MAX_TITLE_CHARS} characters, one line",
        json_schema_extra={"pattern": TITLE_PATTERN},
    ),
]


# What a chat clock is set to or skipped by: the schema publishes the very patterns
# persona.chat_clock matches.
Moment = Annotated[
    StrictStr,
    Field(
        max_length=chat_clock.MAX_TEXT_CHARS,
        description="ISO date and time, seconds optional; no UTC offset means UTC",
        examples=["2031-05-01T09:00"],
        json_schema_extra={"pattern": chat_clock.MOMENT_PATTERN},
    ),
]
SkipText = Annotated[
    StrictStr,
    Field(
        max_length=chat_clock.MAX_TEXT_CHARS,
        json_schema_extra={"pattern": chat_clock.SKIP_PATTERN},
    ),
]
SkipSeconds = Annotated[
    float, Field(strict=True, ge=-chat_clock.MAX_SKIP_S, le=chat_clock.MAX_SKIP_S)
]


def _one_move_schema(schema: dict[str, Any]) -> None:
    # Exactly one of `set` and `skip`, neither of them null (what ClockMove checks).
    props = schema["properties"]
    for name in ("set", "skip"):
        options = [o for o in props[name].pop("anyOf") if o.get("type") != "null"]
        props[name].pop("default", None)
        if len(options) == 1:
            props[name].update(options[0])
        else:
            props[name]["anyOf"] = options
    schema["oneOf"] = [{"required": ["set"]}, {"required": ["skip"]}]


class ChatTitle(BaseModel):
    """A new title for a chat."""

    model_config = ConfigDict(extra="forbid")

    title: TitleText

    @field_validator("title")
    @classmethod
    def valid_title(cls, value: str) -> str:
        return clean_title(value)


class NewChat(BaseModel):
    """An empty chat to start (its first message then continues it)."""

    model_config = ConfigDict(extra="forbid")

    persona_id: Identifier | None = Field(default=None, description="default persona")
    title: TitleText | None = Field(default=None, description=f"default {NEW_CHAT_TITLE!r}")
    user_id: Identifier = "local"
    chat_time: Moment | None = Field(
        default=None, description="an in-story time its clock starts at (default: now)"
    )

    @field_validator("title")
    @classmethod
    def valid_title(cls, value: str | None) -> str | None:
        return None if value is None else clean_title(value)

    @field_validator("chat_time")
    @classmethod
    def valid_chat_time(cls, value: str | None) -> str | None:
        return _well_formed_moment(value)


def _well_formed_moment(value: str | None) -> str | None:
    """Refuse (422) what is not a date and time; one whose UTC instant leaves the years 1 to
    9999 is well-formed, and refused in the transaction (409) like a skip out of them."""
    try:
        if value is not None:
            chat_clock.parse_moment(value)
    except chat_clock.OutOfRange:
        pass
    return value


class ChatClock(BaseModel):
    """A chat's clock: its time now and how far it is from wall time."""

    chat_id: str
    chat_time: str = Field(description="the chat's time now (ISO-8601 UTC)")
    offset_s: float = Field(description="chat time minus wall time, in seconds")


class ClockMove(BaseModel):
    """Move a chat's clock: `set` it to a time, or `skip` it ahead or back (one of them)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_move_schema)

    set_: Moment | None = Field(default=None, alias="set", description="e.g. 2031-05-01T09:00")
    skip: SkipText | SkipSeconds | None = Field(
        default=None, description="seconds, or text like '8h', '90m', '-2d', '1h30m' (0: no move)"
    )
    user_id: Identifier = "local"

    @model_validator(mode="before")
    @classmethod
    def one_move(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in ("set", "skip") if k in data]
            if len(given) != 1:
                raise ValueError("give either `set` (a date and time) or `skip` (a duration)")
            if data[given[0]] is None:
                raise ValueError(f"`{given[0]}` must not be null")
        return data

    @field_validator("set_")
    @classmethod
    def valid_set(cls, value: str | None) -> str | None:
        return _well_formed_moment(value)

    @field_validator("skip")
    @classmethod
    def valid_skip(cls, value: str | float | None) -> str | float | None:
        try:
            if value is not None:
                chat_clock.parse_skip(value)
        except chat_clock.OutOfRange:
            pass  # well-formed: refused in the transaction (409)
        return value


# ---- decisions, in the writer's transaction ----------------------------------------------------


Action = Literal["rename", "archive", "restore"]


@dataclass(frozen=True)
class Change:
    """What a user asked for: an action on a chat (a rename with its title)."""

    action: Action
    chat_id: str
    title: str = ""


def _decide(chat: dict[str, Any], change: Change) -> EventPayload | None:
    """The event a change makes, None when it would change nothing."""
    cid = chat["chat_id"]
    if change.action == "archive":
        return None if chat["archived"] else ChatArchived(chat_id=cid)
    if change.action == "restore":
        return ChatRestored(chat_id=cid) if chat["archived"] else None
    if change.title == chat["title"]:
        return None
    return ChatRenamed(chat_id=cid, title=change.title, previous=chat["title"])


def _apply(tx: WriteTx, change: Change) -> tuple[dict[str, Any], str | None]:
    # Read, decide and append in one transaction: no other tab interleaves.
    chat = tx.read(chat_queries.get_chat, change.chat_id)
    if chat is None:
        raise Refused(404, f"unknown chat {change.chat_id!r}")
    payload = _decide(chat, change)
    if payload is None:
        return chat, None
    stored = tx.append(
        [NewEvent(payload=payload, stream_id=f"chat:{chat['chat_id']}", actor="user")]
    )
    after = tx.read(chat_queries.get_chat, change.chat_id)
    assert after is not None
    return after, stored[0].event_id


async def apply_change(engine: Engine, change: Change) -> ChatChange:
    """Make a change (raises Refused, having written nothing)."""
    chat, event_id = await engine.store.transact(lambda tx: _apply(tx, change))
    return ChatChange(chat=ChatItem(**chat), event_id=event_id)


def _start(tx: WriteTx, started: ChatStarted, chat_time: str | None = None) -> dict[str, Any]:
    if tx.read(queries.get_persona, started.persona_id) is None:
        raise Refused(404, f"unknown persona_id {started.persona_id!r}")
    stream = f"chat:{started.chat_id}"
    if chat_time is None:
        tx.append([NewEvent(payload=started, stream_id=stream, actor="user")])
    else:
        # Started at an in-story time: chat.started already carries it, and the clock's
        # offset is set in the same transaction.
        try:
            at_start = chat_clock.parse_moment(chat_time)
        except chat_clock.OutOfRange as exc:
            raise Refused(409, str(exc)) from None
        clock = chat_clock.start(started.chat_id, tx.wall_time, at_start)
        at = clock.chat_time
        tx.append(
            [
                NewEvent(payload=started, stream_id=stream, actor="user", chat_time=at),
                NewEvent(payload=clock, stream_id=stream, actor="user", chat_time=at),
            ]
        )
    chat = tx.read(chat_queries.get_chat, started.chat_id)
    assert chat is not None
    return chat


def _owned_clock(conn: sqlite3.Connection, chat_id: str, user_id: str) -> dict[str, Any]:
    """The chat's clock row (Refused: 404 unknown, 409 another user's)."""
    row = chat_queries.chat_clock(conn, chat_id)
    if row is None:
        raise Refused(404, f"unknown chat {chat_id!r}")
    if row["user_id"] != user_id:
        raise Refused(409, f"chat {chat_id!r} belongs to another user")
    return row


def _move_clock(tx: WriteTx, chat_id: str, move: ClockMove) -> ChatClock:
    # Read the offset, decide and append in one transaction: the next turn's events
    # (their chat_time) see the moved clock, never a half-moved one.
    row = _owned_clock(tx.conn, chat_id, move.user_id)
    offset = row["clock_offset_s"]
    try:
        if move.set_ is not None:
            to = chat_clock.parse_moment(move.set_)
            event = chat_clock.move(chat_id, tx.wall_time, offset, to=to)
        else:
            assert move.skip is not None
            skip_s = chat_clock.parse_skip(move.skip)
            if skip_s == 0:  # nothing to move: nothing written
                now = chat_clock.shifted(tx.wall_time, offset)
                return ChatClock(chat_id=chat_id, chat_time=now, offset_s=offset)
            event = chat_clock.move(chat_id, tx.wall_time, offset, skip_s=skip_s)
    except chat_clock.OutOfRange as exc:
        # Well-formed, but not from where this chat's clock stands.
        raise Refused(409, str(exc)) from None
    except ValueError as exc:
        raise Refused(422, str(exc)) from None
    at = event.chat_time
    tx.append([NewEvent(payload=event, stream_id=f"chat:{chat_id}", actor="user", chat_time=at)])
    return ChatClock(chat_id=chat_id, chat_time=event.chat_time, offset_s=event.offset_s)


async def read_clock(engine: Engine, chat_id: str, user_id: str) -> ChatClock:
    """A chat's clock now (raises Refused)."""
    row = await engine.store.read(_owned_clock, chat_id, user_id)
    now = chat_clock.shifted(iso(engine.store.clock.now()), row["clock_offset_s"])
    return ChatClock(chat_id=chat_id, chat_time=now, offset_s=row["clock_offset_s"])


# ---- JSON API ---------------------------------------------------------------------------------

_AUTH = AUTH
_WRITE = write_responses("Unknown chat", "Invalid chat id or title")


@router.get(
    "/persona/chats",
    response_model=ChatList,
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "Unknown persona"},
        422: {"model": ErrorBody, "description": "Invalid filters"},
    },
)
async def list_chats(
    engine: EngineDep,
    persona_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, max_length=128, description="default persona")
    ] = None,
    archived: Annotated[bool, Query(description="the archived chats instead")] = False,
    q: Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_CHARS,
            description="words, all in the title or all in one message (as word prefixes)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Any:
    """A persona's chats, most recently active first, with their last message's snippet."""
    pid = persona_id or engine.default_persona_id
    if pid is None or await engine.store.read(queries.get_persona, pid) is None:
        return JSONResponse(status_code=404, content={"error": f"unknown persona_id {pid!r}"})
    total, rows = await engine.store.read(chat_queries.list_chats, pid, archived, q, limit, offset)
    items = [ChatItem(**r) for r in rows]
    return ChatList(persona_id=pid, total=total, limit=limit, offset=offset, items=items)


@router.post(
    "/persona/chats",
    response_model=ChatItem,
    status_code=201,
    responses={
        **_WRITE,
        404: {"model": ErrorBody, "description": "Unknown persona"},
        409: {"model": ErrorBody, "description": "chat_time is outside the years 1 to 9999 in UTC"},
    },
)
async def create_chat(body: NewChat, engine: EngineDep) -> Any:
    """Start an empty chat (`chat.started`); send its id as `session_id` to talk in it."""
    pid = body.persona_id or engine.default_persona_id
    if not pid:
        return JSONResponse(status_code=404, content={"error": "no persona_id and no default"})
    started = ChatStarted(
        chat_id=new_session_id(),
        persona_id=pid,
        user_id=body.user_id,
        title=body.title or NEW_CHAT_TITLE,
    )
    try:
        chat = await engine.store.transact(lambda tx: _start(tx, started, body.chat_time))
    except Refused as exc:
        return refused(exc)
    return ChatItem(**chat)


@router.get(
    "/persona/chats/{chat_id}",
    response_model=ChatItem,
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "Unknown chat"},
        422: {"model": ErrorBody, "description": "Invalid chat id"},
    },
)
async def get_chat(chat_id: ChatId, engine: EngineDep) -> Any:
    """One chat, archived or not."""
    row = await engine.store.read(chat_queries.get_chat, chat_id)
    if row is None:
        return JSONResponse(status_code=404, content={"error": f"unknown chat {chat_id!r}"})
    return ChatItem(**row)


@router.patch("/persona/chats/{chat_id}", response_model=ChatChange, responses=_WRITE)
async def rename_chat(chat_id: ChatId, body: ChatTitle, engine: EngineDep) -> Any:
    """Rename a chat (`chat.renamed`, the previous title kept in the log)."""
    try:
        return await apply_change(engine, Change("rename", chat_id, body.title))
    except Refused as exc:
        return refused(exc)


@router.post("/persona/chats/{chat_id}/archive", response_model=ChatChange, responses=_WRITE)
async def archive_chat(chat_id: ChatId, engine: EngineDep) -> Any:
    """Archive a chat (`chat.archived`): hidden from the list, every turn kept."""
    try:
        return await apply_change(engine, Change("archive", chat_id))
    except Refused as exc:
        return refused(exc)


@router.post("/persona/chats/{chat_id}/restore", response_model=ChatChange, responses=_WRITE)
async def restore_chat(chat_id: ChatId, engine: EngineDep) -> Any:
    """Bring an archived chat back into the list (`chat.restored`)."""
    try:
        return await apply_change(engine, Change("restore", chat_id))
    except Refused as exc:
        return refused(exc)


_CLOCK = write_responses(
    "Unknown chat",
    "Invalid chat id, time or skip",
    "The chat belongs to another user, or the move would leave the years 1 to 9999",
)


@router.get(
    "/persona/chats/{chat_id}/clock",
    response_model=ChatClock,
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "Unknown chat"},
        409: {"model": ErrorBody, "description": "The chat belongs to another user"},
        422: {"model": ErrorBody, "description": "Invalid chat id"},
    },
)
async def get_clock(
    chat_id: ChatId,
    engine: EngineDep,
    user_id: Annotated[str, Query(pattern=ID_PATTERN, max_length=128)] = "local",
) -> Any:
    """The chat's clock: its own time now (wall time plus its offset)."""
    try:
        return await read_clock(engine, chat_id, user_id)
    except Refused as exc:
        return refused(exc)


@router.post("/persona/chats/{chat_id}/clock", response_model=ChatClock, responses=_CLOCK)
async def move_clock(chat_id: ChatId, body: ClockMove, engine: EngineDep) -> Any:
    """Set the chat's clock to a time or skip it (`chat.clock_set`); it runs on from there.

    An earlier time is allowed (a flashback). The chat's later events, memories included,
    carry the moved time; recency in retrieval counts on it.
    """
    try:
        return await engine.store.transact(lambda tx: _move_clock(tx, chat_id, body))
    except Refused as exc:
        return refused(exc)


# ---- the rail's forms -------------------------------------------------------------------------


def rail_url(session_id: str, filters: dict[str, str]) -> str:
    """The chat page of `session_id` with the rail's filters (empty ones left out)."""
    query = {k: v for k, v in filters.items() if v and k in RAIL_FILTERS}
    return f"/chats/{session_id}" + (f"?{urlencode(query)}" if query else "")


def back_to(form: dict[str, str], chat_id: str) -> str:
    """The chat page the form was on (the chat itself if not said), with its rail filters."""
    page = form.get("page", "")
    sent = dict(parse_qsl(form.get("back", ""), keep_blank_values=False))
    return rail_url(page if valid_id(page) else chat_id, sent)


async def _form_action(request: Request, engine: Engine, action: Action, chat_id: str) -> Response:
    if not valid_id(chat_id):
        return error_page(request, 422, "Invalid id", f"{chat_id!r} is not a valid chat id.")
    try:
        form = await read_form(request, MAX_FORM_BYTES)
        title = ""
        if action == "rename":
            try:
                title = ChatTitle(title=form.get("title", "")).title
            except ValidationError as exc:
                raise FormError(422, describe(exc)) from None
        await apply_change(engine, Change(action, chat_id, title))
    except FormError as exc:
        return error_page(request, exc.status, "Not saved", "; ".join(exc.errors))
    except Refused as exc:
        return error_page(request, exc.status, "Not changed", str(exc))
    return RedirectResponse(back_to(form, chat_id), status_code=303)


@router.post("/chats/{chat_id}/rename", include_in_schema=False)
async def rename_form(request: Request, chat_id: str, engine: EngineDep) -> Response:
    """The rail's rename form: rename, then back to the page (303)."""
    return await _form_action(request, engine, "rename", chat_id)


@router.post("/chats/{chat_id}/archive", include_in_schema=False)
async def archive_form(request: Request, chat_id: str, engine: EngineDep) -> Response:
    """The rail's archive button: archive, then back to the page (303)."""
    return await _form_action(request, engine, "archive", chat_id)


@router.post("/chats/{chat_id}/restore", include_in_schema=False)
async def restore_form(request: Request, chat_id: str, engine: EngineDep) -> Response:
    """The archived view's restore button: restore, then back to the page (303)."""
    return await _form_action(request, engine, "restore", chat_id)


@router.get("/chats/{chat_id}/clock", include_in_schema=False, response_class=HTMLResponse)
async def clock_fragment(request: Request, chat_id: str, engine: EngineDep) -> Response:
    """The drawer's clock line (an HTMX fragment): the chat's time now."""
    if not valid_id(chat_id):
        return error_page(request, 422, "Invalid id", f"{chat_id!r} is not a valid chat id.")
    try:
        clock: ChatClock | None = await read_clock(engine, chat_id, PAGE_USER)
    except Refused as exc:
        if exc.status != 404:
            return error_page(request, exc.status, "No clock", str(exc))
        clock = None  # a chat not started yet: its clock starts with it
    return templates.TemplateResponse(request, CLOCK_FRAGMENT, {"clock": clock})


@router.post("/chats/{chat_id}/clock", include_in_schema=False)
async def clock_form(request: Request, chat_id: str, engine: EngineDep) -> Response:
    """The drawer's clock form: set or skip, then back to the page (303)."""
    if not valid_id(chat_id):
        return error_page(request, 422, "Invalid id", f"{chat_id!r} is not a valid chat id.")
    try:
        form = await read_form(request, MAX_FORM_BYTES)
        fields = {k: form[k].strip() for k in ("set", "skip") if form.get(k, "").strip()}
        try:
            move = ClockMove.model_validate(fields)
        except ValidationError as exc:
            raise FormError(422, describe(exc)) from None
        await engine.store.transact(lambda tx: _move_clock(tx, chat_id, move))
    except FormError as exc:
        return error_page(request, exc.status, "Clock not moved", "; ".join(exc.errors))
    except Refused as exc:
        return error_page(request, exc.status, "Clock not moved", str(exc))
    return RedirectResponse(back_to(form, chat_id), status_code=303)
