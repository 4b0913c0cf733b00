"""A chat's tree of turns over HTTP: read it, regenerate or edit any turn, rewind (with a
dry run and an undo), choose a sibling branch, stop a streaming reply.

Every move is an event on the chat's stream (persona/events/tree.py), decided and appended
in one writer transaction, then announced to every open tab of the chat as a `tree` event
of its stream. Unknown ids answer 404, a turn of another chat 409, a chat with a reply
waiting or streaming 409 (stop it first); nothing is written on any error.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette import EventSourceResponse

from persona.engine import Engine
from persona.errors import ChatBusy, NothingToStop
from persona.events import EventPayload
from persona.events.tree import BranchSelected, ChatRewound, RewindUndone
from persona.pipeline.broadcast import TurnEvent
from persona.pipeline.context import TurnRequest, Variant
from persona.projector.branches import LEAF_STATUSES, path_to
from persona.storage import queries
from persona.storage.eventlog import NewEvent
from persona.storage.store import WriteTx
from persona.web.changes import AUTH, Refused, refused
from persona.web.deps import EngineDep
from persona.web.pages import describe
from persona.web.schemas import (
    ID_PATTERN,
    TURN_STREAM_EVENT,
    ChatRequest,
    ChatResponse,
    ErrorBody,
    GenParams,
    Identifier,
    MessageText,
    Reward,
)
from persona.web.turns import build_request, turn_stream, whole_result

router = APIRouter()

ChatId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
TurnId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
_SSE = "text/event-stream"
# The tree operations' documented errors.
_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH,
    400: {"model": ErrorBody, "description": "Invalid JSON or UTF-8"},
    403: {"model": ErrorBody, "description": "Sent from another site's page (CSRF guard)"},
    404: {"model": ErrorBody, "description": "Unknown chat or turn"},
    409: {
        "model": ErrorBody,
        "description": "The turn is another chat's, the chat has a reply waiting or streaming,"
        " or there is nothing to undo or stop",
    },
    413: {"model": ErrorBody, "description": "The body is over the size cap"},
    422: {"model": ErrorBody, "description": "Invalid ids or fields"},
}


# ---- bodies ---------------------------------------------------------------------------------


class TreeTurn(BaseModel):
    """One turn in its chat's tree."""

    turn_id: str
    parent_turn_id: str | None = Field(description="None: a first turn (child of the root)")
    depth: int | None = Field(description="None while queued")
    status: str = Field(description="queued | started | completed | stopped | failed")
    active: bool = Field(description="on the active path (root to leaf)")
    origin: str = Field(description="message | regenerate | edit")
    variant_of: str | None = Field(description="the turn it regenerated or edited")
    truncated: bool = Field(description="stopped: its reply is what streamed before the stop")
    user_message: str
    reply: str | None
    error: str | None
    siblings: list[str] = Field(
        description="the turns with its parent that ended with a reply, in order"
    )
    sibling_index: int = Field(description="its place among them, from 1 (0: not one)")


class ChatTree(BaseModel):
    """Every turn of a chat with its place in the tree; the leaf ends the active path."""

    chat_id: str
    leaf_turn_id: str | None = Field(description="None: the root (no turn on the path)")
    can_undo_rewind: bool = Field(description="the last move was a rewind")
    turns: list[TreeTurn]


class VariantBody(BaseModel):
    """Options for a regenerated turn."""

    model_config = ConfigDict(extra="forbid")

    reward_signal: Reward = 0.0
    gen: GenParams | None = None


class EditBody(VariantBody):
    """The edited message of a turn."""

    message: MessageText = Field(description="the new message (the rules of /persona/chat apply)")


class RewindBody(BaseModel):
    """Where to move the leaf."""

    model_config = ConfigDict(extra="forbid")

    turn_id: Identifier | None = Field(description="the new leaf; null: the root (no turns)")
    dry_run: bool = Field(default=False, description="only say what would leave the path")


class BranchBody(BaseModel):
    """A sibling to make active."""

    model_config = ConfigDict(extra="forbid")

    turn_id: Identifier = Field(description="the sibling; its newest leaf becomes the leaf")


