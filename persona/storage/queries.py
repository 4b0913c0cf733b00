"""Read-side queries over the projections (plain SQL, one function each).

SQLite specifics (FTS5 query syntax, bm25's sign and scale, recursive CTEs) stay in this
module: callers get plain rows and plain scores.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from persona.events import ChatState, IdentityState
from persona.storage.eventlog import Event, read_events


@dataclass(frozen=True)
class PersonaRow:
    """A persona as the stages see it."""

    persona_id: str
    name: str
    description: str
    genesis: str
    traits: dict[str, float]
    created_at: str
    updated_at: str
    turn_count: int


@dataclass(frozen=True)
class PathTurn:
    """One completed turn on a chat's active path."""

    turn_id: str
    user_message: str
    reply: str
    depth: int


@dataclass(frozen=True)
class MemoryHit:
    """A memory candidate; `lexical` is 0..1 relative to the best match (None: not matched)."""

    memory_id: str
    content: str
    importance: float
    created_at: str
    chat_id: str | None
    lexical: float | None
    tier: str = "L1"
    kind: str = "exchange"
    said: str = "[]"  # JSON list of utterances
    entities: str = "[]"  # JSON list of names
    source_ref: str | None = None


def _dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None


# ---- personas -----------------------------------------------------------------------------


def get_persona(conn: sqlite3.Connection, persona_id: str) -> PersonaRow | None:
    """One persona."""
    row = conn.execute("SELECT * FROM persona WHERE persona_id = ?", (persona_id,)).fetchone()
    if row is None:
        return None
    data = dict(row)
    data["traits"] = json.loads(data["traits"])
    # Bookkeeping for branch switches (persona.projector.branches), not the persona.
    data.pop("revised_seq", None)
    data.pop("revised_at", None)
    return PersonaRow(**data)


def list_personas(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every persona, oldest first."""
    return [dict(r) for r in conn.execute("SELECT * FROM persona ORDER BY created_at, persona_id")]


# ---- chats and the turn tree ----------------------------------------------------------------


def get_chat(conn: sqlite3.Connection, chat_id: str) -> dict[str, Any] | None:
    """One chat row (with its head turn)."""
    return _dict(conn.execute("SELECT * FROM chats WHERE chat_id = ?", (chat_id,)).fetchone())


def list_chats(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """Most recently active chats first."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT * FROM chats ORDER BY updated_at DESC, chat_id LIMIT ?", (limit,)
        )
    ]


# The ancestors of a turn, itself included: the active path when started from the head.
_PATH = (
    "WITH RECURSIVE path(turn_id, parent_turn_id) AS ("
    " SELECT turn_id, parent_turn_id FROM turns WHERE turn_id = ?"
    " UNION ALL"
    " SELECT t.turn_id, t.parent_turn_id FROM turns t JOIN path p ON t.turn_id = p.parent_turn_id)"
)


def active_path(conn: sqlite3.Connection, from_turn_id: str | None, limit: int) -> list[PathTurn]:
    """The last `limit` turns of the path ending at `from_turn_id`, oldest first."""
    if from_turn_id is None or limit <= 0:
        return []
    rows = conn.execute(
        f"{_PATH} SELECT t.turn_id, t.user_message, t.reply, t.depth FROM turns t"
        " JOIN path USING (turn_id) WHERE t.status IN ('completed', 'stopped')"
        " ORDER BY t.depth DESC LIMIT ?",
        (from_turn_id, limit),
    ).fetchall()
    return [PathTurn(r[0], r[1], r[2], r[3]) for r in reversed(rows)]


def head_turn(conn: sqlite3.Connection, chat_id: str) -> tuple[str, int] | None:
    """The chat's head turn and its depth (None before its first completed turn)."""
    row = conn.execute(
        "SELECT t.turn_id, t.depth FROM chats c JOIN turns t ON t.turn_id = c.head_turn_id"
        " WHERE c.chat_id = ?",
        (chat_id,),
    ).fetchone()
    return (row[0], row[1]) if row else None


