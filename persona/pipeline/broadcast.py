"""Per-chat broadcast: every subscriber of a chat receives every turn event of it.

Each subscriber buffers at most `buffer` events. Publishing never waits for a reader: a
subscriber that falls further behind is dropped, its buffer freed, and it receives one
final `resync` event, so its client reconnects and catches up from the log.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# The last event a dropped subscriber receives: re-read the chat, then follow it again.
RESYNC = "resync"
DEFAULT_BUFFER = 1024


@dataclass(frozen=True)
class TurnEvent:
    """One streamed fact about a turn: queued, start, delta, done or error (or resync)."""

    kind: str
    chat_id: str
    trace_id: str
    data: dict[str, Any]


class Subscription:
    """One stream's bounded buffer of a chat's events."""

    def __init__(self, chat_id: str, buffer: int):
        self.chat_id = chat_id
        self.buffer = buffer
        self.dropped = False
        self._events: deque[TurnEvent] = deque()
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        """How many events wait to be read."""
        return len(self._events)

    def offer(self, event: TurnEvent) -> bool:
        """Buffer an event; past the bound, drop everything and return False."""
        if self.dropped:
            return False
        if len(self._events) >= self.buffer:
            self.dropped = True
            self._events.clear()  # free it now: the reader may never come back
        else:
            self._events.append(event)
        self._wakeup.set()
        return not self.dropped

    async def get(self) -> TurnEvent:
        """The next event; once dropped, a `resync` event (and nothing after it)."""
        while not self._events:
            if self.dropped:
                return TurnEvent(RESYNC, self.chat_id, "", {})
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._events.popleft()


class Broadcaster:
    """Fan turn events out to every open stream (tab, curl, SSE client) of a chat."""

    def __init__(self, buffer: int = DEFAULT_BUFFER) -> None:
        if buffer < 1:
            raise ValueError("a subscriber must be able to buffer at least one event")
        self.buffer = buffer
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)

    @contextmanager
    def subscribe(self, chat_id: str) -> Iterator[Subscription]:
        """Receive the chat's events until the block exits (or the subscriber is dropped)."""
        sub = Subscription(chat_id, self.buffer)
        self._subscribers[chat_id].add(sub)
        try:
            yield sub
        finally:
            self._remove(sub)

    def _remove(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.chat_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subscribers[sub.chat_id]

    def publish(self, event: TurnEvent) -> None:
        """Deliver to every current subscriber of the event's chat (never blocks)."""
        for sub in list(self._subscribers.get(event.chat_id, ())):
            if not sub.offer(event):
                self._remove(sub)

    def subscriber_count(self, chat_id: str) -> int:
        """How many streams listen to a chat."""
        return len(self._subscribers.get(chat_id, ()))

    def buffered(self) -> int:
        """Events held for all subscribers together (what slow readers cost)."""
        return sum(len(sub) for subs in self._subscribers.values() for sub in subs)
