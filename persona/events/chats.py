"""Events a user makes about a chat as a whole (stream `chat:<id>`): rename, archive, restore.

Nothing is removed: an archived chat leaves the list and comes back when restored; a
rename keeps the previous title in the log.
"""

from __future__ import annotations

from typing import ClassVar

from persona.events.base import EventPayload


class ChatRenamed(EventPayload):
    """The user gave a chat a new title."""

    event_type: ClassVar[str] = "chat.renamed"

    chat_id: str
    title: str
    previous: str


class ChatArchived(EventPayload):
    """The user archived a chat: hidden from the chat list, nothing removed."""

    event_type: ClassVar[str] = "chat.archived"

    chat_id: str


class ChatRestored(EventPayload):
    """The user brought an archived chat back into the chat list."""

    event_type: ClassVar[str] = "chat.restored"

    chat_id: str
