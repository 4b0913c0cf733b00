"""The append-only event log: append new events, read them back (upcast on read)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from persona.chat_clock import shifted
from persona.events import CATALOG, Catalog, EventPayload
from persona.events.clock import ChatClockSet

# A chat's events go on the stream `chat:<id>`.
CHAT_STREAM = "chat:"


class ConcurrencyError(RuntimeError):
    """A stream moved on since the writer last read it (optimistic concurrency)."""


@dataclass(frozen=True)
class NewEvent:
    """An event about to be appended: what happened, who decided it, in which stream."""

    payload: EventPayload
    stream_id: str
    actor: str
    trace_id: str | None = None
    parent_event_id: str | None = None
    chat_time: str | None = None
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: float | None = None
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def type(self) -> str:
        """The event type, named by the payload's class."""
        return self.payload.event_type


@dataclass(frozen=True)
class Event:
    """A stored event, as read back from the log."""

    seq: int
    event_id: str
    stream_id: str
    stream_version: int
    trace_id: str | None
    parent_event_id: str | None
    wall_time: str
    chat_time: str | None
    actor: str
    type: str
    schema_version: int
    payload: EventPayload
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: float | None = None

    def public(self) -> dict[str, Any]:
        """A JSON-ready view of the event."""
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "stream_version": self.stream_version,
            "trace_id": self.trace_id,
            "parent_event_id": self.parent_event_id,
            "wall_time": self.wall_time,
            "chat_time": self.chat_time,
            "actor": self.actor,
            "type": self.type,
            "schema_version": self.schema_version,
            "payload": self.payload.to_json(),
            "model": self.model,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_ms": self.latency_ms,
        }


_COLUMNS = (
    "seq, event_id, stream_id, stream_version, trace_id, parent_event_id, wall_time,"
    " chat_time, actor, type, schema_version, payload, model, tokens_in, tokens_out, latency_ms"
)


def stream_version(conn: sqlite3.Connection, stream_id: str) -> int:
    """The current version of a stream (0 when it has no events)."""
    row = conn.execute(
        "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?", (stream_id,)
    ).fetchone()
    return int(row[0])


class _ChatClocks:
    """The clock offset of each chat a batch writes for (one indexed read per chat).

    An event is a chat's when it is on the chat's stream, names the chat in its payload,
    or shares its trace with such an event (a turn's persona-scoped writes). A clock move
    in the batch applies to the events after it.
    """

    def __init__(self, conn: sqlite3.Connection, batch: list[NewEvent]):
        self._conn = conn
        self._offsets: dict[str, float] = {}
        self._traces: dict[str, str] = {}
        for new in batch:
            chat = _named_chat(new)
            if chat is not None and new.trace_id is not None:
                self._traces.setdefault(new.trace_id, chat)

    def chat_time(self, new: NewEvent, wall_time: str) -> str:
        """The event's own chat_time if it has one, else its chat's time (or wall time)."""
        chat = _named_chat(new)
        if chat is None and new.trace_id is not None:
            chat = self._traces.get(new.trace_id)
        if chat is not None and isinstance(new.payload, ChatClockSet):
            self._offsets[chat] = new.payload.offset_s
        if new.chat_time is not None:
            return new.chat_time
        if chat is None:
            return wall_time
        offset = self._offsets.get(chat)
        if offset is None:
            row = self._conn.execute(
                "SELECT clock_offset_s FROM chats WHERE chat_id = ?", (chat,)
            ).fetchone()
            offset = self._offsets[chat] = float(row[0]) if row else 0.0
        return shifted(wall_time, offset)


def _named_chat(new: NewEvent) -> str | None:
    if new.stream_id.startswith(CHAT_STREAM):
        return new.stream_id[len(CHAT_STREAM) :]
    chat = getattr(new.payload, "chat_id", None)
    return chat if isinstance(chat, str) else None


def insert_events(
    conn: sqlite3.Connection,
    new_events: list[NewEvent],
    wall_time: str,
    expected_versions: Mapping[str, int] | None = None,
) -> list[Event]:
    """Insert events (caller holds the transaction); check expected stream versions.

    An event without a chat_time gets its chat's: the wall time plus the chat's clock
    offset (persona.chat_clock), read once per chat in the batch, in this transaction.
    """
    versions: dict[str, int] = {}
    stored = []
    clocks = _ChatClocks(conn, new_events)
    for new in new_events:
        if new.stream_id not in versions:
            current = stream_version(conn, new.stream_id)
            expected = (expected_versions or {}).get(new.stream_id)
            if expected is not None and expected != current:
                raise ConcurrencyError(
                    f"stream {new.stream_id} is at version {current}, expected {expected}"
                )
            versions[new.stream_id] = current
        versions[new.stream_id] += 1
        chat_time = clocks.chat_time(new, wall_time)
        payload_json = json.dumps(new.payload.to_json(), sort_keys=True, ensure_ascii=False)
        cursor = conn.execute(
            "INSERT INTO events (event_id, stream_id, stream_version, trace_id,"
            " parent_event_id, wall_time, chat_time, actor, type, schema_version, payload,"
            " model, tokens_in, tokens_out, latency_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new.event_id,
                new.stream_id,
                versions[new.stream_id],
                new.trace_id,
                new.parent_event_id,
                wall_time,
                chat_time,
                new.actor,
                new.type,
                new.payload.version,
                payload_json,
                new.model,
                new.tokens_in,
                new.tokens_out,
                new.latency_ms,
            ),
        )
        stored.append(
            Event(
                seq=int(cursor.lastrowid or 0),
                event_id=new.event_id,
                stream_id=new.stream_id,
                stream_version=versions[new.stream_id],
                trace_id=new.trace_id,
                parent_event_id=new.parent_event_id,
                wall_time=wall_time,
                chat_time=chat_time,
                actor=new.actor,
                type=new.type,
                schema_version=new.payload.version,
                payload=new.payload,
                model=new.model,
                tokens_in=new.tokens_in,
                tokens_out=new.tokens_out,
                latency_ms=new.latency_ms,
            )
        )
    return stored


def row_to_event(row: sqlite3.Row | tuple[Any, ...], catalog: Catalog = CATALOG) -> Event:
    """Build an Event from a row of `events`, upcasting its payload to the current version."""
    payload = catalog.decode(row[9], row[10], json.loads(row[11]))
    return Event(
        seq=row[0],
        event_id=row[1],
        stream_id=row[2],
        stream_version=row[3],
        trace_id=row[4],
        parent_event_id=row[5],
        wall_time=row[6],
        chat_time=row[7],
        actor=row[8],
        type=row[9],
        schema_version=payload.version,
        payload=payload,
        model=row[12],
        tokens_in=row[13],
        tokens_out=row[14],
        latency_ms=row[15],
    )


def read_events(
    conn: sqlite3.Connection,
    *,
    after_seq: int = 0,
    trace_id: str | None = None,
    stream_id: str | None = None,
    batch: int = 1000,
    catalog: Catalog = CATALOG,
) -> Iterator[Event]:
    """Iterate events in global order, optionally filtered by trace or stream."""
    where: list[str] = ["seq > ?"]
    params: list[Any] = [after_seq]
    if trace_id is not None:
        where.append("trace_id = ?")
        params.append(trace_id)
    if stream_id is not None:
        where.append("stream_id = ?")
        params.append(stream_id)
    last = after_seq
    while True:
        params[0] = last
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            (*params, batch),
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield row_to_event(row, catalog)
        last = rows[-1][0]


def count_events(conn: sqlite3.Connection) -> int:
    """How many events the log holds."""
    return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
