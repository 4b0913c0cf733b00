"""The active path of each chat, and the state that follows it.

A chat's leaf (`chats.head_turn_id`: a completed or stopped turn, or NULL for the root)
names its active path: the leaf and its ancestors, flagged `turns.active`. Moving the leaf
(a rewind, its undo, a branch choice, a regenerate or edit starting from an earlier turn)
flips the flag of the turns leaving and entering the path, then recomputes exactly what
those turns touched, from per-turn entries the handlers keep:

- the memories they wrote (`memory.active`: never recalled while inactive);
- the access counts of the memories they used (`memory_access`);
- the edges they asserted or retired (`edge_log`, folded by `fold_edge`);
- the persona's identity state (`identity_log`: the newest active entry);
- the chat's summary (leaf, completed turns, last message, time) and the persona's.

The live handlers use the same fold, so the incremental result and a recomputation agree:
after any sequence of moves, the projections equal a fresh replay of only the events of
the turns on the active paths (tests/test_branches.py holds this with hypothesis).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

# Statuses a chat's leaf may have: a turn that ended with (some of) a reply.
LEAF_STATUSES = ("completed", "stopped")


def turn_of_trace(conn: sqlite3.Connection, trace_id: str | None) -> str | None:
    """The turn an event belongs to (None: not a turn's, e.g. an operator's or sleep's)."""
    if trace_id is None:
        return None
    row = conn.execute("SELECT turn_id FROM turns WHERE trace_id = ?", (trace_id,)).fetchone()
    return row[0] if row else None


def path_to(conn: sqlite3.Connection, leaf: str | None) -> list[str]:
    """The turn ids from `leaf` up to the chat's first turn (leaf first)."""
    if leaf is None:
        return []
    rows = conn.execute(
        "WITH RECURSIVE up(turn_id, parent) AS ("
        " SELECT turn_id, parent_turn_id FROM turns WHERE turn_id = ?"
        " UNION ALL SELECT t.turn_id, t.parent_turn_id FROM turns t JOIN up"
        " ON t.turn_id = up.parent) SELECT turn_id FROM up",
        (leaf,),
    ).fetchall()
    return [r[0] for r in rows]


def _in(ids: Sequence[str]) -> str:
    return ",".join("?" * len(ids))


def _chunks(ids: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def extend_leaf(conn: sqlite3.Connection, chat_id: str, turn_id: str) -> None:
    """A turn on the chat's leaf ended with a reply: it becomes the leaf.

    The turn's own events were folded onto the active state already, so only the flag
    and the summaries move. A turn that did not continue the leaf (the leaf moved while
    it ran) takes the full path switch instead.
    """
    row = conn.execute(
        "SELECT c.head_turn_id, t.parent_turn_id, t.active FROM chats c"
        " JOIN turns t ON t.turn_id = ? WHERE c.chat_id = ?",
        (turn_id, chat_id),
    ).fetchone()
    if row is None:
        return
    head, parent, active = row
    if parent != head or active:
        set_leaf(conn, chat_id, turn_id)
        return
    conn.execute("UPDATE turns SET active = 1 WHERE turn_id = ?", (turn_id,))
    _chat_summary(conn, chat_id, turn_id, extends=True)


def set_leaf(conn: sqlite3.Connection, chat_id: str, leaf: str | None) -> None:
    """Move the chat's leaf; recompute everything the turns leaving or entering touched."""
    old = {
        r[0]
        for r in conn.execute(
            "SELECT turn_id FROM turns WHERE chat_id = ? AND active = 1", (chat_id,)
        )
    }
    new = set(path_to(conn, leaf))
    leaving, entering = sorted(old - new), sorted(new - old)
    for ids, flag in ((leaving, 0), (entering, 1)):
        for chunk in _chunks(ids):
            conn.execute(
                f"UPDATE turns SET active = ? WHERE turn_id IN ({_in(chunk)})", (flag, *chunk)
            )
            conn.execute(
                f"UPDATE memory SET active = ? WHERE turn_id IN ({_in(chunk)})", (flag, *chunk)
            )
    _chat_summary(conn, chat_id, leaf)
    moved = leaving + entering
    if not moved:
        return
    row = conn.execute("SELECT persona_id FROM chats WHERE chat_id = ?", (chat_id,)).fetchone()
    if row is None:
        return
    persona_id = row[0]
    _refresh_access(conn, moved)
    _refold_edges(conn, leaving, entering)
    refresh_identity(conn, persona_id)
    _persona_summary(conn, persona_id)


def _chat_summary(
    conn: sqlite3.Connection, chat_id: str, leaf: str | None, extends: bool = False
) -> None:
    """The chat's leaf, completed turns on its path, last message and the wall time its
    leaf ended (its creation's for the root): the list's order, whatever the chat's clock.

    `extends`: the leaf is a child of the previous one, so the count grows by it alone.
    """
    if leaf is None:
        snippet_text, at = "", None
    else:
        msg = conn.execute(
            "SELECT content FROM messages WHERE turn_id = ? ORDER BY rowid DESC LIMIT 1", (leaf,)
        ).fetchone()
        ended = conn.execute(
            "SELECT ended_wall_at FROM turns WHERE turn_id = ?", (leaf,)
        ).fetchone()
        snippet_text, at = (msg[0] if msg else ""), (ended[0] if ended else None)
    from persona.projector.handlers import snippet  # one definition of the rail's snippet

    if extends:
        count_sql = "turn_count + (SELECT status = 'completed' FROM turns WHERE turn_id = ?)"
        count_arg = leaf
    else:
        count_sql = (
            "(SELECT COUNT(*) FROM turns WHERE chat_id = ? AND active = 1 AND status = 'completed')"
        )
        count_arg = chat_id
    conn.execute(
        "UPDATE chats SET head_turn_id = ?, last_snippet = ?,"
        f" updated_at = COALESCE(?, created_at), turn_count = {count_sql} WHERE chat_id = ?",
        (leaf, snippet(snippet_text), at, count_arg, chat_id),
    )


def _persona_summary(conn: sqlite3.Connection, persona_id: str) -> None:
    """The persona's completed turns on active paths, and the time of its newest change.

    Each chat keeps the count of its path's completed turns; a path's newest completed
    turn is its leaf, or (a stopped leaf) the deepest completed turn above it.
    """
    (count,) = conn.execute(
        "SELECT COALESCE(SUM(turn_count), 0) FROM chats WHERE persona_id = ?", (persona_id,)
    ).fetchone()
    newest_seq, newest_at = None, None
    for chat_id, status, seq, ended in conn.execute(
        "SELECT c.chat_id, t.status, t.completed_seq, t.ended_at FROM chats c"
        " JOIN turns t ON t.turn_id = c.head_turn_id WHERE c.persona_id = ?",
        (persona_id,),
    ).fetchall():
        if status != "completed":
            seq, ended = conn.execute(
                "SELECT completed_seq, ended_at FROM turns WHERE chat_id = ? AND active = 1"
                " AND status = 'completed' ORDER BY completed_seq DESC LIMIT 1",
                (chat_id,),
            ).fetchone() or (None, None)
        if seq is not None and (newest_seq is None or seq > newest_seq):
            newest_seq, newest_at = seq, ended
    revised_seq, revised_at = conn.execute(
        "SELECT revised_seq, revised_at FROM persona WHERE persona_id = ?", (persona_id,)
    ).fetchone() or (None, None)
    at = revised_at
    if newest_seq is not None and (revised_seq is None or newest_seq > revised_seq):
        at = newest_at
    conn.execute(
        "UPDATE persona SET turn_count = ?, updated_at = COALESCE(?, updated_at)"
        " WHERE persona_id = ?",
        (count, at, persona_id),
    )


# ---- memory access ---------------------------------------------------------------------


def record_access(
    conn: sqlite3.Connection, seq: int, turn_id: str | None, memory_ids: Sequence[str], at: str
) -> None:
    """Keep a turn's use of memories, and count it (the turn continues the active path)."""
    if turn_id is not None:
        conn.executemany(
            "INSERT OR IGNORE INTO memory_access (seq, memory_id, turn_id, at) VALUES (?, ?, ?, ?)",
            [(seq, mid, turn_id, at) for mid in memory_ids],
        )


def _refresh_access(conn: sqlite3.Connection, turn_ids: Sequence[str]) -> None:
    """Recount the memories the moved turns used, from the active turns' accesses."""
    touched: set[str] = set()
    for chunk in _chunks(turn_ids):
        touched.update(
            r[0]
            for r in conn.execute(
                f"SELECT memory_id FROM memory_access WHERE turn_id IN ({_in(chunk)})", chunk
            )
        )
    for mid in sorted(touched):
        count, last = conn.execute(
            "SELECT COUNT(*), (SELECT a2.at FROM memory_access a2 JOIN turns t2"
            "  ON t2.turn_id = a2.turn_id AND t2.active = 1 WHERE a2.memory_id = ?"
            "  ORDER BY a2.seq DESC LIMIT 1)"
            " FROM memory_access a JOIN turns t ON t.turn_id = a.turn_id AND t.active = 1"
            " WHERE a.memory_id = ?",
            (mid, mid),
        ).fetchone()
        conn.execute(
            "UPDATE memory SET access_count = ?, last_accessed = ? WHERE memory_id = ?",
            (count, last, mid),
        )


# ---- edges -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeEntry:
    """One change to an edge, as `edge_log` keeps it."""

    seq: int
    ord: int
    edge_id: str
    kind: str  # asserted | fact | superseded | retired
    turn_id: str | None
    persona_id: str
    src: str | None = None
    rel: str | None = None
    dst: str | None = None
    weight: float | None = None
    memory_id: str | None = None
    at: str = ""


@dataclass(frozen=True)
class EdgeState:
    """An edge row."""

    edge_id: str
    persona_id: str
    src: str
    rel: str
    dst: str
    weight: float
    evidence: int
    valid_from: str
    updated_at: str
    invalid_at: str | None
    source_memory: str | None


def fold_edge(state: EdgeState | None, e: EdgeEntry) -> EdgeState | None:
    """The edge after one entry: the only definition of what each change does."""
    if e.kind == "asserted":  # a relationship weight: the newest one wins
        if state is None:
            return EdgeState(
                e.edge_id, e.persona_id, e.src or "", e.rel or "", e.dst or "",
                e.weight if e.weight is not None else 0.0, 1, e.at, e.at, None, None,
            )  # fmt: skip
        return replace(state, weight=e.weight or 0.0, evidence=state.evidence + 1, updated_at=e.at)
    if e.kind == "fact":  # stated (again): current, sourced by the newest statement
        if state is None:
            return EdgeState(
                e.edge_id, e.persona_id, e.src or "", e.rel or "", e.dst or "",
                1.0, 1, e.at, e.at, None, e.memory_id,
            )  # fmt: skip
        valid_from = state.valid_from if state.invalid_at is None else e.at
        return replace(
            state,
            evidence=state.evidence + 1,
            updated_at=e.at,
            invalid_at=None,
            source_memory=e.memory_id,
            valid_from=valid_from,
        )
    if state is None or state.invalid_at is not None:
        return state
    if e.kind == "superseded" or (e.kind == "retired" and state.source_memory == e.memory_id):
        return replace(state, invalid_at=e.at, updated_at=e.at)
    return state


_EDGE_COLS = (
    "edge_id, persona_id, src, rel, dst, weight, evidence, valid_from, updated_at,"
    " invalid_at, source_memory"
)


def _read_edge(conn: sqlite3.Connection, edge_id: str) -> EdgeState | None:
    row = conn.execute(f"SELECT {_EDGE_COLS} FROM edge WHERE edge_id = ?", (edge_id,)).fetchone()
    return EdgeState(*row) if row else None


def _write_edge(conn: sqlite3.Connection, edge_id: str, state: EdgeState | None) -> None:
    if state is None:
        conn.execute("DELETE FROM edge WHERE edge_id = ?", (edge_id,))
        return
    conn.execute(
        f"INSERT INTO edge ({_EDGE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (edge_id) DO UPDATE SET persona_id = excluded.persona_id,"
        " src = excluded.src, rel = excluded.rel, dst = excluded.dst, weight = excluded.weight,"
        " evidence = excluded.evidence, valid_from = excluded.valid_from,"
        " updated_at = excluded.updated_at, invalid_at = excluded.invalid_at,"
        " source_memory = excluded.source_memory",
        (
            state.edge_id, state.persona_id, state.src, state.rel, state.dst, state.weight,
            state.evidence, state.valid_from, state.updated_at, state.invalid_at,
            state.source_memory,
        ),
    )  # fmt: skip


def apply_edge_entries(conn: sqlite3.Connection, entries: Sequence[EdgeEntry]) -> None:
    """Keep the entries and fold each onto its edge as it stands (live handlers)."""
    conn.executemany(
        "INSERT INTO edge_log (seq, ord, edge_id, kind, turn_id, persona_id, src, rel, dst,"
        " weight, memory_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (e.seq, e.ord, e.edge_id, e.kind, e.turn_id, e.persona_id, e.src, e.rel, e.dst,
             e.weight, e.memory_id, e.at)
            for e in entries
        ],
    )  # fmt: skip
    for e in entries:
        _write_edge(conn, e.edge_id, fold_edge(_read_edge(conn, e.edge_id), e))


