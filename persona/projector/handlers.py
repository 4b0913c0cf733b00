"""One pure handler per event type: fold an event into the projection tables.

Handlers read only the connection they are given and the event; time comes from the
event, never from a clock, so replaying the log gives the same bytes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping

from persona.storage.eventlog import Event

Handler = Callable[[sqlite3.Connection, Event], None]


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def persona_created(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO persona (persona_id, name, description, genesis, traits, created_at,"
        " updated_at, turn_count) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
        (
            p["persona_id"],
            p["name"],
            p["description"],
            p["genesis"],
            _json(p["traits"]),
            e.chat_time,
            e.chat_time,
        ),
    )
    _insert_memory(
        conn,
        f"core:{p['persona_id']}",
        p["persona_id"],
        "core",
        p["genesis"],
        1.0,
        None,
        e.trace_id,
        e.chat_time or e.wall_time,
    )


def chat_started(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO chats (chat_id, persona_id, user_id, title, created_at, updated_at,"
        " turn_count) VALUES (?, ?, ?, ?, ?, ?, 0)",
        (p["chat_id"], p["persona_id"], p["user_id"], p["title"], e.chat_time, e.chat_time),
    )


def turn_started(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO turns (turn_id, chat_id, trace_id, turn_index, status, user_message,"
        " started_at) VALUES (?, ?, ?, ?, 'started', ?, ?)",
        (p["turn_id"], p["chat_id"], e.trace_id, p["turn_index"], p["message"], e.chat_time),
    )
    _insert_message(conn, p["chat_id"], p["turn_id"], "user", p["message"], e.chat_time)
    conn.execute("UPDATE chats SET updated_at = ? WHERE chat_id = ?", (e.chat_time, p["chat_id"]))


def reply_completed(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    _insert_message(conn, p["chat_id"], p["turn_id"], "assistant", p["reply"], e.chat_time)


def turn_completed(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "UPDATE turns SET status = 'completed', reply = ?, meta = ?, ended_at = ?"
        " WHERE turn_id = ?",
        (p["reply"], _json(p["meta"]), e.chat_time, p["turn_id"]),
    )
    conn.execute(
        "UPDATE chats SET turn_count = turn_count + 1, updated_at = ? WHERE chat_id = ?",
        (e.chat_time, p["chat_id"]),
    )
    conn.execute(
        "UPDATE persona SET turn_count = turn_count + 1, updated_at = ? WHERE persona_id = ?",
        (e.chat_time, p["persona_id"]),
    )


def turn_failed(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "UPDATE turns SET status = 'failed', error = ?, ended_at = ? WHERE turn_id = ?",
        (p["error"], e.chat_time, p["turn_id"]),
    )


def memory_written(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    _insert_memory(
        conn,
        p["memory_id"],
        p["persona_id"],
        p["kind"],
        p["content"],
        p["importance"],
        p.get("chat_id"),
        e.trace_id,
        e.chat_time or e.wall_time,
    )


def edge_asserted(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    edge_id = f"{p['src']}|{p['rel']}|{p['dst']}"
    conn.execute(
        "INSERT INTO edge (edge_id, persona_id, src, rel, dst, weight, evidence, valid_from,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)"
        " ON CONFLICT (edge_id) DO UPDATE SET weight = excluded.weight,"
        " evidence = edge.evidence + 1, updated_at = excluded.updated_at",
        (
            edge_id,
            p["persona_id"],
            p["src"],
            p["rel"],
            p["dst"],
            p["weight"],
            e.chat_time,
            e.chat_time,
        ),
    )


def telemetry_recorded(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    t = p["telemetry"]
    conn.execute(
        "INSERT INTO telemetry (trace_id, chat_id, persona_id, turn_index, c, n, m, s, r,"
        " dialogue_state, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            e.trace_id,
            p["chat_id"],
            p["persona_id"],
            p["turn_index"],
            t["C"],
            t["N"],
            t["M"],
            t["S"],
            t["R"],
            p["dialogue_state"],
            e.chat_time,
        ),
    )


def classifier_failed(conn: sqlite3.Connection, e: Event) -> None:
    p = e.payload
    conn.execute(
        "INSERT INTO classifier_failures (event_id, trace_id, stage, schema_name, model,"
        " error, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            e.event_id,
            e.trace_id,
            p["stage"],
            p["schema_name"],
            p.get("model"),
            p["error"],
            p["attempts"],
            e.chat_time,
        ),
    )


def _insert_message(
    conn: sqlite3.Connection, chat_id: str, turn_id: str, role: str, content: str, at: str | None
) -> None:
    position = conn.execute(
        "SELECT COALESCE(MAX(position), 0) + 1 FROM messages WHERE chat_id = ?", (chat_id,)
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO messages (message_id, chat_id, turn_id, position, role, content,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (f"{turn_id}:{role}", chat_id, turn_id, position, role, content, at),
    )


def _insert_memory(
    conn: sqlite3.Connection,
    memory_id: str,
    persona_id: str,
    kind: str,
    content: str,
    importance: float,
    chat_id: str | None,
    trace_id: str | None,
    at: str,
) -> None:
    cursor = conn.execute(
        "INSERT INTO memory (memory_id, persona_id, kind, content, importance, chat_id,"
        " trace_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (memory_id, persona_id, kind, content, importance, chat_id, trace_id, at),
    )
    conn.execute(
        "INSERT INTO memory_fts (rowid, content) VALUES (?, ?)", (cursor.lastrowid, content)
    )


def _record_only(conn: sqlite3.Connection, e: Event) -> None:
    """Decision events live in the log (trace viewer, meta); no table folds them yet."""


HANDLERS: Mapping[str, Handler] = {
    "persona.created": persona_created,
    "chat.started": chat_started,
    "turn.started": turn_started,
    "perception.completed": _record_only,
    "memory.retrieved": _record_only,
    "workspace.selected": _record_only,
    "metacognition.completed": _record_only,
    "reply.completed": reply_completed,
    "memory.written": memory_written,
    "edge.asserted": edge_asserted,
    "telemetry.recorded": telemetry_recorded,
    "classifier.failed": classifier_failed,
    "turn.completed": turn_completed,
    "turn.failed": turn_failed,
}
