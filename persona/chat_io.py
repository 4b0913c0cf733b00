"""Export a chat (JSONL of its events, a Markdown transcript) and import such an export.

An export holds every event of the chat's stream and the persona-stream events written by
its turns (same trace), in log order, after a header line. Importing one makes a new chat:
everything is validated first (format, JSON, types, payloads, that every event belongs to
the exported chat); then every id the export defines (event, trace, turn ids, and the
memory ids built from turn ids) is replaced by a fresh one, the chat id and, where they
differ, the persona and user ids are replaced, and all events are appended in one
transaction, so the projector folds them like any others. A refused file writes nothing.

Remapping is generic over event types, by two rules:
- long ids (16+ ASCII letters and digits: uuid hex) are replaced wherever they stand as a
  whole token inside a string, so `ep:<turn>` and `fa:<turn>:0` follow their turn;
- short ids are replaced only where they are ids: the chat id as the value of a `*chat_id`
  field; the persona and user ids as the value of a `*persona_id` / `*user_id` field (or
  a `witnesses` item, or a key of a mapping), and inside the composite ids the pipeline
  builds (`user:U`, `persona:P`, `core:P`, `entity:U:Name`, edge ids `P|node|rel|key`).
  Free text (messages, replies, prompts) is never touched by these.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from persona.events import CATALOG, ChatStarted, EventPayload, MemoryWritten
from persona.events.base import UnknownEventType, UpcastError
from persona.storage import queries
from persona.storage.eventlog import Event, NewEvent, row_to_event
from persona.storage.store import WriteTx

FORMAT = "persona-chat"
VERSION = 1
# Each reply.completed keeps its whole prompt: measured with the scripted backend, a
# turn exports to about 26 KB once history fills the prompt, so a 1,000-turn chat is some
# 26 MB. 64 MiB leaves room for that without letting one upload hold unbounded memory.
MAX_IMPORT_BYTES = 64 * 1024 * 1024
MAX_IMPORT_EVENTS = 200_000
# A long id: replaced wherever it stands as a whole token (see the module docstring).
LONG_ID = re.compile(r"[0-9A-Za-z]{16,}")
_STREAM_KINDS = ("chat", "persona")


class ImportRefused(ValueError):
    """An export that cannot be imported (nothing was written); `status` is the HTTP answer."""

    def __init__(self, status: int, message: str, line: int | None = None):
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.status = status
        self.line = line


def chat_stream(chat_id: str) -> str:
    """The stream of a chat's events."""
    return f"chat:{chat_id}"


def persona_stream(persona_id: str) -> str:
    """The stream of a persona's own events."""
    return f"persona:{persona_id}"


# ---- export -------------------------------------------------------------------------------


_COLUMNS = (
    "seq, event_id, stream_id, stream_version, trace_id, parent_event_id, wall_time,"
    " chat_time, actor, type, schema_version, payload, model, tokens_in, tokens_out, latency_ms"
)


def chat_events(conn: sqlite3.Connection, chat_id: str, persona_id: str) -> list[Event]:
    """The chat's stream and the persona-stream events of its traces, in log order."""
    stream = chat_stream(chat_id)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? OR (stream_id != ? AND trace_id IN"
        " (SELECT trace_id FROM events WHERE stream_id = ? AND trace_id IS NOT NULL))"
        " ORDER BY seq",
        (stream, stream, stream),
    ).fetchall()
    events = [row_to_event(r) for r in rows]
    allowed = (stream, persona_stream(persona_id))
    stray = [e.stream_id for e in events if e.stream_id not in allowed]
    if stray:
        # A new kind of stream would need its own remapping: fail loudly, never export
        # something that imports incomplete.
        raise RuntimeError(f"chat {chat_id!r} has events on streams {sorted(set(stray))}")
    return events


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, sort_keys=False) + "\n"


def export_jsonl(conn: sqlite3.Connection, chat_id: str, exported_at: str) -> str | None:
    """The chat as JSONL: a header line, then one event a line (None: unknown chat)."""
    chat = queries.get_chat(conn, chat_id)
    if chat is None:
        return None
    events = chat_events(conn, chat_id, chat["persona_id"])
    header = {
        "format": FORMAT,
        "version": VERSION,
        "chat_id": chat_id,
        "persona_id": chat["persona_id"],
        "user_id": chat["user_id"],
        "title": chat["title"],
        "exported_at": exported_at,
        "events": len(events),
    }
    out = [_line(header)]
    for e in events:
        data = e.public()
        del data["seq"], data["stream_version"], data["stream_id"]
        kind = "chat" if e.stream_id == chat_stream(chat_id) else "persona"
        out.append(_line({"event_id": e.event_id, "stream": kind, **data}))
    return "".join(out)


