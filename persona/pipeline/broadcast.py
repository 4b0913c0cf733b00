"""Per-chat broadcast: every subscriber of a chat receives every turn event of it."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TurnEvent:
    """One streamed fact about a turn: start, delta, done or error."""

    kind: str
    chat_id: str
    trace_id: str
    data: dict[str, Any]


class Broadcaster:
    """Fan turn events out to every open stream (tab, curl, SSE client) of a chat."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[TurnEvent]]] = defaultdict(set)

    @contextmanager
    def subscribe(self, chat_id: str) -> Iterator[asyncio.Queue[TurnEvent]]:
        """Receive the chat's events on a queue until the block exits."""
        queue: asyncio.Queue[TurnEvent] = asyncio.Queue()
        self._subscribers[chat_id].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[chat_id].discard(queue)
            if not self._subscribers[chat_id]:
                del self._subscribers[chat_id]

    def publish(self, event: TurnEvent) -> None:
        """Deliver to every current subscriber of the event's chat (never blocks)."""
        for queue in list(self._subscribers.get(event.chat_id, ())):
            queue.put_nowait(event)

    def subscriber_count(self, chat_id: str) -> int:
        """How many streams listen to a chat."""
        return len(self._subscribers.get(chat_id, ()))