def conversation(conn: sqlite3.Connection, chat_id: str) -> list[dict[str, Any]]:
    """What the chat shows: the active path, unfinished or failed turns hanging off it, and
    the turns still queued (no parent yet).

    Ordered by depth, then by when each turn started; queued turns last, in queue order.
    Each turn says where it stands among its siblings (`sibling_index` from 1 of
    `siblings`, the turns with its parent that ended with a reply; 0 of them for a turn
    that did not).
    """
    turns = [
        dict(r)
        for r in conn.execute(
            "SELECT t.turn_id, t.trace_id, t.parent_turn_id, t.depth, t.status,"
            " t.user_message, t.reply, t.error, t.truncated, t.origin, t.variant_of, t.active"
            " FROM turns t WHERE t.chat_id = ? AND (t.active = 1"
            "  OR (t.status NOT IN ('completed', 'stopped') AND (t.parent_turn_id IS NULL"
            "      OR t.parent_turn_id IN (SELECT turn_id FROM turns WHERE chat_id = ?"
            "        AND active = 1))))"
            " ORDER BY t.depth IS NULL, t.depth, t.started_seq, t.queued_seq",
            (chat_id, chat_id),
        )
    ]
    groups = sibling_groups(conn, chat_id, {t["parent_turn_id"] for t in turns})
    for t in turns:
        group = groups.get(t["parent_turn_id"], [])
        t["siblings"] = list(group)
        t["sibling_index"] = group.index(t["turn_id"]) + 1 if t["turn_id"] in group else 0
    return turns


def sibling_groups(
    conn: sqlite3.Connection, chat_id: str, parents: set[str | None]
) -> dict[str | None, list[str]]:
    """For each parent (None: the chat's root), its children that ended with a reply
    (completed or stopped), in the order they started."""
    groups: dict[str | None, list[str]] = {}
    if not parents:
        return groups
    named = sorted(p for p in parents if p is not None)
    clauses, args = [], [chat_id]
    if None in parents:
        clauses.append("parent_turn_id IS NULL")
    for i in range(0, len(named), 500):
        chunk = named[i : i + 500]
        clauses.append(f"parent_turn_id IN ({','.join('?' * len(chunk))})")
        args += chunk
    for turn_id, parent in conn.execute(
        "SELECT turn_id, parent_turn_id FROM turns WHERE chat_id = ?"
        f" AND status IN ('completed', 'stopped') AND ({' OR '.join(clauses)})"
        " ORDER BY started_seq",
        args,
    ):
        groups.setdefault(parent, []).append(turn_id)
    return groups


def chat_tree(conn: sqlite3.Connection, chat_id: str) -> list[dict[str, Any]]:
    """Every turn of a chat with its parent and place in the tree, in the order they
    started (queued turns last)."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT turn_id, parent_turn_id, depth, status, active, origin, variant_of,"
            " truncated, user_message, reply, error FROM turns WHERE chat_id = ?"
            " ORDER BY started_seq IS NULL, started_seq, queued_seq",
            (chat_id,),
        )
    ]


# The events that move a chat's leaf, newest last in its stream.
LEAF_MOVES = (
    "chat.rewound",
    "rewind.undone",
    "branch.selected",
    "turn.regenerated",
    "turn.edited",
    "turn.completed",
    "turn.stopped",
)


def last_move(conn: sqlite3.Connection, chat_id: str) -> tuple[str, dict[str, Any]] | None:
    """The newest event that moved the chat's leaf: its type and payload (None: none)."""
    row = conn.execute(
        f"SELECT type, payload FROM events WHERE stream_id = ? AND type IN"
        f" ({', '.join('?' * len(LEAF_MOVES))}) ORDER BY stream_version DESC LIMIT 1",
        (f"chat:{chat_id}", *LEAF_MOVES),
    ).fetchone()
    return (str(row[0]), json.loads(row[1])) if row else None


def newest_leaf(conn: sqlite3.Connection, turn_id: str) -> str:
    """The newest turn that ended with a reply in the subtree of `turn_id` (itself if none
    below it did): where choosing that branch leads."""
    row = conn.execute(
        "WITH RECURSIVE down(turn_id) AS (SELECT ? UNION ALL"
        " SELECT t.turn_id FROM turns t JOIN down d ON t.parent_turn_id = d.turn_id)"
        " SELECT t.turn_id FROM turns t JOIN down USING (turn_id)"
        " WHERE t.status IN ('completed', 'stopped')"
        " ORDER BY t.started_seq DESC LIMIT 1",
        (turn_id,),
    ).fetchone()
    return row[0] if row else turn_id


