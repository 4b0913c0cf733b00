"""One pure handler per event type: fold a typed event into the projection tables.

Handlers read only the connection they are given and the event; time comes from the
event, never from a clock, so replaying the log gives the same bytes.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from persona.events import (
    BeliefRevised,
    ChatStarted,
    ChatStateRecorded,
    ClassifierFailed,
    EdgeAsserted,
    EventPayload,
    IdentityUpdated,
    MemoryRetrieval,
    MemoryWritten,
    Metacognition,
    OperatorOverride,
    Perception,
    PersonaCreated,
    PersonaRevised,
    ReplyCompleted,
    TelemetryRecorded,
    TurnCompleted,
    TurnFailed,
    TurnQueued,
    TurnStarted,
    Workspace,
)
from persona.events.chats import ChatArchived, ChatRenamed, ChatRestored
from persona.events.clock import ChatClockSet
from persona.events.memory import (
    FactRecorded,
    MemoryAccessed,
    MemoryConsolidated,
    MemoryDeleted,
    MemoryEdited,
    MemoryEmbedded,
    MemoryPinned,
)
from persona.events.tree import (
    BranchSelected,
    ChatRewound,
    RewindUndone,
    TurnEdited,
    TurnRegenerated,
    TurnStopped,
)
from persona.projector.branches import (
    EdgeEntry,
    apply_edge_entries,
    extend_leaf,
    record_access,
    retired_edges,
    set_leaf,
    turn_of_trace,
)
from persona.projector.clock import chat_clock_set
from persona.storage.eventlog import Event
from persona.textnorm import cjk_index_text

P = TypeVar("P", bound=EventPayload)
Handler = Callable[[sqlite3.Connection, Event], None]


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _at(e: Event) -> str:
    return e.chat_time or e.wall_time


def persona_created(conn: sqlite3.Connection, e: Event, p: PersonaCreated) -> None:
    conn.execute(
        "INSERT INTO persona (persona_id, name, description, genesis, traits, created_at,"
        " updated_at, turn_count, revised_seq, revised_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
        (
            p.persona_id,
            p.name,
            p.description,
            p.genesis,
            _json(p.traits),
            _at(e),
            _at(e),
            e.seq,
            _at(e),
        ),
    )
    _insert_memory(
        conn,
        MemoryWritten(
            memory_id=f"core:{p.persona_id}",
            persona_id=p.persona_id,
            tier="L3",
            kind="core",
            content=p.genesis,
            importance=1.0,
        ),
        e,
    )


def persona_revised(conn: sqlite3.Connection, e: Event, p: PersonaRevised) -> None:
    c = p.current
    conn.execute(
        "UPDATE persona SET name = ?, description = ?, genesis = ?, traits = ?, updated_at = ?,"
        " revised_seq = ?, revised_at = ? WHERE persona_id = ?",
        (c.name, c.description, c.genesis, _json(c.traits), _at(e), e.seq, _at(e), p.persona_id),
    )
    # The core memory follows the genesis (its FTS row too).
    _set_content(conn, f"core:{p.persona_id}", c.genesis)


def chat_started(conn: sqlite3.Connection, e: Event, p: ChatStarted) -> None:
    cursor = conn.execute(
        "INSERT INTO chats (chat_id, persona_id, user_id, title, head_turn_id, created_at,"
        " updated_at, turn_count) VALUES (?, ?, ?, ?, NULL, ?, ?, 0)",
        # Wall time: the list's order and the persona's idleness are real time (the
        # chat's own clock dates its messages and memories).
        (p.chat_id, p.persona_id, p.user_id, p.title, e.wall_time, e.wall_time),
    )
    conn.execute(
        "INSERT INTO chat_title_fts (rowid, title) VALUES (?, ?)", (cursor.lastrowid, p.title)
    )


def chat_renamed(conn: sqlite3.Connection, e: Event, p: ChatRenamed) -> None:
    row = conn.execute("SELECT rowid, title FROM chats WHERE chat_id = ?", (p.chat_id,)).fetchone()
    if row is None:
        return
    # External content: the index forgets the old words before the row changes.
    conn.execute(
        "INSERT INTO chat_title_fts (chat_title_fts, rowid, title) VALUES ('delete', ?, ?)",
        (row[0], row[1]),
    )
    conn.execute("UPDATE chats SET title = ? WHERE rowid = ?", (p.title, row[0]))
    conn.execute("INSERT INTO chat_title_fts (rowid, title) VALUES (?, ?)", (row[0], p.title))


def chat_archived(conn: sqlite3.Connection, e: Event, p: ChatArchived) -> None:
    conn.execute("UPDATE chats SET archived = 1 WHERE chat_id = ?", (p.chat_id,))


def chat_restored(conn: sqlite3.Connection, e: Event, p: ChatRestored) -> None:
    conn.execute("UPDATE chats SET archived = 0 WHERE chat_id = ?", (p.chat_id,))


def _head(conn: sqlite3.Connection, chat_id: str) -> tuple[str, int] | None:
    """The chat's newest completed turn and its depth (None before one completed)."""
    row = conn.execute(
        "SELECT t.turn_id, t.depth FROM chats c JOIN turns t ON t.turn_id = c.head_turn_id"
        " WHERE c.chat_id = ?",
        (chat_id,),
    ).fetchone()
    return (row[0], row[1]) if row else None


