"""Reads behind the memory screen and its API: every memory of a persona, as stored.

Unlike retrieval (`queries.search_memories`), nothing here is scoped to a user or hides
what retrieval skips (pinned, invalidated, consolidated): the user sees all of it, and
tombstones too when asked. A pinned memory reads as L3, whatever tier it was written in.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

# The tier a memory counts as now: pinned ones are L3 (always in context).
EFFECTIVE_TIER = "CASE WHEN m.pinned = 1 THEN 'L3' ELSE m.tier END"
_COLUMNS = (
    "m.memory_id, m.persona_id, m.tier AS base_tier, m.kind, m.content, m.said, m.importance,"
    " m.importance_score, m.chat_id, m.turn_id, m.trace_id, m.created_at, m.entities,"
    " m.pinned, m.tombstone, m.version, m.consolidated_into, m.access_count,"
    f" m.last_accessed, m.invalid_at, m.active, {EFFECTIVE_TIER} AS tier"
)
# A search box takes words; more than this many are ignored (each is one FTS5 phrase).
MAX_SEARCH_TERMS = 16
_WORD = re.compile(r"\w+")


def search_words(q: str) -> list[str]:
    """The words of a search box's text, in order, each once (punctuation is dropped)."""
    return list(dict.fromkeys(_WORD.findall(q)))[:MAX_SEARCH_TERMS]


def content_match(words: Sequence[str]) -> str | None:
    """An FTS5 query: every word as a quoted prefix phrase in the `content` column.

    Quoted, so no FTS5 syntax (NEAR, column filters, operators) gets through a search box;
    `content` only, because the `context` column holds the words of other memories.
    """
    phrases = [f'content : "{w}"*' for w in (w.replace('"', "") for w in words) if w]
    return " AND ".join(phrases) if phrases else None


def _row(r: sqlite3.Row) -> dict[str, Any]:
    data = dict(r)
    data["said"] = json.loads(data["said"])
    data["entities"] = json.loads(data["entities"])
    data["pinned"] = bool(data["pinned"])
    data["tombstone"] = bool(data["tombstone"])
    data["active"] = bool(data["active"])
    return data


def get_memory(conn: sqlite3.Connection, memory_id: str) -> dict[str, Any] | None:
    """One memory, tombstoned or not."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM memory m WHERE m.memory_id = ?", (memory_id,)
    ).fetchone()
    return _row(row) if row else None


def list_memories(
    conn: sqlite3.Connection,
    persona_id: str,
    tier: str | None = None,
    q: str | None = None,
    include_deleted: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """How many memories match, and a page of them, newest first.

    `q` matches memories holding every word (as a word prefix); a `q` with no word in it
    matches nothing.
    """
    # What an abandoned branch wrote is not shown (it comes back with its branch).
    where = ["m.persona_id = ?", "m.active = 1"]
    args: list[Any] = [persona_id]
    if tier is not None:
        where.append(f"{EFFECTIVE_TIER} = ?")
        args.append(tier)
    if not include_deleted:
        where.append("m.tombstone = 0")
    if q is not None and q.strip():
        match = content_match(search_words(q))
        if match is None:
            return 0, []
        where.append("m.rowid IN (SELECT rowid FROM memory_fts WHERE memory_fts MATCH ?)")
        args.append(match)
    condition = " AND ".join(where)
    total = int(
        conn.execute(f"SELECT COUNT(*) FROM memory m WHERE {condition}", args).fetchone()[0]
    )
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM memory m WHERE {condition}"
        " ORDER BY m.created_at DESC, m.rowid DESC LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return total, [_row(r) for r in rows]