class EdgeChange(BaseModel):
    """A relationship or fact edge as it is and as it would be (None: absent)."""

    edge_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class Impact(BaseModel):
    """What a move takes off the active path (and brings onto it)."""

    turns_leaving: list[dict[str, Any]] = Field(description="turn_id, user_message, reply")
    turns_entering: list[dict[str, Any]]
    memories_leaving: list[dict[str, Any]] = Field(description="memory_id, kind, content")
    memories_entering: list[dict[str, Any]]
    edges: list[EdgeChange] = Field(description="edges whose state changes")
    identity_changes: bool = Field(description="the persona's identity state changes")
    state_before: dict[str, Any] | None = Field(description="the leaf's chat state now")
    state_after: dict[str, Any] | None = Field(description="the new leaf's chat state")


class TreeMove(BaseModel):
    """A move of the leaf, done (or, for a dry run, not done)."""

    chat_id: str
    from_turn_id: str | None
    leaf_turn_id: str | None
    event_id: str | None = Field(description="None: a dry run, or nothing moved")
    dry_run: bool
    impact: Impact


class Stopped(BaseModel):
    """A stop was sent to the chat's streaming reply."""

    chat_id: str
    trace_id: str = Field(description="the stopped turn's trace")


# ---- decisions, in the writer's transaction ---------------------------------------------------


class _DryRun(Exception):
    """Carries a dry run's answer out of its transaction (which is rolled back)."""

    def __init__(self, move: TreeMove):
        super().__init__("dry run")
        self.move = move


def _chat(tx: WriteTx, chat_id: str) -> dict[str, Any]:
    chat = tx.read(queries.get_chat, chat_id)
    if chat is None:
        raise Refused(404, f"unknown chat {chat_id!r}")
    return chat


def _turn_of(tx: WriteTx, chat_id: str, turn_id: str) -> dict[str, Any]:
    turn = tx.read(queries.get_turn, turn_id)
    if turn is None:
        raise Refused(404, f"unknown turn {turn_id!r}")
    if turn["chat_id"] != chat_id:
        raise Refused(409, f"turn {turn_id!r} belongs to another chat")
    return turn


def _snapshot(tx: WriteTx, chat_id: str, persona_id: str) -> dict[str, Any]:
    """What a move can change, read before and after it (for the impact)."""

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        leaf = conn.execute(
            "SELECT head_turn_id FROM chats WHERE chat_id = ?", (chat_id,)
        ).fetchone()[0]
        turns = {
            r[0]: {"turn_id": r[0], "user_message": r[1], "reply": r[2]}
            for r in conn.execute(
                "SELECT turn_id, user_message, reply FROM turns WHERE chat_id = ? AND active = 1"
                " ORDER BY depth",
                (chat_id,),
            )
        }
        memories = {
            r[0]: {"memory_id": r[0], "kind": r[1], "content": r[2]}
            for r in conn.execute(
                "SELECT m.memory_id, m.kind, m.content FROM memory m JOIN turns t"
                " ON t.turn_id = m.turn_id WHERE t.chat_id = ? AND m.active = 1"
                " AND m.tombstone = 0 ORDER BY m.rowid",
                (chat_id,),
            )
        }
        cols = [
            "edge_id", "src", "rel", "dst", "weight", "evidence", "valid_from", "invalid_at",
        ]  # fmt: skip
        edges = {
            r[0]: dict(zip(cols, r, strict=True))
            for r in conn.execute(
                f"SELECT {', '.join(cols)} FROM edge WHERE persona_id = ?", (persona_id,)
            )
        }
        identity = conn.execute(
            "SELECT state FROM identity_state WHERE persona_id = ?", (persona_id,)
        ).fetchone()
        state = queries.path_state(conn, leaf)
        return {
            "leaf": leaf,
            "turns": turns,
            "memories": memories,
            "edges": edges,
            "identity": identity[0] if identity else None,
            "state": state.model_dump(mode="json") if state else None,
        }

    return tx.read(read)


