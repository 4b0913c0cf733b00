"""Reads behind the chat rail and its API: a persona's chats, newest first, searchable.

Search matches a chat by its title or by the words of any of its messages, through the
two full-text indexes of migration 0008; every word is a quoted prefix phrase, so no FTS5
syntax gets through a search box.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from persona.storage.memory_queries import search_words

_COLUMNS = (
    "c.chat_id, c.persona_id, c.title, c.last_snippet AS snippet, c.created_at, c.updated_at,"
    " c.turn_count, c.archived"
)


def words_match(words: Sequence[str]) -> str | None:
    """An FTS5 query holding every word as a quoted prefix phrase (None: no word)."""
    phrases = [f'"{w}"*' for w in (w.replace('"', "") for w in words) if w]
    return " AND ".join(phrases) if phrases else None


def _row(r: sqlite3.Row) -> dict[str, Any]:
    data = dict(r)
    data["archived"] = bool(data["archived"])
    return data


def get_chat(conn: sqlite3.Connection, chat_id: str) -> dict[str, Any] | None:
    """One chat as the rail shows it, archived or not."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM chats c WHERE c.chat_id = ?", (chat_id,)).fetchone()
    return _row(row) if row else None


def list_chats(
    conn: sqlite3.Connection,
    persona_id: str,
    archived: bool = False,
    q: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """How many of a persona's chats match, and a page of them, most recently active first.

    `archived` picks the archived chats instead of the listed ones. `q` keeps the chats
    whose title, or one of whose messages, holds every word (as a word prefix); a `q` with
    no word in it matches nothing.
    """
    where = ["c.persona_id = ?", "c.archived = ?"]
    args: list[Any] = [persona_id, int(archived)]
    if q is not None and q.strip():
        match = words_match(search_words(q))
        if match is None:
            return 0, []
        where.append(
            "(c.rowid IN (SELECT rowid FROM chat_title_fts WHERE chat_title_fts MATCH ?)"
            " OR c.chat_id IN (SELECT m.chat_id FROM messages m WHERE m.rowid IN"
            " (SELECT rowid FROM message_fts WHERE message_fts MATCH ?)))"
        )
        args += [match, match]
    condition = " AND ".join(where)
    total = int(conn.execute(f"SELECT COUNT(*) FROM chats c WHERE {condition}", args).fetchone()[0])
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM chats c WHERE {condition}"
        " ORDER BY c.updated_at DESC, c.chat_id LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return total, [_row(r) for r in rows]


def chat_clock(conn: sqlite3.Connection, chat_id: str) -> dict[str, Any] | None:
    """A chat's owner and clock offset (chat time = wall time + offset), None if unknown."""
    row = conn.execute(
        "SELECT chat_id, user_id, clock_offset_s FROM chats WHERE chat_id = ?", (chat_id,)
    ).fetchone()
    return dict(row) if row else None