def turn_queued(conn: sqlite3.Connection, e: Event, p: TurnQueued) -> None:
    # No parent or depth yet: the turns ahead of it decide what it will continue.
    conn.execute(
        "INSERT INTO turns (turn_id, chat_id, trace_id, queued_seq, status, user_message)"
        " VALUES (?, ?, ?, ?, 'queued', ?)",
        (p.turn_id, p.chat_id, e.trace_id, e.seq, p.message),
    )


def turn_started(conn: sqlite3.Connection, e: Event, p: TurnStarted) -> None:
    parent, depth = p.parent_turn_id, p.depth
    if p.linear:  # a 0.1.0 turn: it continued the chat's newest completed turn
        head = _head(conn, p.chat_id)
        parent, depth = (head[0], head[1] + 1) if head else (None, 0)
    # A queued turn's row gets its place in the tree; a turn logged before turns were
    # queued (or run without the runner) gets its row now.
    conn.execute(
        "INSERT INTO turns (turn_id, chat_id, trace_id, parent_turn_id, depth, started_seq,"
        " status, user_message, started_at) VALUES (?, ?, ?, ?, ?, ?, 'started', ?, ?)"
        " ON CONFLICT (turn_id) DO UPDATE SET parent_turn_id = excluded.parent_turn_id,"
        " depth = excluded.depth, started_seq = excluded.started_seq, status = 'started',"
        " started_at = excluded.started_at",
        (p.turn_id, p.chat_id, e.trace_id, parent, depth, e.seq, p.message, _at(e)),
    )
    _insert_message(conn, e, p.chat_id, p.turn_id, "user", p.message)


def reply_completed(conn: sqlite3.Connection, e: Event, p: ReplyCompleted) -> None:
    _insert_message(conn, e, p.chat_id, p.turn_id, "assistant", p.reply)


def turn_completed(conn: sqlite3.Connection, e: Event, p: TurnCompleted) -> None:
    conn.execute(
        "UPDATE turns SET status = 'completed', reply = ?, ended_at = ?, ended_wall_at = ?,"
        " completed_seq = ? WHERE turn_id = ?",
        (p.reply, _at(e), e.wall_time, e.seq, p.turn_id),
    )
    conn.execute(
        "UPDATE persona SET turn_count = turn_count + 1, updated_at = ? WHERE persona_id = ?",
        (_at(e), p.persona_id),
    )
    extend_leaf(conn, p.chat_id, p.turn_id)