def _impact(before: dict[str, Any], after: dict[str, Any]) -> Impact:
    def gone(kind: str, a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
        return [v for k, v in a[kind].items() if k not in b[kind]]

    edge_ids = sorted(set(before["edges"]) | set(after["edges"]))
    return Impact(
        turns_leaving=gone("turns", before, after),
        turns_entering=gone("turns", after, before),
        memories_leaving=gone("memories", before, after),
        memories_entering=gone("memories", after, before),
        edges=[
            EdgeChange(edge_id=e, before=before["edges"].get(e), after=after["edges"].get(e))
            for e in edge_ids
            if before["edges"].get(e) != after["edges"].get(e)
        ],
        identity_changes=before["identity"] != after["identity"],
        state_before=before["state"],
        state_after=after["state"],
    )


# Decides a move in the writer's transaction: its event, or None when nothing would move.
Decide = Callable[[WriteTx, dict[str, Any]], EventPayload | None]


def _move(tx: WriteTx, chat_id: str, decide: Decide, dry_run: bool) -> tuple[TreeMove, str | None]:
    """Decide a move, append it, measure its impact (a dry run rolls it all back)."""
    chat = _chat(tx, chat_id)
    before = _snapshot(tx, chat_id, chat["persona_id"])
    payload = decide(tx, chat)
    event_id = trace_id = None
    if payload is not None:
        trace_id = uuid.uuid4().hex
        stored = tx.append(
            [
                NewEvent(
                    payload=payload, stream_id=f"chat:{chat_id}", actor="user", trace_id=trace_id
                )
            ]
        )
        event_id = stored[0].event_id
    after = _snapshot(tx, chat_id, chat["persona_id"])
    move = TreeMove(
        chat_id=chat_id,
        from_turn_id=before["leaf"],
        leaf_turn_id=after["leaf"],
        event_id=None if dry_run else event_id,
        dry_run=dry_run,
        impact=_impact(before, after),
    )
    if dry_run:
        raise _DryRun(move)  # rolls the transaction back: nothing is written
    return move, trace_id


def _last_move(tx: WriteTx, chat_id: str) -> tuple[str, dict[str, Any]] | None:
    return tx.read(queries.last_move, chat_id)


def announce(engine: Engine, chat_id: str, op: str, leaf: str | None, trace_id: str) -> None:
    """Tell every open tab of the chat that its tree moved."""
    data = {"op": op, "session_id": chat_id, "leaf_turn_id": leaf}
    engine.broadcaster.publish(TurnEvent("tree", chat_id, trace_id, data))


# ---- JSON API ---------------------------------------------------------------------------------


def read_tree(conn: sqlite3.Connection, chat_id: str) -> ChatTree | None:
    """A chat's whole tree (None: unknown chat)."""
    chat = queries.get_chat(conn, chat_id)
    if chat is None:
        return None
    rows = queries.chat_tree(conn, chat_id)
    groups = queries.sibling_groups(conn, chat_id, {r["parent_turn_id"] for r in rows})
    turns = []
    for r in rows:
        group = groups.get(r["parent_turn_id"], [])
        index = group.index(r["turn_id"]) + 1 if r["turn_id"] in group else 0
        turns.append(
            TreeTurn(
                **{**r, "active": bool(r["active"]), "truncated": bool(r["truncated"])},
                siblings=group,
                sibling_index=index,
            )
        )
    return ChatTree(
        chat_id=chat_id, leaf_turn_id=chat["head_turn_id"], can_undo_rewind=False, turns=turns
    )


@router.get(
    "/persona/chats/{chat_id}/tree",
    response_model=ChatTree,
    responses={
        **AUTH,
        404: {"model": ErrorBody, "description": "Unknown chat"},
        422: {"model": ErrorBody, "description": "Invalid chat id"},
    },
)
async def get_tree(chat_id: ChatId, engine: EngineDep) -> Any:
    """Every turn of the chat with its parent, siblings and whether it is on the active
    path; the leaf ends that path."""
    tree = await engine.store.read(read_tree, chat_id)
    if tree is None:
        return JSONResponse(status_code=404, content={"error": f"unknown chat {chat_id!r}"})
    last = await engine.store.transact(lambda tx: _last_move(tx, chat_id))
    return tree.model_copy(update={"can_undo_rewind": bool(last and last[0] == "chat.rewound")})


@router.post("/persona/chats/{chat_id}/rewind", response_model=TreeMove, responses=_ERRORS)
async def rewind(chat_id: ChatId, body: RewindBody, engine: EngineDep) -> Any:
    """Move the leaf back to a turn of the active path, or to the root (`turn_id` null)
    (`chat.rewound`). Later turns stay in the tree, one branch choice away. With `dry_run`
    nothing is written: the answer says what would leave the path."""

    def decide(tx: WriteTx, chat: dict[str, Any]) -> EventPayload | None:
        target = body.turn_id
        if target is not None:
            turn = _turn_of(tx, chat_id, target)
            if turn["status"] not in LEAF_STATUSES:
                raise Refused(409, f"turn {target!r} has no reply to rewind to ({turn['status']})")
        if target == chat["head_turn_id"]:
            return None
        return ChatRewound(chat_id=chat_id, to_turn_id=target, from_turn_id=chat["head_turn_id"])

    return await _with_tx(engine, chat_id, "rewound", decide, body.dry_run)


@router.post("/persona/chats/{chat_id}/rewind/undo", response_model=TreeMove, responses=_ERRORS)
async def undo_rewind(chat_id: ChatId, engine: EngineDep) -> Any:
    """Undo the chat's last move if it was a rewind (`rewind.undone`): the leaf goes back
    to where the rewind found it. 409 when the last move was something else."""

    def decide(tx: WriteTx, chat: dict[str, Any]) -> EventPayload | None:
        last = _last_move(tx, chat_id)
        if last is None or last[0] != "chat.rewound":
            raise Refused(409, "nothing to undo: the chat's last move was not a rewind")
        return RewindUndone(
            chat_id=chat_id, to_turn_id=last[1]["from_turn_id"], from_turn_id=chat["head_turn_id"]
        )

    return await _with_tx(engine, chat_id, "rewind_undone", decide, False)


@router.post("/persona/chats/{chat_id}/branch", response_model=TreeMove, responses=_ERRORS)
async def select_branch(chat_id: ChatId, body: BranchBody, engine: EngineDep) -> Any:
    """Make a sibling's branch active (`branch.selected`): the leaf becomes the newest turn
    with a reply below it (the sibling itself if none)."""

    def decide(tx: WriteTx, chat: dict[str, Any]) -> EventPayload | None:
        turn = _turn_of(tx, chat_id, body.turn_id)
        if turn["status"] not in LEAF_STATUSES:
            raise Refused(409, f"turn {body.turn_id!r} has no reply ({turn['status']})")
        leaf = tx.read(queries.newest_leaf, body.turn_id)
        if body.turn_id in tx.read(path_to, chat["head_turn_id"]):
            return None  # already on the active path
        return BranchSelected(
            chat_id=chat_id, turn_id=body.turn_id, leaf_turn_id=leaf,
            from_turn_id=chat["head_turn_id"],
        )  # fmt: skip

    return await _with_tx(engine, chat_id, "branch_selected", decide, False)


async def _with_tx(engine: Engine, chat_id: str, op: str, decide: Decide, dry_run: bool) -> Any:
    if engine.runner.queued(chat_id) and not dry_run:
        return refused(
            Refused(409, f"chat {chat_id!r} has a reply waiting or streaming: stop it or wait")
        )
    try:
        move, trace_id = await engine.store.transact(lambda tx: _move(tx, chat_id, decide, dry_run))
    except _DryRun as exc:
        return exc.move
    except Refused as exc:
        return refused(exc)
    if move.event_id is not None and trace_id is not None:
        announce(engine, chat_id, op, move.leaf_turn_id, trace_id)
    return move


@router.post("/persona/chats/{chat_id}/stop", response_model=Stopped, responses=_ERRORS)
async def stop(chat_id: ChatId, engine: EngineDep) -> Any:
    """Stop the chat's streaming reply: the turn is stored as stopped, what streamed kept
    as its reply marked truncated, and becomes the leaf (regenerate it for another)."""
    if await engine.store.read(queries.get_chat, chat_id) is None:
        return JSONResponse(status_code=404, content={"error": f"unknown chat {chat_id!r}"})
    try:
        trace_id = engine.runner.stop(chat_id)
    except NothingToStop as exc:
        return JSONResponse(status_code=409, content={"error": str(exc)})
    return Stopped(chat_id=chat_id, trace_id=trace_id)


# ---- regenerate and edit ------------------------------------------------------------------------


async def variant_request(
    engine: Engine, chat_id: str, turn_id: str, body: VariantBody, message: str | None
) -> TurnRequest | JSONResponse:
    """A turn beside `turn_id` (its parent's child): checked before anything is written."""
    chat = await engine.store.read(queries.get_chat, chat_id)
    if chat is None:
        return JSONResponse(status_code=404, content={"error": f"unknown chat {chat_id!r}"})
    turn = await engine.store.read(queries.get_turn, turn_id)
    if turn is None:
        return JSONResponse(status_code=404, content={"error": f"unknown turn {turn_id!r}"})
    if turn["chat_id"] != chat_id:
        return JSONResponse(
            status_code=409, content={"error": f"turn {turn_id!r} belongs to another chat"}
        )
    if turn["status"] in ("queued", "started"):
        return JSONResponse(
            status_code=409, content={"error": f"turn {turn_id!r} has not ended: stop it first"}
        )
    if engine.runner.queued(chat_id):
        raise ChatBusy(f"chat {chat_id!r} has a reply waiting or streaming: stop it or wait")
    # The message passes the rules of /persona/chat (length, control characters).
    try:
        checked = ChatRequest(
            message=turn["user_message"] if message is None else message,
            session_id=chat_id,
            user_id=chat["user_id"],
            reward_signal=body.reward_signal,
            gen=body.gen,
        )
    except ValidationError as exc:
        return JSONResponse(status_code=422, content={"error": "; ".join(describe(exc))})
    request = await build_request(engine, checked)
    variant = Variant(
        kind="regenerate" if message is None else "edit",
        of_turn_id=turn_id,
        parent_turn_id=turn["parent_turn_id"],
        previous=turn["user_message"],
    )
    return dataclasses.replace(request, variant=variant)


_TURN_ERRORS = {**_ERRORS, 502: {"model": ErrorBody, "description": "The LLM failed"}}
_STREAM_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {_SSE: {"schema": TURN_STREAM_EVENT}},
        "description": "SSE: start, delta..., then done {reply, meta} or error, as"
        " /persona/chat/stream",
    }
}