def get_turn(conn: sqlite3.Connection, turn_id: str) -> dict[str, Any] | None:
    """One turn."""
    return _dict(conn.execute("SELECT * FROM turns WHERE turn_id = ?", (turn_id,)).fetchone())


def unfinished_turns(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Turns queued or started that never completed or failed (the process stopped).

    Started turns first, then queued ones in queue order (the order they are failed in).
    """
    return [
        dict(r)
        for r in conn.execute(
            "SELECT t.turn_id, t.chat_id, t.trace_id, t.status, c.persona_id FROM turns t"
            " JOIN chats c ON c.chat_id = t.chat_id WHERE t.status IN ('started', 'queued')"
            " ORDER BY t.status = 'queued', t.started_seq, t.queued_seq"
        )
    ]


def chat_state(conn: sqlite3.Connection, turn_id: str | None) -> ChatState | None:
    """The state snapshot a completed turn left (None for none, e.g. a 0.1.0 turn)."""
    if turn_id is None:
        return None
    row = conn.execute("SELECT state FROM chat_state WHERE turn_id = ?", (turn_id,)).fetchone()
    return ChatState.model_validate_json(row[0]) if row else None


def path_state(conn: sqlite3.Connection, turn_id: str | None) -> ChatState | None:
    """The newest state snapshot on the path ending at `turn_id` (a stopped turn leaves
    none: the state is its parent's)."""
    own = chat_state(conn, turn_id)
    if own is not None or turn_id is None:
        return own
    row = conn.execute(
        f"{_PATH}, ranked AS (SELECT p.turn_id, t.depth FROM path p JOIN turns t USING (turn_id))"
        " SELECT s.state FROM ranked r JOIN chat_state s USING (turn_id)"
        " ORDER BY r.depth DESC LIMIT 1",
        (turn_id,),
    ).fetchone()
    return ChatState.model_validate_json(row[0]) if row else None


def identity_state(conn: sqlite3.Connection, persona_id: str) -> IdentityState:
    """A persona's control state (traits, values, operator overrides); neutral when none."""
    row = conn.execute(
        "SELECT state FROM identity_state WHERE persona_id = ?", (persona_id,)
    ).fetchone()
    return IdentityState.model_validate_json(row[0]) if row else IdentityState()


def trace_events(conn: sqlite3.Connection, trace_id: str) -> list[Event]:
    """Every event of one turn, in order, typed."""
    return list(read_events(conn, trace_id=trace_id))


# ---- memory -------------------------------------------------------------------------------


_HIT_COLUMNS = (
    "m.memory_id, m.content, m.importance, m.created_at, m.chat_id, m.tier, m.kind, m.said,"
    " m.entities, m.source_ref"
)
# Who may recall an L1/L2 memory: a witness, or anyone when it is shared. Tombstoned,
# invalidated and pinned (L3, always in context anyway) memories are never candidates, nor
# those written by a turn that is not on an active path (an abandoned branch).
_RECALLABLE = (
    "m.persona_id = ? AND m.tier != 'L3' AND m.pinned = 0 AND m.tombstone = 0 AND m.active = 1"
    " AND m.invalid_at IS NULL AND (m.shared = 1 OR EXISTS (SELECT 1 FROM memory_witness w"
    " WHERE w.user_id = ? AND w.memory_id = m.memory_id))"
)


def _hit(r: Sequence[Any], lexical: float | None) -> MemoryHit:
    return MemoryHit(r[0], r[1], r[2], r[3], r[4], lexical, r[5], r[6], r[7], r[8], r[9])


def core_memory(conn: sqlite3.Connection, persona_id: str) -> MemoryHit | None:
    """The persona's L3 core memory (its genesis text)."""
    row = conn.execute(
        f"SELECT {_HIT_COLUMNS} FROM memory m WHERE m.memory_id = ?", (f"core:{persona_id}",)
    ).fetchone()
    return _hit(row, None) if row else None


def pinned_memories(
    conn: sqlite3.Connection, persona_id: str, user_id: str, limit: int
) -> list[MemoryHit]:
    """L3 memories besides the genesis (pinned ones, consolidated beliefs) that this user
    may see (witnessed or shared), oldest first: always in context."""
    rows = conn.execute(
        f"SELECT {_HIT_COLUMNS} FROM memory m WHERE m.persona_id = ?"
        " AND (m.pinned = 1 OR (m.tier = 'L3' AND m.kind = 'belief')) AND m.invalid_at IS NULL"
        " AND m.tombstone = 0 AND m.active = 1"
        " AND (m.shared = 1 OR EXISTS (SELECT 1 FROM memory_witness w"
        " WHERE w.user_id = ? AND w.memory_id = m.memory_id))"
        " ORDER BY m.pinned DESC, m.created_at, m.memory_id LIMIT ?",
        (persona_id, user_id, limit),
    ).fetchall()
    return [_hit(r, None) for r in rows]


def _fts_match(terms: Sequence[str]) -> str | None:
    # Each term quoted: no FTS5 syntax can be injected through a message.
    quoted = ['"' + t.replace('"', "") + '"' for t in terms if t.replace('"', "")]
    return " OR ".join(quoted) if quoted else None


def common_terms(conn: sqlite3.Connection, terms: Sequence[str], cap: int) -> list[str]:
    """The terms more than `cap` memories (of every persona) hold in their own words: too
    common to tell memories apart, and each would make BM25 score that many rows (about
    three times as many with the context column). Each count stops at cap + 1 rows, so
    the check costs at most `cap` rows per term."""
    common = []
    for term in terms:
        match = _fts_match([term])
        if match is None:
            continue
        match = f"{{content cjk}}: {match}"
        row = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM memory_fts WHERE memory_fts MATCH ? LIMIT ?)",
            (match, cap + 1),
        ).fetchone()
        if int(row[0]) > cap:
            common.append(term)
    return common