def turn_stopped(conn: sqlite3.Connection, e: Event, p: TurnStopped) -> None:
    # What streamed is kept as the turn's reply, marked truncated; it ends the path.
    conn.execute(
        "UPDATE turns SET status = 'stopped', reply = ?, truncated = ?, ended_at = ?,"
        " ended_wall_at = ? WHERE turn_id = ?",
        (p.partial_reply, int(p.truncated), _at(e), e.wall_time, p.turn_id),
    )
    if p.partial_reply:
        _insert_message(conn, e, p.chat_id, p.turn_id, "assistant", p.partial_reply)
    extend_leaf(conn, p.chat_id, p.turn_id)


def turn_regenerated(conn: sqlite3.Connection, e: Event, p: TurnRegenerated) -> None:
    conn.execute(
        "UPDATE turns SET origin = 'regenerate', variant_of = ? WHERE turn_id = ?",
        (p.of_turn_id, p.turn_id),
    )
    # The new turn runs on the state its sibling saw: the path ends at their parent.
    set_leaf(conn, p.chat_id, p.parent_turn_id)


def turn_edited(conn: sqlite3.Connection, e: Event, p: TurnEdited) -> None:
    conn.execute(
        "UPDATE turns SET origin = 'edit', variant_of = ? WHERE turn_id = ?",
        (p.of_turn_id, p.turn_id),
    )
    set_leaf(conn, p.chat_id, p.parent_turn_id)


def chat_rewound(conn: sqlite3.Connection, e: Event, p: ChatRewound | RewindUndone) -> None:
    set_leaf(conn, p.chat_id, p.to_turn_id)


def branch_selected(conn: sqlite3.Connection, e: Event, p: BranchSelected) -> None:
    set_leaf(conn, p.chat_id, p.leaf_turn_id)


def turn_failed(conn: sqlite3.Connection, e: Event, p: TurnFailed) -> None:
    row = conn.execute("SELECT status FROM turns WHERE turn_id = ?", (p.turn_id,)).fetchone()
    if row is not None and row[0] == "queued":
        # It never started: shown where the conversation stood when it failed, after
        # the turns that did start.
        head = _head(conn, p.chat_id)
        parent, depth = (head[0], head[1] + 1) if head else (None, 0)
        conn.execute(
            "UPDATE turns SET parent_turn_id = ?, depth = ?, started_seq = ? WHERE turn_id = ?",
            (parent, depth, e.seq, p.turn_id),
        )
    conn.execute(
        "UPDATE turns SET status = 'failed', error = ?, ended_at = ? WHERE turn_id = ?",
        (p.error, _at(e), p.turn_id),
    )


def memory_written(conn: sqlite3.Connection, e: Event, p: MemoryWritten) -> None:
    _insert_memory(conn, p, e)


def edge_asserted(conn: sqlite3.Connection, e: Event, p: EdgeAsserted) -> None:
    entry = EdgeEntry(
        seq=e.seq,
        ord=0,
        edge_id=f"{p.src}|{p.rel}|{p.dst}",
        kind="asserted",
        turn_id=p.turn_id or turn_of_trace(conn, e.trace_id),
        persona_id=p.persona_id,
        src=p.src,
        rel=p.rel,
        dst=p.dst,
        weight=p.weight,
        at=_at(e),
    )
    apply_edge_entries(conn, [entry])


def telemetry_recorded(conn: sqlite3.Connection, e: Event, p: TelemetryRecorded) -> None:
    turn_id = p.turn_id
    if turn_id is None:  # a 0.1.0 row: its trace names the turn
        row = conn.execute("SELECT turn_id FROM turns WHERE trace_id = ?", (e.trace_id,))
        found = row.fetchone()
        turn_id = found[0] if found else None
    t = p.telemetry
    conn.execute(
        "INSERT INTO telemetry (trace_id, chat_id, persona_id, turn_id, c, n, m, s, r,"
        " dialogue_state, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            e.trace_id,
            p.chat_id,
            p.persona_id,
            turn_id,
            t.C,
            t.N,
            t.M,
            t.S,
            t.R,
            p.dialogue_state,
            _at(e),
        ),
    )


