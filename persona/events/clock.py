"""A chat's own clock (stream `chat:<id>`): chat time is wall time plus the chat's offset.

The clock starts at the chat's creation (or at an in-story time the user gives then),
advances with wall time, and moves only through `chat.clock_set`. Every event written for
the chat carries its chat time; recency and decay read that, never the wall clock.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from persona.events.base import EventPayload


class ChatClockSet(EventPayload):
    """The user moved a chat's clock: set it to a time, skipped ahead or back, or started
    the chat at an in-story time."""

    event_type: ClassVar[str] = "chat.clock_set"

    chat_id: str
    chat_time: str  # the chat time it now shows (persona.clock.iso)
    previous: str  # the chat time it showed just before
    offset_s: float  # chat time - wall time, from now on
    how: Literal["set", "skip", "start"]
    skip_s: float | None = None  # a skip's length (negative: back)