def search_memories(
    conn: sqlite3.Connection,
    persona_id: str,
    user_id: str,
    terms: Sequence[str],
    limit: int,
    context_weight: float = 0.3,
) -> list[MemoryHit]:
    """Recallable memories matching any term, best first, `lexical` scaled so the best is 1.

    BM25 over the memory's words (weight 1) and the words around it (`context_weight`)."""
    match = _fts_match(terms)
    if match is None:
        return []
    # Rank inside the full-text index first (its own rowid order, no join per match), then
    # keep the recallable ones; when too few of the best rows are this user's, look wider.
    weights = f"1.0, {float(context_weight)!r}, 1.0"  # words, context, CJK bigrams
    fetch = limit * 4
    while True:
        rows = conn.execute(
            f"SELECT {_HIT_COLUMNS}, f.score FROM (SELECT rowid, bm25(memory_fts, {weights})"
            " AS score FROM memory_fts WHERE memory_fts MATCH ? ORDER BY score LIMIT ?) f"
            f" JOIN memory m ON m.rowid = f.rowid WHERE {_RECALLABLE}"
            " ORDER BY f.score, m.memory_id LIMIT ?",
            (match, fetch, persona_id, user_id, limit),
        ).fetchall()
        if len(rows) >= limit or not _more_matches(conn, match, fetch):
            break
        fetch *= 4
    # SQLite's bm25() is negative, more negative is better.
    best = max((-r[10] for r in rows), default=0.0)
    return [_hit(r, (-r[10] / best) if best > 0 else 0.0) for r in rows]


def _more_matches(conn: sqlite3.Connection, match: str, fetched: int) -> bool:
    """Whether the index holds more than `fetched` matches (a wider look could find more)."""
    row = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM memory_fts WHERE memory_fts MATCH ? LIMIT ?)",
        (match, fetched + 1),
    ).fetchone()
    return int(row[0]) > fetched