def chat_state_recorded(conn: sqlite3.Connection, e: Event, p: ChatStateRecorded) -> None:
    conn.execute(
        "INSERT INTO chat_state (turn_id, chat_id, state, recorded_at) VALUES (?, ?, ?, ?)",
        (p.turn_id, p.chat_id, _json(p.state.model_dump(mode="json")), _at(e)),
    )


def identity_recorded(
    conn: sqlite3.Connection, e: Event, p: IdentityUpdated | OperatorOverride
) -> None:
    """Keep the newest control state per persona (each event carries the whole state)."""
    state = _json(p.state.model_dump(mode="json"))
    # Kept per entry: a branch switch picks the newest one still on an active path.
    turn_id = p.turn_id if isinstance(p, IdentityUpdated) else None
    conn.execute(
        "INSERT INTO identity_log (seq, persona_id, turn_id, event_id, state, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (e.seq, p.persona_id, turn_id, e.event_id, state, _at(e)),
    )
    conn.execute(
        "INSERT INTO identity_state (persona_id, state, event_id, updated_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (persona_id) DO UPDATE SET state = excluded.state,"
        " event_id = excluded.event_id, updated_at = excluded.updated_at",
        (p.persona_id, state, e.event_id, _at(e)),
    )


def classifier_failed(conn: sqlite3.Connection, e: Event, p: ClassifierFailed) -> None:
    conn.execute(
        "INSERT INTO classifier_failures (event_id, trace_id, stage, schema_name, model,"
        " error, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (e.event_id, e.trace_id, p.stage, p.schema_name, p.model, p.error, p.attempts, _at(e)),
    )


def record_only(conn: sqlite3.Connection, e: Event, p: EventPayload) -> None:
    """Decision events live in the log (trace viewer, meta); no table folds them."""


def _insert_message(
    conn: sqlite3.Connection, e: Event, chat_id: str, turn_id: str, role: str, content: str
) -> None:
    cursor = conn.execute(
        "INSERT INTO messages (message_id, chat_id, turn_id, role, content, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (e.event_id, chat_id, turn_id, role, content, _at(e)),
    )
    conn.execute(
        "INSERT INTO message_fts (rowid, content) VALUES (?, ?)", (cursor.lastrowid, content)
    )


# The chat list shows this many characters of a chat's last message.
SNIPPET_CHARS = 120


def snippet(text: str) -> str:
    """The start of a message on one line, cut with an ellipsis past SNIPPET_CHARS."""
    line = " ".join(text.split())
    return line if len(line) <= SNIPPET_CHARS else line[: SNIPPET_CHARS - 1].rstrip() + "…"


# An L1 memory is indexed with the words of this many memories before it in its chat,
# looked for at most this many turns up its path (turns that wrote none are skipped).
CONTEXT_MEMORIES = 2
CONTEXT_WALK = 16


def _context(conn: sqlite3.Connection, p: MemoryWritten) -> str:
    """The words of the memories written just before this one in the same chat: a
    question about a moment often shares its words with the lines around the answer."""
    if p.tier != "L1" or p.chat_id is None:
        return ""
    if (
        p.turn_id is not None
        and conn.execute("SELECT 1 FROM turns WHERE turn_id = ?", (p.turn_id,)).fetchone()
    ):
        # Before it on its own path: the turn's earlier memories, then its ancestors'
        # (a sibling branch's memories are not its context).
        rows = conn.execute(
            "WITH RECURSIVE up(turn_id, parent, n) AS ("
            " SELECT turn_id, parent_turn_id, 0 FROM turns WHERE turn_id = ?"
            " UNION ALL SELECT t.turn_id, t.parent_turn_id, up.n + 1 FROM turns t JOIN up"
            " ON t.turn_id = up.parent WHERE up.n < ?)"
            " SELECT m.content FROM up JOIN memory m ON m.turn_id = up.turn_id"
            " WHERE m.chat_id = ? AND m.tier = 'L1' ORDER BY up.n, m.rowid DESC LIMIT ?",
            (p.turn_id, CONTEXT_WALK, p.chat_id, CONTEXT_MEMORIES),
        ).fetchall()
        return "\n".join(r[0] for r in reversed(rows))
    # A chat belongs to one persona: chat and tier pick the memory_chat index.
    rows = conn.execute(
        "SELECT content FROM memory WHERE chat_id = ? AND tier = 'L1' ORDER BY rowid DESC LIMIT ?",
        (p.chat_id, CONTEXT_MEMORIES),
    ).fetchall()
    return "\n".join(r[0] for r in reversed(rows))


