"""The memory screen and its JSON API: list, search, edit, pin, unpin and delete memories.

Every change is an event on the persona's stream (`memory.edited`, `memory.pinned`,
`memory.deleted`, actor `user`), decided and appended in one writer transaction, so two
edits never claim the same revision. Nothing is ever removed: an edit is a new version, a
deletion a tombstone that retrieval skips and a rebuild keeps. A change that would change
nothing (pinning a pinned memory, deleting a deleted one, saving the same words) answers
200 with `event_id: null` and writes nothing. The core memory (the persona's genesis) is
owned by the persona file: it is listed, never changed here (409).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from persona.controls import CONTROL_CLASS, first_control
from persona.engine import Engine
from persona.events.base import EventPayload
from persona.events.memory import MemoryDeleted, MemoryEdited, MemoryPinned, Tier, Utterance
from persona.storage import memory_queries, queries
from persona.storage.eventlog import NewEvent
from persona.storage.store import WriteTx
from persona.web.changes import AUTH, Refused, read_form, refused, write_responses
from persona.web.deps import EngineDep
from persona.web.pages import FormError, describe, error_page, valid_id
from persona.web.schemas import ID_PATTERN, MESSAGE_PATTERN, ErrorBody
from persona.web.templating import templates

router = APIRouter()

MAX_CONTENT_CHARS = 4000
MAX_REASON_CHARS = 500
MAX_QUERY_CHARS = 200
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_OFFSET = 1_000_000
# Memory ids: an id's characters, room for a prefix ("ep:", "core:") before a 128-char id.
MEMORY_ID_PATTERN = r"^[A-Za-z0-9_:.\-]{1,200}$"
REASON_PATTERN = rf"^[^{CONTROL_CLASS}]*$"
# A urlencoded form of the longest edit, every character percent-encoded UTF-8, and a reason.
MAX_FORM_BYTES = 16 * (MAX_CONTENT_CHARS + MAX_REASON_CHARS) + 4096
# The filters a page keeps when a form sends the browser back to it.
PAGE_FILTERS = ("persona_id", "tier", "q", "include_deleted", "offset")

MemoryId = Annotated[str, Path(pattern=MEMORY_ID_PATTERN, max_length=200)]
_MEMORY_ID = re.compile(MEMORY_ID_PATTERN)


def valid_memory_id(value: str) -> bool:
    """Whether a path value is a well-formed memory id (fullmatch: no trailing newline)."""
    return _MEMORY_ID.fullmatch(value) is not None


def _no_control(field: str, value: Any) -> Any:
    # Before the string check, which would refuse a lone surrogate more vaguely.
    if isinstance(value, str) and (found := first_control(value)) is not None:
        position, char = found
        raise ValueError(
            f"{field} contains control character U+{ord(char):04X} at position {position}"
        )
    return value


# ---- bodies -----------------------------------------------------------------------------------


class MemoryItem(BaseModel):
    """One memory as stored now (its latest version)."""

    memory_id: str
    persona_id: str
    tier: Tier = Field(description="the tier it counts as now: L3 while pinned")
    base_tier: Tier = Field(description="the tier it was written in (unpinning returns to it)")
    kind: str = Field(description="exchange, utterance, fact, digest, belief or core")
    content: str
    said: list[Utterance] = Field(description="who said what (empty once edited)")
    importance: float
    importance_score: int | None
    chat_id: str | None
    turn_id: str | None = Field(description="the turn that wrote it (null for core)")
    trace_id: str | None
    trace_url: str | None = Field(description="/persona/traces/{trace_id}: the turn's events")
    created_at: str
    entities: list[str]
    pinned: bool
    tombstone: bool = Field(description="deleted: never retrieved again")
    version: int = Field(description="1, then one more for every edit")
    consolidated_into: str | None
    invalid_at: str | None = Field(description="when a later fact superseded it")
    access_count: int
    last_accessed: str | None


class MemoryList(BaseModel):
    """A page of a persona's memories, newest first."""

    persona_id: str
    total: int = Field(description="how many match the filters")
    limit: int
    offset: int
    items: list[MemoryItem]


class MemoryChange(BaseModel):
    """A memory after a change; `event_id` null when there was nothing to change."""

    memory: MemoryItem
    event_id: str | None