@dataclass(frozen=True)
class TranscriptTurn:
    """One turn of the active path, as the transcript shows it."""

    turn_id: str
    message: str
    reply: str
    status: str


def active_turns(conn: sqlite3.Connection, chat_id: str) -> list[TranscriptTurn]:
    """The turns from the chat's first one to its leaf (`chats.head_turn_id`), in order."""
    rows = conn.execute(
        "WITH RECURSIVE up(turn_id, parent) AS ("
        " SELECT t.turn_id, t.parent_turn_id FROM chats c JOIN turns t"
        " ON t.turn_id = c.head_turn_id WHERE c.chat_id = ?"
        " UNION ALL SELECT t.turn_id, t.parent_turn_id FROM turns t JOIN up"
        " ON t.turn_id = up.parent)"
        " SELECT t.turn_id, t.user_message, t.reply, t.status FROM turns t"
        " JOIN up USING (turn_id) ORDER BY t.depth",
        (chat_id,),
    ).fetchall()
    return [TranscriptTurn(r[0], r[1] or "", r[2] or "", r[3]) for r in rows]


def transcript_markdown(conn: sqlite3.Connection, chat_id: str, exported_at: str) -> str | None:
    """A readable transcript of the active branch, as Markdown (None: unknown chat).

    Messages are written as they were said (it is a download, not a page); a stopped
    turn's reply is marked truncated.
    """
    chat = queries.get_chat(conn, chat_id)
    if chat is None:
        return None
    persona = queries.get_persona(conn, chat["persona_id"])
    name = persona.name if persona is not None else chat["persona_id"]
    out = [
        f"# {chat['title']}\n",
        f"A chat with **{name}**, exported {exported_at} (the active branch).\n",
    ]
    for turn in active_turns(conn, chat_id):
        out.append(f"\n**User:**\n\n{turn.message}\n")
        mark = " *(truncated)*" if turn.status == "stopped" else ""
        out.append(f"\n**{name}:**{mark}\n\n{turn.reply}\n")
    return "".join(out)


# ---- parse and validate -------------------------------------------------------------------


class Header(BaseModel):
    """The first line of an export."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: str
    version: int
    chat_id: str = Field(min_length=1, max_length=128)
    persona_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    title: str
    exported_at: str
    events: int = Field(ge=0)


class ExportedEvent(BaseModel):
    """One event line of an export: the envelope, and the payload as exported."""

    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: str
    stream: Literal["chat", "persona"]
    trace_id: str | None
    parent_event_id: str | None
    wall_time: str
    chat_time: str | None
    actor: str
    type: str
    schema_version: int = Field(ge=1)
    payload: dict[str, Any]
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: float | None = Field(default=None, strict=False)


@dataclass(frozen=True)
class Parsed:
    """A validated export: its header and its events with decoded (current) payloads."""

    header: Header
    events: list[tuple[ExportedEvent, EventPayload]]

    @property
    def turn_ids(self) -> list[str]:
        """The export's turns (the `turn_id` of its chat events), in order of appearance."""
        seen: dict[str, None] = {}
        for env, payload in self.events:
            turn_id = getattr(payload, "turn_id", None)
            if env.stream == "chat" and isinstance(turn_id, str):
                seen[turn_id] = None
        return list(seen)


