"""Fold a chat's clock moves into `chats.clock_offset_s`."""

from __future__ import annotations

import sqlite3

from persona.events.clock import ChatClockSet
from persona.storage.eventlog import Event


def chat_clock_set(conn: sqlite3.Connection, e: Event, p: ChatClockSet) -> None:
    """Keep the chat's new offset; `updated_at` stays (moving the clock is not activity)."""
    conn.execute("UPDATE chats SET clock_offset_s = ? WHERE chat_id = ?", (p.offset_s, p.chat_id))