def _announce_variant(engine: Engine, request: TurnRequest, trace_id: str) -> None:
    # Submitted: the leaf is at the variant's parent now (every tab shows that much).
    variant = request.variant
    assert variant is not None
    op = "regenerated" if variant.kind == "regenerate" else "edited"
    announce(engine, request.chat_id, op, variant.parent_turn_id, trace_id)


async def _whole(engine: Engine, request: TurnRequest) -> Any:
    handle = await engine.runner.submit(request)
    _announce_variant(engine, request, handle.trace_id)
    return await whole_result(handle)


@router.post(
    "/persona/chats/{chat_id}/turns/{turn_id}/regenerate",
    response_model=ChatResponse,
    responses=_TURN_ERRORS,
)
async def regenerate(
    chat_id: ChatId, turn_id: TurnId, engine: EngineDep, body: VariantBody | None = None
) -> Any:
    """Another reply to a turn's message, as a new sibling turn (`turn.regenerated`); its
    branch becomes active. Any turn that ended may be regenerated, not only the last."""
    request = await variant_request(engine, chat_id, turn_id, body or VariantBody(), None)
    if isinstance(request, JSONResponse):
        return request
    return await _whole(engine, request)


@router.post(
    "/persona/chats/{chat_id}/turns/{turn_id}/regenerate/stream",
    response_class=EventSourceResponse,
    responses={**_ERRORS, **_STREAM_OK},
)
async def regenerate_stream(
    chat_id: ChatId, turn_id: TurnId, engine: EngineDep, body: VariantBody | None = None
) -> Any:
    """`regenerate`, streamed as /persona/chat/stream streams a turn."""
    request = await variant_request(engine, chat_id, turn_id, body or VariantBody(), None)
    if isinstance(request, JSONResponse):
        return request
    return EventSourceResponse(await _streamed(engine, request), ping=15)


