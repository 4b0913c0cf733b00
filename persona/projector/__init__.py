"""Fold events into the read-side tables, in the same transaction as the append."""

from __future__ import annotations

import sqlite3

from persona.projector.handlers import HANDLERS
from persona.storage.eventlog import Event, NewEvent, insert_events

# Every projection table, in the order they are cleared and digested.
PROJECTION_TABLES: tuple[str, ...] = (
    "persona",
    "chats",
    "turns",
    "messages",
    "memory",
    "edge",
    "telemetry",
    "classifier_failures",
)


class UnknownEventType(ValueError):
    """The projector has no handler for an event type (refuse rather than drop it)."""


def project(conn: sqlite3.Connection, event: Event) -> None:
    """Apply one event to the projections."""
    handler = HANDLERS.get(event.type)
    if handler is None:
        raise UnknownEventType(event.type)
    handler(conn, event)


def append_and_project(
    conn: sqlite3.Connection,
    new_events: list[NewEvent],
    wall_time: str,
    expected_versions: dict[str, int] | None = None,
) -> list[Event]:
    """Append events and fold them; the caller's transaction makes both atomic."""
    stored = insert_events(conn, new_events, wall_time, expected_versions)
    for event in stored:
        project(conn, event)
    return stored