class MemoryEdit(BaseModel):
    """New words for a memory (its next version)."""

    model_config = ConfigDict(extra="forbid")

    content: Annotated[
        StrictStr,
        Field(
            min_length=1,
            max_length=MAX_CONTENT_CHARS,
            json_schema_extra={"pattern": MESSAGE_PATTERN},
        ),
    ]
    reason: Annotated[
        StrictStr, Field(max_length=MAX_REASON_CHARS, json_schema_extra={"pattern": REASON_PATTERN})
    ] = ""

    @field_validator("content", "reason", mode="before")
    @classmethod
    def no_control_characters(cls, value: Any, info: Any) -> Any:
        """Refuse what a page cannot show: control characters and lone surrogates."""
        return _no_control(info.field_name, value)

    @field_validator("content")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content must not be blank")
        return value


def _item(row: dict[str, Any]) -> MemoryItem:
    trace = row["trace_id"]
    return MemoryItem(**row, trace_url=f"/persona/traces/{trace}" if trace else None)


# ---- decisions, in the writer's transaction ----------------------------------------------------


Action = Literal["edit", "pin", "unpin", "delete"]


@dataclass(frozen=True)
class Change:
    """What a user asked for: an action on a memory, with its words or reason."""

    action: Action
    memory_id: str
    content: str = ""
    reason: str = ""


def _decide(memory: dict[str, Any], change: Change) -> EventPayload | None:
    """The event a change makes, None when it would change nothing (raises Refused)."""
    mid, pid = memory["memory_id"], memory["persona_id"]
    if memory["kind"] == "core":
        raise Refused(409, "the core memory belongs to the persona file: change it there")
    if memory["tombstone"]:
        if change.action == "delete":
            return None  # deleting twice: already done
        raise Refused(409, f"memory {mid!r} is deleted")
    if change.action == "delete":
        return MemoryDeleted(memory_id=mid, persona_id=pid, reason=change.reason)
    if change.action in ("pin", "unpin"):
        pinned = change.action == "pin"
        if memory["pinned"] == pinned:
            return None
        return MemoryPinned(memory_id=mid, persona_id=pid, pinned=pinned)
    if change.content == memory["content"]:
        return None
    revision = memory["version"] + 1
    return MemoryEdited(
        memory_id=mid,
        persona_id=pid,
        content=change.content,
        revision=revision,
        reason=change.reason,
    )


def _apply(tx: WriteTx, change: Change) -> tuple[dict[str, Any], str | None]:
    # Read, decide and append in one transaction: no turn or other tab interleaves.
    memory = tx.read(memory_queries.get_memory, change.memory_id)
    if memory is None:
        raise Refused(404, f"unknown memory {change.memory_id!r}")
    if not memory["active"]:
        raise Refused(
            409,
            f"memory {change.memory_id!r} was written on a branch that is not active:"
            " select that branch of its chat first",
        )
    payload = _decide(memory, change)
    if payload is None:
        return memory, None
    stream = f"persona:{memory['persona_id']}"
    stored = tx.append([NewEvent(payload=payload, stream_id=stream, actor="user")])
    after = tx.read(memory_queries.get_memory, change.memory_id)
    assert after is not None
    return after, stored[0].event_id


async def apply_change(engine: Engine, change: Change) -> MemoryChange:
    """Make a change (raises Refused, having written nothing)."""
    memory, event_id = await engine.store.transact(lambda tx: _apply(tx, change))
    return MemoryChange(memory=_item(memory), event_id=event_id)


# ---- JSON API ---------------------------------------------------------------------------------

_AUTH = AUTH
_WRITE = write_responses(
    "Unknown memory",
    "Invalid memory id or field values",
    "The memory is deleted, or is the core memory",
)