def _errors(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "value"
    return f"{where}: {first.get('msg', 'invalid')}"


def _turn_refs(value: Any, key: str = "") -> Iterable[str]:
    """Every turn id a payload names (fields named `*turn_id`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _turn_refs(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _turn_refs(v, key)
    elif isinstance(value, str) and key.endswith("turn_id"):
        yield value


def _split_lines(data: bytes) -> list[str]:
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportRefused(413, f"the file is over {MAX_IMPORT_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportRefused(400, f"the file is not UTF-8 (byte {exc.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if not lines or not "".join(lines).strip():
        raise ImportRefused(400, "the file is empty")
    if len(lines) - 1 > MAX_IMPORT_EVENTS:
        raise ImportRefused(413, f"the file has over {MAX_IMPORT_EVENTS} events")
    return lines


def _json_object(text: str, number: int) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportRefused(400, f"not valid JSON ({exc.msg})", number) from None
    if not isinstance(value, dict):
        raise ImportRefused(422, "not a JSON object", number)
    return value


def _header(text: str) -> Header:
    raw = _json_object(text, 1)
    if raw.get("format") != FORMAT:
        raise ImportRefused(422, f"not a {FORMAT} export (the header's format is wrong)", 1)
    if raw.get("version") != VERSION:
        raise ImportRefused(422, f"export version {raw.get('version')!r}, expected {VERSION}", 1)
    try:
        return Header.model_validate(raw)
    except ValidationError as exc:
        raise ImportRefused(422, f"bad header: {_errors(exc)}", 1) from None


def _event(text: str, number: int) -> tuple[ExportedEvent, EventPayload]:
    try:
        env = ExportedEvent.model_validate(_json_object(text, number))
    except ValidationError as exc:
        raise ImportRefused(422, f"bad event: {_errors(exc)}", number) from None
    try:
        payload = CATALOG.decode(env.type, env.schema_version, env.payload)
    except UnknownEventType:
        raise ImportRefused(422, f"unknown event type {env.type!r}", number) from None
    except UpcastError as exc:
        raise ImportRefused(422, str(exc), number) from None
    except ValidationError as exc:
        raise ImportRefused(422, f"bad {env.type} payload: {_errors(exc)}", number) from None
    if not LONG_ID.fullmatch(env.event_id) or (
        env.trace_id is not None and not LONG_ID.fullmatch(env.trace_id)
    ):
        raise ImportRefused(422, "event and trace ids must be 16+ letters or digits", number)
    return env, payload


def _belongs(header: Header, env: ExportedEvent, payload: EventPayload, traces: set[str]) -> str:
    """Why an event is not the exported chat's ('' when it is)."""
    fields = payload.to_json()
    own = {"chat_id": header.chat_id, "persona_id": header.persona_id, "user_id": header.user_id}
    for key, expected in own.items():
        if key in fields and fields[key] != expected:
            return f"its {key} {fields[key]!r} is not the export's {expected!r}"
    if env.stream == "persona" and env.trace_id not in traces:
        return "a persona event outside the chat's turns"
    return ""


def parse_export(data: bytes) -> Parsed:
    """Validate a whole export without touching a database (raises ImportRefused)."""
    lines = _split_lines(data)
    header = _header(lines[0])
    if header.events != len(lines) - 1:
        raise ImportRefused(
            422, f"the header announces {header.events} events, the file has {len(lines) - 1}"
        )
    events = [_event(text, i) for i, text in enumerate(lines[1:], start=2)]
    if not events or events[0][0].stream != "chat" or not isinstance(events[0][1], ChatStarted):
        raise ImportRefused(422, "the first event must be the chat's chat.started", 2)
    started = events[0][1]
    if (started.chat_id, started.persona_id, started.user_id) != (
        header.chat_id,
        header.persona_id,
        header.user_id,
    ):
        raise ImportRefused(422, "chat.started does not match the header", 2)
    traces = {e.trace_id for e, _ in events if e.stream == "chat" and e.trace_id}
    parsed = Parsed(header, events)
    turns = set(parsed.turn_ids)
    ids: set[str] = set()
    for number, (env, payload) in enumerate(events, start=2):
        if env.event_id in ids:
            raise ImportRefused(422, f"event id {env.event_id} appears twice", number)
        if env.parent_event_id is not None and env.parent_event_id not in ids:
            raise ImportRefused(422, "its parent event is not an earlier event", number)
        ids.add(env.event_id)
        if number > 2 and isinstance(payload, ChatStarted):
            raise ImportRefused(422, "a second chat.started (events of two chats)", number)
        if why := _belongs(header, env, payload, traces):
            raise ImportRefused(422, f"not an event of chat {header.chat_id!r}: {why}", number)
        foreign = [t for t in _turn_refs(payload.to_json()) if t not in turns]
        if foreign:
            raise ImportRefused(422, f"names turn {foreign[0]!r}, not one of this chat", number)
        if isinstance(payload, MemoryWritten) and not LONG_ID.search(payload.memory_id):
            raise ImportRefused(422, f"memory id {payload.memory_id!r} names no turn", number)
    bad = next((t for t in turns if not LONG_ID.fullmatch(t)), None)
    if bad is not None:
        raise ImportRefused(422, f"turn id {bad!r} is not 16+ letters or digits")
    return parsed


# ---- remap and append ---------------------------------------------------------------------


@dataclass(frozen=True)
class Remap:
    """Old ids -> new ones (see the module docstring for where each is replaced)."""

    long: dict[str, str]
    chat: tuple[str, str]
    persona: tuple[str, str]
    user: tuple[str, str]

    def _token(self, match: re.Match[str]) -> str:
        return self.long.get(match[0], match[0])

    def node(self, s: str) -> str:
        """A graph node or composite id with the persona and user ids replaced."""
        (op, np), (ou, nu) = self.persona, self.user
        kind, sep, rest = s.partition(":")
        if sep and kind in ("persona", "core") and rest == op:
            return f"{kind}:{np}"
        if sep and kind == "user" and rest == ou:
            return f"user:{nu}"
        if sep and kind == "entity":
            uid, sep2, name = rest.partition(":")
            if sep2 and uid == ou:
                return f"entity:{nu}:{name}"
        if s.startswith(f"{op}|"):  # an edge id: persona|src|rel|object key
            src, sep, tail = s[len(op) + 1 :].partition("|")
            if sep:
                return f"{np}|{self.node(src)}|{tail}"
        return s

    def string(self, s: str, key: str) -> str:
        """A string value of field `key`, remapped."""
        s = LONG_ID.sub(self._token, s)
        for suffix, (old, new) in (
            ("chat_id", self.chat),
            ("persona_id", self.persona),
            ("user_id", self.user),
        ):
            if key.endswith(suffix) and s == old:
                return new
        if key == "witnesses" and s == self.user[0]:
            return self.user[1]
        return self.node(s)

    def key(self, k: str) -> str:
        """A mapping key (e.g. a user's baseline): ids only, never a field name in practice
        (a payload whose field got renamed fails validation and the import is refused)."""
        k = LONG_ID.sub(self._token, k)
        return self.user[1] if k == self.user[0] else k

    def value(self, v: Any, key: str = "") -> Any:
        """Any JSON value of field `key`, remapped recursively (list items keep the key)."""
        if isinstance(v, str):
            return self.string(v, key)
        if isinstance(v, list):
            return [self.value(x, key) for x in v]
        if isinstance(v, dict):
            return {self.key(k): self.value(x, k) for k, x in v.items()}
        return v


def new_chat_id() -> str:
    """A fresh chat id (the same shape as the chat API's)."""
    return f"chat-{uuid.uuid4().hex[:16]}"


def remap_for(parsed: Parsed, chat_id: str, persona_id: str, user_id: str) -> Remap:
    """Fresh ids for everything the export defines, and the chat/persona/user mapping."""
    old: dict[str, None] = {}
    for env, _ in parsed.events:
        old[env.event_id] = None
        if env.trace_id:
            old[env.trace_id] = None
    old.update(dict.fromkeys(parsed.turn_ids))
    h = parsed.header
    return Remap(
        long={o: uuid.uuid4().hex for o in old},
        chat=(h.chat_id, chat_id),
        persona=(h.persona_id, persona_id),
        user=(h.user_id, user_id),
    )


def new_events(parsed: Parsed, remap: Remap) -> list[NewEvent]:
    """The export's events with every id remapped, ready to append (ImportRefused if a
    remapped payload no longer validates)."""
    streams = {"chat": chat_stream(remap.chat[1]), "persona": persona_stream(remap.persona[1])}
    out = []
    for number, (env, payload) in enumerate(parsed.events, start=2):
        cls = type(payload)
        try:
            moved = cls.model_validate(remap.value(payload.to_json()))
        except ValidationError as exc:
            raise ImportRefused(422, f"cannot remap its ids: {_errors(exc)}", number) from None
        out.append(
            NewEvent(
                payload=moved,
                stream_id=streams[env.stream],
                actor=env.actor,
                trace_id=remap.long[env.trace_id] if env.trace_id else None,
                parent_event_id=remap.long[env.parent_event_id] if env.parent_event_id else None,
                chat_time=env.chat_time,
                model=env.model,
                tokens_in=env.tokens_in,
                tokens_out=env.tokens_out,
                latency_ms=env.latency_ms,
                event_id=remap.long[env.event_id],
            )
        )
    return out


@dataclass(frozen=True)
class Imported:
    """What an import made."""

    chat_id: str
    turns: int
    events: int


def import_chat(
    tx: WriteTx, parsed: Parsed, user_id: str, persona_id: str | None = None
) -> Imported:
    """Append a parsed export as a new chat of `user_id`, in the caller's transaction.

    The persona is `persona_id`, else the export's own; it must exist here (404 / 409).
    Raises ImportRefused before appending anything.
    """
    target = persona_id or parsed.header.persona_id
    if tx.read(queries.get_persona, target) is None:
        if persona_id is not None:
            raise ImportRefused(404, f"unknown persona_id {persona_id!r}")
        raise ImportRefused(
            409, f"the export's persona {target!r} does not exist here: name one (persona_id)"
        )
    chat_id = new_chat_id()
    while tx.read(queries.get_chat, chat_id) is not None:  # never overwrite a chat
        chat_id = new_chat_id()
    remap = remap_for(parsed, chat_id, target, user_id)
    events = new_events(parsed, remap)
    # The new chat's stream starts empty; the persona's continues where it is.
    pstream = persona_stream(target)
    expected = {chat_stream(chat_id): 0, pstream: tx.stream_version(pstream)}
    tx.append(events, expected)
    return Imported(chat_id, len(parsed.turn_ids), len(events))