@router.post(
    "/persona/chats/{chat_id}/turns/{turn_id}/edit",
    response_model=ChatResponse,
    responses=_TURN_ERRORS,
)
async def edit(chat_id: ChatId, turn_id: TurnId, body: EditBody, engine: EngineDep) -> Any:
    """Edit a turn's message: a new sibling turn with the new message, answered anew
    (`turn.edited`); its branch becomes active."""
    request = await variant_request(engine, chat_id, turn_id, body, body.message)
    if isinstance(request, JSONResponse):
        return request
    return await _whole(engine, request)


@router.post(
    "/persona/chats/{chat_id}/turns/{turn_id}/edit/stream",
    response_class=EventSourceResponse,
    responses={**_ERRORS, **_STREAM_OK},
)
async def edit_stream(chat_id: ChatId, turn_id: TurnId, body: EditBody, engine: EngineDep) -> Any:
    """`edit`, streamed as /persona/chat/stream streams a turn."""
    request = await variant_request(engine, chat_id, turn_id, body, body.message)
    if isinstance(request, JSONResponse):
        return request
    return EventSourceResponse(await _streamed(engine, request), ping=15)


async def _streamed(engine: Engine, request: TurnRequest) -> Any:
    return await turn_stream(
        engine, request, on_submit=lambda h: _announce_variant(engine, request, h.trace_id)
    )