def _insert_memory(conn: sqlite3.Connection, p: MemoryWritten, e: Event) -> None:
    witnesses = list(p.witnesses)
    if not witnesses and p.chat_id is not None and p.tier == "L1":
        # Written before witnesses were recorded: the chat's user was there.
        row = conn.execute("SELECT user_id FROM chats WHERE chat_id = ?", (p.chat_id,)).fetchone()
        witnesses = [row[0]] if row else []
    context = _context(conn, p)
    cjk = cjk_index_text(p.content)
    cursor = conn.execute(
        "INSERT INTO memory (memory_id, persona_id, tier, kind, content, context, cjk, said,"
        " importance, importance_score, chat_id, turn_id, trace_id, created_at, wall_time,"
        " entities, shared, source_ref, valid_from)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            p.memory_id,
            p.persona_id,
            p.tier,
            p.kind,
            p.content,
            context,
            cjk,
            _json([u.model_dump() for u in p.said]),
            p.importance,
            p.importance_score,
            p.chat_id,
            p.turn_id,
            e.trace_id,
            _at(e),
            e.wall_time,
            _json(p.entities),
            int(p.shared or p.kind == "core"),
            p.source_ref,
            p.valid_from,
        ),
    )
    conn.execute(
        "INSERT INTO memory_fts (rowid, content, context, cjk) VALUES (?, ?, ?, ?)",
        (cursor.lastrowid, p.content, context, cjk),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO memory_witness (user_id, memory_id) VALUES (?, ?)",
        [(user, p.memory_id) for user in sorted(set(witnesses))],
    )


def memory_accessed(conn: sqlite3.Connection, e: Event, p: MemoryAccessed) -> None:
    record_access(conn, e.seq, p.turn_id, p.memory_ids, _at(e))
    conn.executemany(
        "UPDATE memory SET last_accessed = ?, access_count = access_count + 1"
        " WHERE memory_id = ? AND persona_id = ?",
        [(_at(e), mid, p.persona_id) for mid in p.memory_ids],
    )


def _set_content(conn: sqlite3.Connection, memory_id: str, content: str) -> None:
    row = conn.execute(
        "SELECT rowid, content, context, cjk FROM memory WHERE memory_id = ?", (memory_id,)
    ).fetchone()
    if row is None or row[1] == content:
        return
    conn.execute(
        "INSERT INTO memory_fts (memory_fts, rowid, content, context, cjk)"
        " VALUES ('delete', ?, ?, ?, ?)",
        (row[0], row[1], row[2], row[3]),
    )
    cjk = cjk_index_text(content)
    conn.execute("UPDATE memory SET content = ?, cjk = ? WHERE rowid = ?", (content, cjk, row[0]))
    conn.execute(
        "INSERT INTO memory_fts (rowid, content, context, cjk) VALUES (?, ?, ?, ?)",
        (row[0], content, row[2], cjk),
    )


def memory_edited(conn: sqlite3.Connection, e: Event, p: MemoryEdited) -> None:
    _set_content(conn, p.memory_id, p.content)
    # The edited words are the memory now: who-said-what no longer describes them.
    conn.execute(
        "UPDATE memory SET said = '[]', version = ? WHERE memory_id = ? AND persona_id = ?",
        (p.revision, p.memory_id, p.persona_id),
    )
    # Its vector described the old words: it is embedded again after the next turn.
    conn.execute("DELETE FROM memory_vector WHERE memory_id = ?", (p.memory_id,))