@router.get(
    "/persona/memories",
    response_model=MemoryList,
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "Unknown persona"},
        422: {"model": ErrorBody, "description": "Invalid filters"},
    },
)
async def list_memories(
    engine: EngineDep,
    persona_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, max_length=128, description="default persona")
    ] = None,
    tier: Annotated[Tier | None, Query(description="L3 includes pinned memories")] = None,
    q: Annotated[
        str | None,
        Query(max_length=MAX_QUERY_CHARS, description="words, all present (as word prefixes)"),
    ] = None,
    include_deleted: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Any:
    """A persona's memories, newest first: filtered by tier, searched by words."""
    pid = persona_id or engine.default_persona_id
    if pid is None or await engine.store.read(queries.get_persona, pid) is None:
        return JSONResponse(status_code=404, content={"error": f"unknown persona_id {pid!r}"})
    total, rows = await engine.store.read(
        memory_queries.list_memories, pid, tier, q, include_deleted, limit, offset
    )
    items = [_item(r) for r in rows]
    return MemoryList(persona_id=pid, total=total, limit=limit, offset=offset, items=items)


@router.get(
    "/persona/memories/{memory_id}",
    response_model=MemoryItem,
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "Unknown memory"},
        422: {"model": ErrorBody, "description": "Invalid memory id"},
    },
)
async def get_memory(memory_id: MemoryId, engine: EngineDep) -> Any:
    """One memory, deleted ones included (`tombstone` says so)."""
    row = await engine.store.read(memory_queries.get_memory, memory_id)
    if row is None:
        return JSONResponse(status_code=404, content={"error": f"unknown memory {memory_id!r}"})
    return _item(row)


@router.patch("/persona/memories/{memory_id}", response_model=MemoryChange, responses=_WRITE)
async def edit_memory(memory_id: MemoryId, body: MemoryEdit, engine: EngineDep) -> Any:
    """Correct a memory: `memory.edited`, its next version (the old words stay in the log)."""
    try:
        return await apply_change(engine, Change("edit", memory_id, body.content, body.reason))
    except Refused as exc:
        return refused(exc)


@router.post("/persona/memories/{memory_id}/pin", response_model=MemoryChange, responses=_WRITE)
async def pin_memory(memory_id: MemoryId, engine: EngineDep) -> Any:
    """Pin a memory to L3: in every later prompt of a user who may see it."""
    try:
        return await apply_change(engine, Change("pin", memory_id))
    except Refused as exc:
        return refused(exc)


@router.post("/persona/memories/{memory_id}/unpin", response_model=MemoryChange, responses=_WRITE)
async def unpin_memory(memory_id: MemoryId, engine: EngineDep) -> Any:
    """Unpin a memory: back to its own tier, retrieved only when relevant."""
    try:
        return await apply_change(engine, Change("unpin", memory_id))
    except Refused as exc:
        return refused(exc)


@router.delete("/persona/memories/{memory_id}", response_model=MemoryChange, responses=_WRITE)
async def delete_memory(
    memory_id: MemoryId,
    engine: EngineDep,
    reason: Annotated[
        str, Query(max_length=MAX_REASON_CHARS, pattern=REASON_PATTERN, description="recorded")
    ] = "",
) -> Any:
    """Delete a memory: a tombstone, never retrieved again, kept by `persona rebuild`.

    Deleting a deleted memory answers 200 again and writes nothing.
    """
    try:
        return await apply_change(engine, Change("delete", memory_id, reason=reason))
    except Refused as exc:
        return refused(exc)


# ---- the page ---------------------------------------------------------------------------------

PAGE = "memory.html"


def page_url(filters: dict[str, str], **changed: str) -> str:
    """/memory with these filters (empty ones left out)."""
    query = {k: v for k, v in {**filters, **changed}.items() if v and k in PAGE_FILTERS}
    return "/memory" + (f"?{urlencode(query)}" if query else "")


def page_view(
    conn: sqlite3.Connection,
    persona_id: str,
    tier: str | None,
    q: str,
    include_deleted: bool,
    offset: int,
) -> dict[str, Any] | None:
    """Everything the memory page shows; None when the persona does not exist."""
    persona = queries.get_persona(conn, persona_id)
    if persona is None:
        return None
    total, rows = memory_queries.list_memories(
        conn, persona_id, tier, q, include_deleted, PAGE_SIZE, offset
    )
    return {
        "persona": persona,
        "personas": queries.list_personas(conn),
        "total": total,
        "memories": [_item(r).model_dump() for r in rows],
    }


