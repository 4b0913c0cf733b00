"""Fold events into the read-side tables, in the same transaction as the append."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from persona.events import UnknownEventType
from persona.projector.handlers import HANDLERS
from persona.storage.eventlog import Event, read_events

# Every projection table, in the order they are cleared and digested.
PROJECTION_TABLES: tuple[str, ...] = (
    "persona",
    "chats",
    "turns",
    "messages",
    "memory",
    "memory_witness",
    "memory_vector",
    "memory_access",
    "edge",
    "edge_log",
    "telemetry",
    "chat_state",
    "identity_state",
    "identity_log",
    "classifier_failures",
)
# The full-text indexes over projection tables: emptied with them, checked by `verify`.
FTS_TABLES: tuple[str, ...] = ("memory_fts", "chat_title_fts", "message_fts")


def project(conn: sqlite3.Connection, event: Event) -> None:
    """Apply one event to the projections."""
    handler = HANDLERS.get(type(event.payload))
    if handler is None:
        raise UnknownEventType(event.type)
    handler(conn, event)


def clear_projections(conn: sqlite3.Connection) -> None:
    """Empty every projection table (the FTS indexes included); the log is untouched."""
    for table in PROJECTION_TABLES:
        conn.execute(f"DELETE FROM {table}")
    for fts in FTS_TABLES:
        conn.execute(f"INSERT INTO {fts} ({fts}) VALUES ('delete-all')")


Progress = Callable[[int], None]


def replay_log(conn: sqlite3.Connection, progress: Progress | None = None) -> int:
    """Fold every event, in order, into the (empty) projections. Returns the count."""
    count = 0
    for event in read_events(conn):
        project(conn, event)
        count += 1
        if progress is not None:
            progress(1)
    return count


class Projector:
    """The projection the store folds every append into (storage's `Projection`)."""

    def fold(self, conn: sqlite3.Connection, event: Event) -> None:
        """Fold one event (inside the caller's transaction)."""
        project(conn, event)

    def rebuild(self, conn: sqlite3.Connection) -> int:
        """Clear every projection and replay the log (inside the caller's transaction)."""
        clear_projections(conn)
        return replay_log(conn)


__all__ = [
    "FTS_TABLES",
    "PROJECTION_TABLES",
    "Progress",
    "Projector",
    "clear_projections",
    "project",
    "replay_log",
]