def unembedded(
    conn: sqlite3.Connection, persona_id: str, model: str, limit: int
) -> list[tuple[str, str]]:
    """(memory_id, content) of live L1/L2 memories with no `model` vector yet, oldest first."""
    rows = conn.execute(
        "SELECT m.memory_id, m.content FROM memory m WHERE m.persona_id = ? AND m.tier != 'L3'"
        " AND m.tombstone = 0 AND m.active = 1 AND NOT EXISTS (SELECT 1 FROM memory_vector v"
        " WHERE v.memory_id = m.memory_id AND v.model = ?) ORDER BY m.rowid LIMIT ?",
        (persona_id, model, limit),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def memory_hits(conn: sqlite3.Connection, memory_ids: Sequence[str]) -> list[MemoryHit]:
    """These memories as candidates (not lexically matched), in the order given."""
    if not memory_ids:
        return []
    rows = conn.execute(
        f"SELECT {_HIT_COLUMNS} FROM json_each(?) j CROSS JOIN memory m"
        " ON m.memory_id = j.value ORDER BY j.key",
        (json.dumps(list(memory_ids)),),
    ).fetchall()
    return [_hit(r, None) for r in rows]


def recent_memories(
    conn: sqlite3.Connection, persona_id: str, user_id: str, limit: int
) -> list[MemoryHit]:
    """The newest recallable memories of a persona for this user."""
    if limit <= 0:
        return []
    rows = conn.execute(
        f"SELECT {_HIT_COLUMNS} FROM memory m WHERE {_RECALLABLE}"
        " ORDER BY m.created_at DESC, m.rowid DESC LIMIT ?",
        (persona_id, user_id, limit),
    ).fetchall()
    return [_hit(r, None) for r in rows]


def count_memories(conn: sqlite3.Connection, persona_id: str | None = None) -> int:
    """How many memories (of one persona, or all)."""
    if persona_id is None:
        return int(conn.execute("SELECT COUNT(*) FROM memory").fetchone()[0])
    row = conn.execute("SELECT COUNT(*) FROM memory WHERE persona_id = ?", (persona_id,))
    return int(row.fetchone()[0])


# ---- relationships and telemetry ----------------------------------------------------------


def get_edge(conn: sqlite3.Connection, src: str, rel: str, dst: str) -> dict[str, Any] | None:
    """One relationship edge."""
    return _dict(
        conn.execute("SELECT * FROM edge WHERE edge_id = ?", (f"{src}|{rel}|{dst}",)).fetchone()
    )


@dataclass(frozen=True)
class EdgeRow:
    """One edge of the persona's graph, as the projection holds it."""

    edge_id: str
    src: str
    rel: str
    dst: str
    weight: float
    evidence: int
    valid_from: str
    invalid_at: str | None


def _edge(r: sqlite3.Row) -> EdgeRow:
    return EdgeRow(
        r["edge_id"],
        r["src"],
        r["rel"],
        r["dst"],
        float(r["weight"]),
        int(r["evidence"]),
        r["valid_from"],
        r["invalid_at"],
    )


def current_edges(
    conn: sqlite3.Connection, persona_id: str, src: str, rels: Sequence[str]
) -> list[EdgeRow]:
    """The persona's edges from `src` with one of `rels` that no fact has retired, by id."""
    marks = ", ".join("?" for _ in rels)
    rows = conn.execute(
        "SELECT * FROM edge WHERE persona_id = ? AND src = ?"
        f" AND rel IN ({marks}) AND invalid_at IS NULL ORDER BY edge_id",
        (persona_id, src, *rels),
    ).fetchall()
    return [_edge(r) for r in rows]


def user_facts(
    conn: sqlite3.Connection, persona_id: str, user_id: str, limit: int
) -> list[EdgeRow]:
    """The current fact edges about a user (not retired), most supported first."""
    rows = conn.execute(
        "SELECT * FROM edge WHERE persona_id = ? AND src = ? AND invalid_at IS NULL"
        " ORDER BY evidence DESC, updated_at DESC, edge_id LIMIT ?",
        (persona_id, f"user:{user_id}", limit),
    ).fetchall()
    return [_edge(r) for r in rows]


def edge_weight(conn: sqlite3.Connection, src: str, rel: str, dst: str) -> float | None:
    """The weight of one edge (None when it does not exist yet)."""
    row = conn.execute("SELECT weight FROM edge WHERE edge_id = ?", (f"{src}|{rel}|{dst}",))
    found = row.fetchone()
    return float(found[0]) if found else None


def telemetry_history(conn: sqlite3.Connection, chat_id: str, limit: int) -> list[dict[str, Any]]:
    """The last telemetry rows of a chat, oldest first."""
    rows = conn.execute(
        "SELECT * FROM telemetry WHERE chat_id = ? ORDER BY recorded_at DESC, trace_id LIMIT ?",
        (chat_id, limit),
    ).fetchall()
    return [dict(r) for r in reversed(rows)]


def classifier_failures(conn: sqlite3.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """Recent structured-call failures."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT * FROM classifier_failures ORDER BY failed_at DESC LIMIT ?", (limit,)
        )
    ]