def _filters(request: Request) -> dict[str, str] | str:
    """The page's filters from its query string, or what is wrong with them."""
    params = request.query_params
    filters = {k: params.get(k, "") for k in PAGE_FILTERS}
    if filters["persona_id"] and not valid_id(filters["persona_id"]):
        return f"{filters['persona_id']!r} is not a valid persona id."
    if filters["tier"] not in ("", "L1", "L2", "L3"):
        return "tier is L1, L2 or L3."
    if len(filters["q"]) > MAX_QUERY_CHARS:
        return f"The search is longer than {MAX_QUERY_CHARS} characters."
    if filters["offset"] and not (
        filters["offset"].isdigit() and int(filters["offset"]) <= MAX_OFFSET
    ):
        return "offset is a whole number."
    filters["include_deleted"] = "1" if filters["include_deleted"] else ""
    return filters


@router.api_route("/memory", methods=["GET", "HEAD"], include_in_schema=False)
async def memory_page(request: Request, engine: EngineDep) -> Response:
    """The memory screen: search, filter by tier, edit, pin, unpin and delete."""
    filters = _filters(request)
    if isinstance(filters, str):
        return error_page(request, 422, "Invalid filter", filters)
    pid = filters["persona_id"] or engine.default_persona_id
    offset = int(filters["offset"] or 0)
    view = await engine.store.read(
        page_view,
        pid,
        filters["tier"] or None,
        filters["q"],
        bool(filters["include_deleted"]),
        offset,
    )
    if view is None:
        return error_page(request, 404, "Unknown persona", f"No persona {pid!r}.")
    back = page_url(filters)
    pages = {
        "previous": page_url(filters, offset=str(max(0, offset - PAGE_SIZE))) if offset else None,
        "next": page_url(filters, offset=str(offset + PAGE_SIZE))
        if offset + PAGE_SIZE < view["total"]
        else None,
    }
    context = {
        **view,
        "filters": filters,
        "back": back.removeprefix("/memory").removeprefix("?"),
        "pages": pages,
        "tiers": ("L1", "L2", "L3"),
        "max_content": MAX_CONTENT_CHARS,
        "max_reason": MAX_REASON_CHARS,
    }
    return templates.TemplateResponse(request, PAGE, context)


def back_to(form: dict[str, str], memory_id: str) -> str:
    """The page the form came from (only its known filters), at the memory's entry."""
    sent = dict(parse_qsl(form.get("back", ""), keep_blank_values=False))
    return page_url({k: sent.get(k, "") for k in PAGE_FILTERS}) + f"#m-{memory_id}"


def _change_from_form(action: Action, memory_id: str, form: dict[str, str]) -> Change:
    if action != "edit":
        reason = form.get("reason", "")
        if len(reason) > MAX_REASON_CHARS or first_control(reason):
            raise FormError(422, [f"reason: at most {MAX_REASON_CHARS} characters, no controls"])
        return Change(action, memory_id, reason=reason)
    # The browser sends a textarea's line breaks as CR LF: store them as typed.
    content = form.get("content", "").replace("\r\n", "\n")
    try:
        edit = MemoryEdit(content=content, reason=form.get("reason", ""))
    except ValidationError as exc:
        raise FormError(422, describe(exc)) from None
    return Change("edit", memory_id, edit.content, edit.reason)


@router.post("/memory/{memory_id}/{action}", include_in_schema=False)
async def memory_form(request: Request, memory_id: str, action: str, engine: EngineDep) -> Response:
    """A form of the memory page: make the change, then back to the page (303)."""
    if action not in ("edit", "pin", "unpin", "delete"):
        return error_page(request, 404, "Not found", f"No memory action {action!r}.")
    if not valid_memory_id(memory_id):
        return error_page(request, 422, "Invalid id", f"{memory_id!r} is not a valid memory id.")
    try:
        form = await read_form(request, MAX_FORM_BYTES)
        change = _change_from_form(action, memory_id, form)  # type: ignore[arg-type]
        await apply_change(engine, change)
    except FormError as exc:
        return error_page(request, exc.status, "Not saved", "; ".join(exc.errors))
    except Refused as exc:
        return error_page(request, exc.status, "Not changed", str(exc))
    return RedirectResponse(back_to(form, memory_id), status_code=303)