def memory_pinned(conn: sqlite3.Connection, e: Event, p: MemoryPinned) -> None:
    conn.execute(
        "UPDATE memory SET pinned = ? WHERE memory_id = ? AND persona_id = ?",
        (int(p.pinned), p.memory_id, p.persona_id),
    )


def memory_deleted(conn: sqlite3.Connection, e: Event, p: MemoryDeleted) -> None:
    # The row and its index entry stay (the index must match its content table); every
    # read filters tombstones out.
    conn.execute(
        "UPDATE memory SET tombstone = 1, pinned = 0 WHERE memory_id = ? AND persona_id = ?",
        (p.memory_id, p.persona_id),
    )
    # What was derived from it goes too: deleting an exchange deletes the facts its turn
    # stated, and a deleted fact memory retires the edge it stated (never deleted).
    row = conn.execute(
        "SELECT turn_id, kind FROM memory WHERE memory_id = ? AND persona_id = ?",
        (p.memory_id, p.persona_id),
    ).fetchone()
    if row is None:
        return
    gone = [p.memory_id]
    if row[1] == "exchange" and row[0] is not None:
        facts = conn.execute(
            "SELECT memory_id FROM memory WHERE turn_id = ? AND kind = 'fact' AND persona_id = ?"
            " ORDER BY rowid",
            (row[0], p.persona_id),
        ).fetchall()
        gone += [f[0] for f in facts]
        conn.executemany(
            "UPDATE memory SET tombstone = 1, pinned = 0 WHERE memory_id = ?",
            [(f[0],) for f in facts],
        )
    # The retirements belong to the memory's turn: they follow its branch.
    apply_edge_entries(
        conn,
        [
            EdgeEntry(
                seq=e.seq,
                ord=i,
                edge_id=edge_id,
                kind="retired",
                turn_id=row[0],
                persona_id=p.persona_id,
                memory_id=mid,
                at=_at(e),
            )
            for i, (edge_id, mid) in enumerate(retired_edges(conn, gone))
        ],
    )


def memory_consolidated(conn: sqlite3.Connection, e: Event, p: MemoryConsolidated) -> None:
    conn.executemany(
        "UPDATE memory SET consolidated_into = ? WHERE memory_id = ? AND persona_id = ?",
        [
            (digest, mid, p.persona_id)
            for digest, sources in sorted(p.digests.items())
            for mid in sources
        ],
    )
    # A merged duplicate points at the memory it repeats; both stay retrievable.
    conn.executemany(
        "UPDATE memory SET consolidated_into = COALESCE(consolidated_into, ?)"
        " WHERE memory_id = ? AND persona_id = ?",
        [(kept, dup, p.persona_id) for dup, kept in p.merged],
    )
    conn.executemany(
        "UPDATE memory SET invalid_at = ? WHERE memory_id = ? AND persona_id = ?",
        [(_at(e), mid, p.persona_id) for mid in p.superseded],
    )


def fact_recorded(conn: sqlite3.Connection, e: Event, p: FactRecorded) -> None:
    # The contradicted edges retire first; then the fact, said again (or true again after
    # it was retired), is current again (persona.projector.branches.fold_edge).
    turn_id = p.turn_id or turn_of_trace(conn, e.trace_id)
    at = _at(e)
    entries = [
        EdgeEntry(e.seq, i, edge_id, "superseded", turn_id, p.persona_id, at=at)
        for i, edge_id in enumerate(p.supersedes)
    ]
    entries.append(
        EdgeEntry(
            seq=e.seq,
            ord=len(entries),
            edge_id=p.edge_id,
            kind="fact",
            turn_id=turn_id,
            persona_id=p.persona_id,
            src=p.src,
            rel=p.rel,
            dst=p.dst,
            memory_id=p.memory_id,
            at=at,
        )
    )
    apply_edge_entries(conn, entries)


