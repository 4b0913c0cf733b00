"""Read-side queries over the projections (plain SQL, one function each)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any


def _dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None


def get_persona(conn: sqlite3.Connection, persona_id: str) -> dict[str, Any] | None:
    """One persona row, traits decoded."""
    row = _dict(
        conn.execute("SELECT * FROM persona WHERE persona_id = ?", (persona_id,)).fetchone()
    )
    if row is not None:
        row["traits"] = json.loads(row["traits"])
    return row


def list_personas(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every persona, oldest first."""
    return [dict(r) for r in conn.execute("SELECT * FROM persona ORDER BY created_at, persona_id")]


def get_chat(conn: sqlite3.Connection, chat_id: str) -> dict[str, Any] | None:
    """One chat row."""
    return _dict(conn.execute("SELECT * FROM chats WHERE chat_id = ?", (chat_id,)).fetchone())


def list_chats(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """Most recently active chats first."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT * FROM chats ORDER BY updated_at DESC, chat_id LIMIT ?", (limit,)
        )
    ]


def chat_messages(conn: sqlite3.Connection, chat_id: str) -> list[dict[str, Any]]:
    """Every message of a chat in order, with its turn's status."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT m.*, t.status AS turn_status, t.trace_id AS trace_id, t.error AS turn_error"
            " FROM messages m"
            " JOIN turns t ON t.turn_id = m.turn_id WHERE m.chat_id = ? ORDER BY m.position",
            (chat_id,),
        )
    ]


def turn_count(conn: sqlite3.Connection, chat_id: str) -> int:
    """How many turns a chat has had (completed, failed or running)."""
    return int(
        conn.execute("SELECT COUNT(*) FROM turns WHERE chat_id = ?", (chat_id,)).fetchone()[0]
    )


def recent_history(conn: sqlite3.Connection, chat_id: str, turns: int) -> list[dict[str, Any]]:
    """The last `turns` completed exchanges of a chat, oldest first (failed turns left out)."""
    rows = conn.execute(
        "SELECT turn_id, user_message, reply FROM turns WHERE chat_id = ? AND status = 'completed'"
        " ORDER BY turn_index DESC LIMIT ?",
        (chat_id, turns),
    ).fetchall()
    return [dict(r) for r in reversed(rows)]


def get_turn(conn: sqlite3.Connection, turn_id: str) -> dict[str, Any] | None:
    """One turn, meta decoded."""
    row = _dict(conn.execute("SELECT * FROM turns WHERE turn_id = ?", (turn_id,)).fetchone())
    if row is not None and row["meta"]:
        row["meta"] = json.loads(row["meta"])
    return row


def last_completed_turn(conn: sqlite3.Connection, chat_id: str) -> dict[str, Any] | None:
    """The newest completed turn of a chat (for the state drawer)."""
    row = conn.execute(
        "SELECT turn_id FROM turns WHERE chat_id = ? AND status = 'completed'"
        " ORDER BY turn_index DESC LIMIT 1",
        (chat_id,),
    ).fetchone()
    return get_turn(conn, row[0]) if row else None


def unfinished_turns(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Turns that started but never completed or failed (the process died mid-turn)."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT t.turn_id, t.chat_id, t.trace_id, c.persona_id FROM turns t"
            " JOIN chats c ON c.chat_id = t.chat_id WHERE t.status = 'started'"
        )
    ]


def core_memory(conn: sqlite3.Connection, persona_id: str) -> dict[str, Any] | None:
    """The persona's L3 core memory (its genesis text)."""
    return _dict(
        conn.execute(
            "SELECT * FROM memory WHERE persona_id = ? AND kind = 'core' ORDER BY created_at"
            " LIMIT 1",
            (persona_id,),
        ).fetchone()
    )


def search_memories(
    conn: sqlite3.Connection, persona_id: str, match: str, limit: int
) -> list[dict[str, Any]]:
    """Episodic memories matching an FTS5 query, with their BM25 score (lower is better)."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT m.memory_id, m.content, m.importance, m.created_at, m.chat_id,"
            " bm25(memory_fts) AS bm25 FROM memory_fts JOIN memory m ON m.rowid = memory_fts.rowid"
            " WHERE memory_fts MATCH ? AND m.persona_id = ? AND m.kind = 'episodic'"
            " ORDER BY bm25 LIMIT ?",
            (match, persona_id, limit),
        )
    ]


def recent_memories(conn: sqlite3.Connection, persona_id: str, limit: int) -> list[dict[str, Any]]:
    """The newest episodic memories of a persona."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT memory_id, content, importance, created_at, chat_id, NULL AS bm25 FROM memory"
            " WHERE persona_id = ? AND kind = 'episodic' ORDER BY created_at DESC, rowid DESC"
            " LIMIT ?",
            (persona_id, limit),
        )
    ]


def count_memories(conn: sqlite3.Connection, persona_id: str | None = None) -> int:
    """How many memories (of one persona, or all)."""
    if persona_id is None:
        return int(conn.execute("SELECT COUNT(*) FROM memory").fetchone()[0])
    return int(
        conn.execute("SELECT COUNT(*) FROM memory WHERE persona_id = ?", (persona_id,)).fetchone()[
            0
        ]
    )


def get_edge(conn: sqlite3.Connection, src: str, rel: str, dst: str) -> dict[str, Any] | None:
    """One relationship edge."""
    return _dict(
        conn.execute("SELECT * FROM edge WHERE edge_id = ?", (f"{src}|{rel}|{dst}",)).fetchone()
    )


def telemetry_history(conn: sqlite3.Connection, chat_id: str, limit: int) -> list[dict[str, Any]]:
    """The last telemetry rows of a chat, oldest first."""
    rows = conn.execute(
        "SELECT * FROM telemetry WHERE chat_id = ? ORDER BY turn_index DESC LIMIT ?",
        (chat_id, limit),
    ).fetchall()
    return [dict(r) for r in reversed(rows)]


def previous_user_messages(conn: sqlite3.Connection, chat_id: str, limit: int) -> list[str]:
    """The chat's last user messages (for novelty)."""
    rows = conn.execute(
        "SELECT user_message FROM turns WHERE chat_id = ? ORDER BY turn_index DESC LIMIT ?",
        (chat_id, limit),
    ).fetchall()
    return [r[0] for r in rows]


def classifier_failures(conn: sqlite3.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """Recent structured-call failures."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT * FROM classifier_failures ORDER BY failed_at DESC LIMIT ?", (limit,)
        )
    ]
