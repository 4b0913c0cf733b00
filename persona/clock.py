"""Clocks: the system clock in production, a fixed stepping clock in tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current time (timezone-aware, UTC)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """Start at a fixed instant and advance by `step` on every read: deterministic tests."""

    def __init__(self, start: datetime | None = None, step: timedelta = timedelta(seconds=1)):
        self.current = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        self.step = step

    def now(self) -> datetime:
        value = self.current
        self.current = self.current + self.step
        return value

    def advance(self, delta: timedelta) -> None:
        """Jump forward, e.g. to age memories."""
        self.current = self.current + delta


def iso(moment: datetime) -> str:
    """Format an instant as ISO-8601 UTC with microseconds (sorts as text)."""
    # isoformat pads the year to four digits (strftime's %Y does not below 1000: a chat's
    # clock may be set to any year from 1).
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_iso(text: str) -> datetime:
    """Parse a timestamp written by `iso`."""
    return datetime.fromisoformat(text)  # 3.11 accepts the trailing Z; faster than strptime