def memory_embedded(conn: sqlite3.Connection, e: Event, p: MemoryEmbedded) -> None:
    # A new rowid above every earlier one, even when this replaces the newest row: search
    # caches refresh by reading rowid > the last they saw (persona.pipeline.dense).
    (top,) = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM memory_vector").fetchone()
    conn.execute("DELETE FROM memory_vector WHERE memory_id = ?", (p.memory_id,))
    conn.execute(
        "INSERT INTO memory_vector (rowid, memory_id, persona_id, model, dim, vector)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (top + 1, p.memory_id, p.persona_id, p.model, p.dim, base64.b64decode(p.vector)),
    )


def _handler(cls: type[P], fn: Callable[[sqlite3.Connection, Event, P], None]) -> Handler:
    def handle(conn: sqlite3.Connection, e: Event) -> None:
        payload = e.payload
        if not isinstance(payload, cls):
            raise TypeError(f"{cls.__name__} handler got {type(payload).__name__}")
        fn(conn, e, payload)

    return handle


# Keyed by payload class; a test checks this and the event catalog cover each other.
HANDLERS: Mapping[type[EventPayload], Handler] = MappingProxyType(
    {
        PersonaCreated: _handler(PersonaCreated, persona_created),
        PersonaRevised: _handler(PersonaRevised, persona_revised),
        ChatStarted: _handler(ChatStarted, chat_started),
        TurnQueued: _handler(TurnQueued, turn_queued),
        TurnStarted: _handler(TurnStarted, turn_started),
        Perception: _handler(Perception, record_only),
        ClassifierFailed: _handler(ClassifierFailed, classifier_failed),
        MemoryRetrieval: _handler(MemoryRetrieval, record_only),
        Workspace: _handler(Workspace, record_only),
        BeliefRevised: _handler(BeliefRevised, record_only),
        Metacognition: _handler(Metacognition, record_only),
        ReplyCompleted: _handler(ReplyCompleted, reply_completed),
        MemoryWritten: _handler(MemoryWritten, memory_written),
        MemoryAccessed: _handler(MemoryAccessed, memory_accessed),
        MemoryEdited: _handler(MemoryEdited, memory_edited),
        MemoryPinned: _handler(MemoryPinned, memory_pinned),
        MemoryDeleted: _handler(MemoryDeleted, memory_deleted),
        MemoryConsolidated: _handler(MemoryConsolidated, memory_consolidated),
        MemoryEmbedded: _handler(MemoryEmbedded, memory_embedded),
        FactRecorded: _handler(FactRecorded, fact_recorded),
        EdgeAsserted: _handler(EdgeAsserted, edge_asserted),
        TelemetryRecorded: _handler(TelemetryRecorded, telemetry_recorded),
        ChatStateRecorded: _handler(ChatStateRecorded, chat_state_recorded),
        IdentityUpdated: _handler(IdentityUpdated, identity_recorded),
        OperatorOverride: _handler(OperatorOverride, identity_recorded),
        TurnCompleted: _handler(TurnCompleted, turn_completed),
        TurnFailed: _handler(TurnFailed, turn_failed),
        ChatRenamed: _handler(ChatRenamed, chat_renamed),
        ChatArchived: _handler(ChatArchived, chat_archived),
        ChatRestored: _handler(ChatRestored, chat_restored),
        ChatClockSet: _handler(ChatClockSet, chat_clock_set),
        TurnRegenerated: _handler(TurnRegenerated, turn_regenerated),
        TurnEdited: _handler(TurnEdited, turn_edited),
        TurnStopped: _handler(TurnStopped, turn_stopped),
        ChatRewound: _handler(ChatRewound, chat_rewound),
        RewindUndone: _handler(RewindUndone, chat_rewound),
        BranchSelected: _handler(BranchSelected, branch_selected),
    }
)
