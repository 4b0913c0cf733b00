"""Export a chat (JSONL of its events, or a Markdown transcript) and import a JSONL export.

The logic lives in `persona.chat_io`; these routes read, check the chat's owner, and
translate refusals into the API's error bodies. An import is validated whole before its
single write transaction: a refused file writes nothing.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from persona import chat_io
from persona.clock import iso
from persona.engine import Engine
from persona.storage import queries
from persona.storage.store import WriteTx
from persona.web.changes import AUTH, write_responses
from persona.web.deps import EngineDep
from persona.web.schemas import ID_PATTERN, ErrorBody

router = APIRouter()

NDJSON = "application/x-ndjson"
ChatId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
UserId = Annotated[
    str, Query(pattern=ID_PATTERN, max_length=128, description="who asks (default 'local')")
]


class ImportResult(BaseModel):
    """The chat an import made."""

    chat_id: str = Field(description="the new chat (its own fresh id)")
    turns: int = Field(description="turns imported, every branch included")
    events: int = Field(description="events appended")


def _error(status: int, message: str, line: int | None = None) -> JSONResponse:
    content: dict[str, Any] = {"error": message}
    if line is not None:
        content["detail"] = [{"line": line}]
    return JSONResponse(status_code=status, content=content)


async def _owned(engine: Engine, chat_id: str, user_id: str) -> JSONResponse | None:
    """The refusal for an unknown chat (404) or another user's (409); None when it is ours."""
    chat = await engine.store.read(queries.get_chat, chat_id)
    if chat is None:
        return _error(404, f"unknown chat {chat_id!r}")
    if chat["user_id"] != user_id:
        return _error(409, f"chat {chat_id!r} belongs to another user")
    return None


def _download(body: str, media_type: str, filename: str) -> Response:
    return Response(
        content=body.encode("utf-8"),
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


_READ = {
    **AUTH,
    404: {"model": ErrorBody, "description": "Unknown chat"},
    409: {"model": ErrorBody, "description": "The chat belongs to another user"},
    422: {"model": ErrorBody, "description": "Invalid chat or user id"},
}


@router.get(
    "/persona/chats/{chat_id}/export",
    response_class=Response,
    responses={
        **_READ,
        200: {
            "content": {NDJSON: {"schema": {"type": "string", "minLength": 1}}},
            "description": "A header line, then one event a line (the chat and its turns'"
            " persona events, in log order)",
        },
    },
)
async def export_chat(chat_id: ChatId, engine: EngineDep, user_id: UserId = "local") -> Any:
    """Download the chat as JSONL: everything needed to import it elsewhere."""
    if (refusal := await _owned(engine, chat_id, user_id)) is not None:
        return refusal
    body = await engine.store.read(chat_io.export_jsonl, chat_id, iso(engine.store.clock.now()))
    if body is None:
        return _error(404, f"unknown chat {chat_id!r}")
    return _download(body, NDJSON, f"{chat_id}.jsonl")


@router.get(
    "/persona/chats/{chat_id}/export.md",
    response_class=Response,
    responses={
        **_READ,
        200: {
            "content": {"text/markdown": {"schema": {"type": "string"}}},
            "description": "The active branch: title, persona, each message and reply",
        },
    },
)
async def export_transcript(chat_id: ChatId, engine: EngineDep, user_id: UserId = "local") -> Any:
    """Download a readable Markdown transcript of the chat's active branch."""
    if (refusal := await _owned(engine, chat_id, user_id)) is not None:
        return refusal
    body = await engine.store.read(
        chat_io.transcript_markdown, chat_id, iso(engine.store.clock.now())
    )
    if body is None:
        return _error(404, f"unknown chat {chat_id!r}")
    return _download(body, "text/markdown; charset=utf-8", f"{chat_id}.md")


async def _read_capped(request: Request) -> bytes:
    """The body, refusing (413) once it passes the import cap, without holding more."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > chat_io.MAX_IMPORT_BYTES:
            raise chat_io.ImportRefused(413, f"the file is over {chat_io.MAX_IMPORT_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/persona/chats/import",
    response_model=ImportResult,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {NDJSON: {"schema": {"type": "string", "minLength": 1}}},
            "description": "A chat export (GET /persona/chats/{chat_id}/export), as sent",
        }
    },
    responses={
        **write_responses(
            "Unknown persona_id",
            "The file is not a valid export (the error names the line)",
            "The export's persona does not exist here and no persona_id was given",
        ),
        415: {"model": ErrorBody, "description": f"The body is not {NDJSON}"},
    },
)
async def import_chat(
    request: Request,
    engine: EngineDep,
    user_id: UserId = "local",
    persona_id: Annotated[
        str | None,
        Query(pattern=ID_PATTERN, max_length=128, description="default: the export's persona"),
    ] = None,
) -> Any:
    """Import a JSONL export as a new chat of `user_id`: every id remapped, nothing
    overwritten. The file is validated whole first; a refused one writes nothing."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != NDJSON:
        return _error(415, f"send the export as {NDJSON}")
    try:
        # Parsing a large file is CPU work: keep it off the event loop.
        parsed = await asyncio.to_thread(chat_io.parse_export, await _read_capped(request))

        def write(tx: WriteTx) -> chat_io.Imported:
            return chat_io.import_chat(tx, parsed, user_id, persona_id)

        done = await engine.store.transact(write)
    except chat_io.ImportRefused as exc:
        return _error(exc.status, str(exc), exc.line)
    return ImportResult(chat_id=done.chat_id, turns=done.turns, events=done.events)
