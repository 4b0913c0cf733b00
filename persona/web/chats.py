"""A persona's chats: list, search, create, rename, archive and restore (JSON and the rail).

Every change is an event on the chat's stream (`chat.started`, `chat.renamed`,
`chat.archived`, `chat.restored`, actor `user`), decided and appended in one writer
transaction. Nothing is removed: an archived chat leaves the list, keeps every turn and
comes back when restored. A change that would change nothing (the same title, archiving an
archived chat) answers 200 with `event_id: null` and writes nothing; a refused one (unknown
chat 404, invalid title 422) writes nothing either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

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
    created_at: str
    updated_at: str = Field(description="its last turn (or its creation): the list's order")
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

    @field_validator("title")
    @classmethod
    def valid_title(cls, value: str | None) -> str | None:
        return None if value is None else clean_title(value)


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


def _start(tx: WriteTx, started: ChatStarted) -> dict[str, Any]:
    if tx.read(queries.get_persona, started.persona_id) is None:
        raise Refused(404, f"unknown persona_id {started.persona_id!r}")
    tx.append([NewEvent(payload=started, stream_id=f"chat:{started.chat_id}", actor="user")])
    chat = tx.read(chat_queries.get_chat, started.chat_id)
    assert chat is not None
    return chat


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
    responses={**_WRITE, 404: {"model": ErrorBody, "description": "Unknown persona"}},
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
        chat = await engine.store.transact(lambda tx: _start(tx, started))
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
