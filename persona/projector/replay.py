"""Rebuild projections from the log, and verify them against a scratch replay."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from persona.projector import (
    FTS_TABLES,
    PROJECTION_TABLES,
    Progress,
    Projector,
    clear_projections,
    replay_log,
)
from persona.storage.db import connect
from persona.storage.eventlog import count_events
from persona.storage.migrations import migrate


def rebuild(conn: sqlite3.Connection, progress: Progress | None = None) -> int:
    """Drop the projections and replay the whole log, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        clear_projections(conn)
        count = replay_log(conn, progress)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return count


def _primary_key(conn: sqlite3.Connection, table: str) -> list[str]:
    cols = conn.execute(f"PRAGMA table_info({table})").fetchall()
    return [c[1] for c in sorted(cols, key=lambda c: c[5]) if c[5]]


def table_digest(conn: sqlite3.Connection, table: str) -> str:
    """sha256 of a table's rows in primary-key order, as canonical JSON (BLOBs as hex)."""
    order = ", ".join(_primary_key(conn, table)) or "rowid"
    digest = hashlib.sha256()
    cursor = conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
    names = [d[0] for d in cursor.description]
    for row in cursor:
        values = dict(zip(names, row, strict=True))
        digest.update(json.dumps(values, sort_keys=True, default=bytes.hex).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def projection_digests(conn: sqlite3.Connection) -> dict[str, str]:
    """Digest of every projection table, plus whether each FTS index agrees with its table."""
    digests = {table: table_digest(conn, table) for table in PROJECTION_TABLES}
    for fts in FTS_TABLES:
        try:
            # 'integrity-check' raises when the full-text index is out of step with its content.
            conn.execute(f"INSERT INTO {fts} ({fts}, rank) VALUES ('integrity-check', 1)")
            digests[fts] = "consistent"
        except sqlite3.DatabaseError as exc:
            digests[fts] = f"INCONSISTENT ({exc})"
    return digests


def combined(digests: dict[str, str]) -> str:
    """One digest over all per-table digests."""
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def verify(
    db_path: Path, scratch_path: Path, progress: Progress | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Replay the live log into a scratch DB; return (live digests, replayed digests)."""
    live = connect(db_path)
    try:
        live_digests = projection_digests(live)
        scratch = connect(scratch_path)
        try:
            migrate(scratch, rebuild=Projector().rebuild)
            scratch.execute("ATTACH DATABASE ? AS live", (str(db_path),))
            scratch.execute("BEGIN IMMEDIATE")
            scratch.execute("INSERT INTO main.events SELECT * FROM live.events ORDER BY seq")
            scratch.execute("COMMIT")
            scratch.execute("DETACH DATABASE live")
            assert count_events(scratch) == count_events(live)
            scratch.execute("BEGIN IMMEDIATE")
            replay_log(scratch, progress)
            scratch.execute("COMMIT")
            replayed = projection_digests(scratch)
        finally:
            scratch.close()
    finally:
        live.close()
    return live_digests, replayed


# What each projection holds of the active paths: its rows that belong to no turn or to a
# turn on an active path. A fresh database that replayed only the events of those turns
# holds exactly these rows (persona.projector.branches; tests/test_branches.py).
_ON_PATH = "(SELECT turn_id FROM turns WHERE active = 1)"
ACTIVE_VIEWS: dict[str, str] = {
    "persona": "SELECT * FROM persona",
    "chats": "SELECT * FROM chats",
    "turns": "SELECT * FROM turns WHERE active = 1",
    "messages": f"SELECT * FROM messages WHERE turn_id IN {_ON_PATH}",
    "memory": f"SELECT * FROM memory WHERE turn_id IS NULL OR turn_id IN {_ON_PATH}",
    "memory_witness": "SELECT w.* FROM memory_witness w JOIN memory m USING (memory_id)"
    f" WHERE m.turn_id IS NULL OR m.turn_id IN {_ON_PATH}",
    "memory_vector": "SELECT v.* FROM memory_vector v JOIN memory m USING (memory_id)"
    f" WHERE m.turn_id IS NULL OR m.turn_id IN {_ON_PATH}",
    "memory_access": f"SELECT * FROM memory_access WHERE turn_id IN {_ON_PATH}",
    "edge": "SELECT * FROM edge",
    "edge_log": f"SELECT * FROM edge_log WHERE turn_id IS NULL OR turn_id IN {_ON_PATH}",
    "telemetry": f"SELECT * FROM telemetry WHERE turn_id IS NULL OR turn_id IN {_ON_PATH}",
    "chat_state": f"SELECT * FROM chat_state WHERE turn_id IN {_ON_PATH}",
    "identity_state": "SELECT * FROM identity_state",
    "identity_log": f"SELECT * FROM identity_log WHERE turn_id IS NULL OR turn_id IN {_ON_PATH}",
    "classifier_failures": "SELECT * FROM classifier_failures WHERE trace_id IS NULL"
    " OR trace_id NOT IN (SELECT trace_id FROM turns)"
    " OR trace_id IN (SELECT trace_id FROM turns WHERE active = 1)",
}


def active_digests(conn: sqlite3.Connection) -> dict[str, str]:
    """Digest of what every projection holds of the active paths (rows in canonical order)."""
    out = {}
    for table in PROJECTION_TABLES:
        cursor = conn.execute(ACTIVE_VIEWS[table])
        names = [d[0] for d in cursor.description]
        rows = sorted(
            json.dumps(dict(zip(names, row, strict=True)), sort_keys=True, default=bytes.hex)
            for row in cursor
        )
        out[table] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return out
