"""What sleep consolidation reads: a persona's L1 memories with their witnesses, the ids
already written, and the figures that say when a sleep is due."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SleepRow:
    """One L1 memory as sleep sees it (what was said stays JSON until a note is made)."""

    memory_id: str
    content: str
    said: str
    importance: float
    importance_score: int | None
    created_at: str
    entities: tuple[str, ...]
    chat_id: str | None
    shared: bool
    witnesses: tuple[str, ...]
    consolidated: bool


# Tombstoned and invalidated memories are gone for good; a pinned one is L3 (always in
# context) and would only repeat itself in a digest.
_LIVE_L1 = (
    "m.persona_id = ? AND m.tier = 'L1' AND m.tombstone = 0 AND m.active = 1"
    " AND m.invalid_at IS NULL"
    " AND m.pinned = 0"
)


def l1_memories(conn: sqlite3.Connection, persona_id: str) -> list[SleepRow]:
    """The persona's live L1 memories, oldest first, each with its sorted witnesses."""
    rows = conn.execute(
        "SELECT m.memory_id, m.content, m.said, m.importance, m.importance_score,"
        " m.created_at, m.entities, m.chat_id, m.shared, m.consolidated_into IS NOT NULL,"
        " (SELECT json_group_array(w.user_id) FROM (SELECT user_id FROM memory_witness"
        "  WHERE memory_id = m.memory_id ORDER BY user_id) w)"
        f" FROM memory m WHERE {_LIVE_L1} ORDER BY m.created_at, m.memory_id",
        (persona_id,),
    ).fetchall()
    return [
        SleepRow(
            memory_id=r[0],
            content=r[1],
            said=r[2],
            importance=float(r[3]),
            importance_score=r[4],
            created_at=r[5],
            entities=tuple(json.loads(r[6])),
            chat_id=r[7],
            shared=bool(r[8]),
            consolidated=bool(r[9]),
            witnesses=tuple(json.loads(r[10])),
        )
        for r in rows
    ]


def existing_ids(conn: sqlite3.Connection, memory_ids: Iterable[str]) -> set[str]:
    """The ids among `memory_ids` that some memory already has."""
    wanted = sorted(set(memory_ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):  # under SQLite's bound-parameter limit
        chunk = wanted[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found.update(
            r[0]
            for r in conn.execute(
                f"SELECT memory_id FROM memory WHERE memory_id IN ({marks})", chunk
            ).fetchall()
        )
    return found


@dataclass(frozen=True)
class BeliefRow:
    """A live L3 belief: what a new belief may supersede."""

    memory_id: str
    content: str
    witnesses: tuple[str, ...]


def live_beliefs(conn: sqlite3.Connection, persona_id: str) -> list[BeliefRow]:
    """The persona's beliefs that are neither tombstoned nor superseded, oldest first."""
    rows = conn.execute(
        "SELECT m.memory_id, m.content,"
        " (SELECT json_group_array(w.user_id) FROM (SELECT user_id FROM memory_witness"
        "  WHERE memory_id = m.memory_id ORDER BY user_id) w)"
        " FROM memory m WHERE m.persona_id = ? AND m.tier = 'L3' AND m.kind = 'belief'"
        " AND m.tombstone = 0 AND m.active = 1 AND m.invalid_at IS NULL"
        " ORDER BY m.created_at, m.memory_id",
        (persona_id,),
    ).fetchall()
    return [BeliefRow(r[0], r[1], tuple(json.loads(r[2]))) for r in rows]


def persona_name(conn: sqlite3.Connection, persona_id: str) -> str | None:
    """The persona's name, or None when there is no such persona."""
    row = conn.execute("SELECT name FROM persona WHERE persona_id = ?", (persona_id,)).fetchone()
    return str(row[0]) if row else None


def persona_ids(conn: sqlite3.Connection) -> list[str]:
    """Every persona, in id order."""
    return [r[0] for r in conn.execute("SELECT persona_id FROM persona ORDER BY persona_id")]


@dataclass(frozen=True)
class Pressure:
    """What decides whether a sleep is due: unconsolidated volume and the last activity."""

    unconsolidated: int
    last_activity: str | None


def pressure(conn: sqlite3.Connection, persona_id: str) -> Pressure:
    """The persona's unconsolidated L1 count and its newest activity, in wall time.

    A chat's activity is the wall time its last turn ended (`chats.updated_at`), whatever
    year the chat's own clock shows: a chat set in 2031 must not keep the persona awake for
    years, nor a flashback to 1999 make it look idle. What a turn writes is covered by its
    chat; a memory written outside any chat is dated by wall time (it has no chat clock).
    """
    count = conn.execute(
        f"SELECT count(*) FROM memory m WHERE {_LIVE_L1} AND m.consolidated_into IS NULL",
        (persona_id,),
    ).fetchone()[0]
    newest = conn.execute(
        "SELECT max(t) FROM (SELECT max(created_at) AS t FROM memory"
        " WHERE persona_id = ? AND tier = 'L1' AND chat_id IS NULL"
        " UNION ALL SELECT max(updated_at) FROM chats WHERE persona_id = ?)",
        (persona_id, persona_id),
    ).fetchone()[0]
    return Pressure(int(count), newest)