_ACTIVE_ENTRY = (
    "SELECT l.seq, l.ord, l.edge_id, l.kind, l.turn_id, l.persona_id, l.src, l.rel, l.dst,"
    " l.weight, l.memory_id, l.at FROM edge_log l LEFT JOIN turns t ON t.turn_id = l.turn_id"
    " WHERE l.edge_id = ? AND (l.turn_id IS NULL OR t.active = 1)"
)


def _refold_edges(
    conn: sqlite3.Connection, leaving: Sequence[str], entering: Sequence[str]
) -> None:
    """Fold again, from their active entries, the edges the moved turns touched.

    An edge of weights only (`asserted`: a relationship, one entry per turn) has a closed
    form: its evidence moves by the entries entering and leaving, its weight is the newest
    active entry's and its start the oldest's. Fact edges (few entries) are folded again.
    """
    moved: dict[str, int] = {}
    for ids, sign in ((leaving, -1), (entering, 1)):
        for chunk in _chunks(ids):
            for edge_id, n in conn.execute(
                f"SELECT edge_id, COUNT(*) FROM edge_log WHERE turn_id IN ({_in(chunk)})"
                " GROUP BY edge_id",
                chunk,
            ):
                moved[edge_id] = moved.get(edge_id, 0) + sign * n
    for edge_id in sorted(moved):
        if not conn.execute(
            "SELECT 1 FROM edge_log WHERE edge_id = ? AND kind != 'asserted' LIMIT 1", (edge_id,)
        ).fetchone():
            _weights_edge(conn, edge_id, moved[edge_id])
            continue
        state: EdgeState | None = None
        for row in conn.execute(f"{_ACTIVE_ENTRY} ORDER BY l.seq, l.ord", (edge_id,)):
            state = fold_edge(state, EdgeEntry(*row))
        _write_edge(conn, edge_id, state)


