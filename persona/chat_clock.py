"""A chat's own clock: chat time = wall time + the chat's offset (`chats.clock_offset_s`).

It starts at the wall time of the chat's creation (offset 0) or at an in-story time given
then, advances with wall time, and moves only through `chat.clock_set`. This module reads
the clock, parses what a user asks for ("2031-05-01T09:00", "8h", "-1h30m") and decides
the event; it reads no clock itself (the wall time comes from the writer's transaction).

Setting a time earlier than the chat's present is allowed: an in-story flashback. The
clock then runs on from there; what was written before keeps its chat times, and a memory
"from the future" counts as just written (recency never goes above 1).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Literal

from persona.clock import iso, parse_iso
from persona.events.clock import ChatClockSet

# The instants a chat clock can show: the years 1 to 9999.
EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)
MAX_TEXT_CHARS = 64

# Published in the API schema as they are matched here (ASCII digits, no whitespace around).
_YEAR = "(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_LEAP_DAY = (
    "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)-02-29"
)
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,6})?)?"
_ZONE = "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
MOMENT_PATTERN = f"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_DAY})[T ]{_TIME}{_ZONE}$"
_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUMBER = "[0-9]{1,12}(?:\\.[0-9]{1,6})?"
SKIP_PATTERN = (
    f"^([+-]?)(?:({_NUMBER})|(?=[0-9])" + "".join(f"(?:({_NUMBER}) ?{u} ?)?" for u in _UNITS) + ")$"
)
# The most a skip in seconds can be (about 10,000 years: more always leaves the range).
MAX_SKIP_S = 3.2e11
_MOMENT = re.compile(MOMENT_PATTERN)
_DURATION = re.compile(SKIP_PATTERN)


def shifted(wall_time: str, offset_s: float) -> str:
    """The chat time at `wall_time` for a chat with this offset (held to years 1..9999)."""
    if not offset_s:
        return wall_time
    wall = parse_iso(wall_time)
    try:
        return iso(wall + timedelta(seconds=offset_s))
    except OverflowError:
        # A clock set near the end of year 9999 stops there rather than break every write.
        return iso(LATEST if offset_s > 0 else EARLIEST)


class OutOfRange(ValueError):
    """A well-formed move that would take a chat's clock out of the years 1 to 9999."""


def parse_moment(text: str) -> datetime:
    """An ISO date and time (MOMENT_PATTERN), seconds optional; naive means UTC (ValueError;
    OutOfRange when its UTC instant leaves the years 1 to 9999)."""
    if len(text) > MAX_TEXT_CHARS or not _MOMENT.fullmatch(text):
        raise ValueError(
            f"{text[:MAX_TEXT_CHARS]!r} is not a date and time like 2031-05-01T09:00"
            " (seconds and a UTC offset are optional; none means UTC)"
        )
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date and time (years 1 to 9999)") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # Well-formed, but its UTC instant falls outside the years (0001-01-01T00:00+02:00).
        raise OutOfRange(f"{text!r} in UTC is outside the years 1 to 9999") from None


def parse_skip(value: str | float) -> float:
    """A skip in seconds (0: no move): a number of seconds, or text like "8h", "90m", "-2d",
    "1h30m" (SKIP_PATTERN: units w, d, h, m, s, each once, largest first)."""
    if isinstance(value, bool):
        raise ValueError("a skip is a number of seconds or text like '8h' or '1h30m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value) if len(value) <= MAX_TEXT_CHARS else None
        if match is None:
            raise ValueError(
                f"{value[:MAX_TEXT_CHARS]!r} is not a duration like '8h', '90m', '-2d' or '1h30m'"
            )
        sign, plain, *parts = match.groups()
        if plain is not None:
            seconds = float(plain)
        else:
            seconds = sum(float(p) * u for p, u in zip(parts, _UNITS.values(), strict=True) if p)
        seconds = -seconds if sign == "-" else seconds
    if not math.isfinite(seconds):
        raise ValueError("a skip is a finite duration")
    if abs(seconds) > MAX_SKIP_S:
        raise OutOfRange("that skip would take the clock out of the years 1 to 9999")
    return seconds


def start(chat_id: str, wall_time: str, at: datetime) -> ChatClockSet:
    """The event that starts a new chat's clock at an in-story time."""
    return _moved(chat_id, wall_time, iso_previous=wall_time, target=at, how="start")


def move(
    chat_id: str,
    wall_time: str,
    offset_s: float,
    *,
    to: datetime | None = None,
    skip_s: float | None = None,
) -> ChatClockSet:
    """The event that sets a chat's clock `to` a time or skips it by `skip_s` seconds
    (OutOfRange when the result leaves the years 1 to 9999)."""
    if (to is None) == (skip_s is None):
        raise ValueError("give either a time to set or a skip")
    previous = shifted(wall_time, offset_s)
    if to is not None:
        return _moved(chat_id, wall_time, iso_previous=previous, target=to, how="set")
    assert skip_s is not None
    try:
        target = parse_iso(previous) + timedelta(seconds=skip_s)
    except OverflowError:
        raise OutOfRange("that skip would take the clock out of the years 1 to 9999") from None
    return _moved(chat_id, wall_time, iso_previous=previous, target=target, how="skip", skip=skip_s)


def _moved(
    chat_id: str,
    wall_time: str,
    *,
    iso_previous: str,
    target: datetime,
    how: Literal["set", "skip", "start"],
    skip: float | None = None,
) -> ChatClockSet:
    offset = (target - parse_iso(wall_time)).total_seconds()
    return ChatClockSet(
        chat_id=chat_id,
        chat_time=iso(target),
        previous=iso_previous,
        offset_s=offset,
        how=how,
        skip_s=skip,
    )