def _weights_edge(conn: sqlite3.Connection, edge_id: str, delta: int) -> None:
    """fold_edge over `asserted` entries only, in closed form (see _refold_edges)."""
    newest = conn.execute(f"{_ACTIVE_ENTRY} ORDER BY l.seq DESC, l.ord DESC LIMIT 1", (edge_id,))
    last = newest.fetchone()
    if last is None:
        _write_edge(conn, edge_id, None)
        return
    first = EdgeEntry(
        *conn.execute(f"{_ACTIVE_ENTRY} ORDER BY l.seq, l.ord LIMIT 1", (edge_id,)).fetchone()
    )
    top = EdgeEntry(*last)
    old = _read_edge(conn, edge_id)
    evidence = (old.evidence if old else 0) + delta
    _write_edge(
        conn,
        edge_id,
        EdgeState(
            edge_id, first.persona_id, first.src or "", first.rel or "", first.dst or "",
            top.weight or 0.0, evidence, first.at, top.at, None, None,
        ),
    )  # fmt: skip


def retired_edges(conn: sqlite3.Connection, memory_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(edge, memory) for each edge a fact memory among `memory_ids` ever stated."""
    out: list[tuple[str, str]] = []
    for chunk in _chunks(list(memory_ids)):
        out += [
            (r[0], r[1])
            for r in conn.execute(
                "SELECT DISTINCT edge_id, memory_id FROM edge_log WHERE kind = 'fact'"
                f" AND memory_id IN ({_in(chunk)}) ORDER BY edge_id, memory_id",
                chunk,
            )
        ]
    return out


# ---- identity --------------------------------------------------------------------------


def refresh_identity(conn: sqlite3.Connection, persona_id: str) -> None:
    """The persona's identity state: its newest entry that is not on an abandoned branch."""
    row = conn.execute(
        "SELECT l.state, l.event_id, l.at FROM identity_log l"
        " LEFT JOIN turns t ON t.turn_id = l.turn_id"
        " WHERE l.persona_id = ? AND (l.turn_id IS NULL OR t.active = 1)"
        " ORDER BY l.seq DESC LIMIT 1",
        (persona_id,),
    ).fetchone()
    if row is None:
        conn.execute("DELETE FROM identity_state WHERE persona_id = ?", (persona_id,))
        return
    conn.execute(
        "INSERT INTO identity_state (persona_id, state, event_id, updated_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (persona_id) DO UPDATE SET state = excluded.state,"
        " event_id = excluded.event_id, updated_at = excluded.updated_at",
        (persona_id, row[0], row[1], row[2]),
    )
