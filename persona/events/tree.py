"""Events that move through a chat's tree of turns (stream `chat:<id>`).

A chat's visible conversation is the path from its root to its leaf. These events add
variants of a turn (regenerate, edit), move the leaf (rewind, its undo, choosing a
sibling branch) and end a streaming reply early (stop). Nothing is removed: every turn
stays in the log and in the tree, one choice away.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from persona.events.base import EventPayload


class TurnRegenerated(EventPayload):
    """The user asked for another reply to a turn's message: a new sibling turn.

    The leaf moves to the turn's parent first, so the new turn runs on exactly the state
    the original one saw.
    """

    event_type: ClassVar[str] = "turn.regenerated"

    turn_id: str = Field(description="the new turn")
    chat_id: str
    of_turn_id: str = Field(description="the turn whose reply is regenerated")
    parent_turn_id: str | None = Field(description="their shared parent (None: the root)")


class TurnEdited(EventPayload):
    """The user edited the message of a turn: a new sibling turn with the new message."""

    event_type: ClassVar[str] = "turn.edited"

    turn_id: str = Field(description="the new turn")
    chat_id: str
    of_turn_id: str = Field(description="the turn whose message was edited")
    parent_turn_id: str | None = Field(description="their shared parent (None: the root)")
    message: str
    previous: str


class ChatRewound(EventPayload):
    """The user moved the chat's leaf back to an earlier turn (or to the root)."""

    event_type: ClassVar[str] = "chat.rewound"

    chat_id: str
    to_turn_id: str | None = Field(description="the new leaf (None: the root, no turns)")
    from_turn_id: str | None = Field(description="the leaf before, for undo")


class RewindUndone(EventPayload):
    """The user undid a rewind: the leaf is back where the rewind found it."""

    event_type: ClassVar[str] = "rewind.undone"

    chat_id: str
    to_turn_id: str | None
    from_turn_id: str | None


class BranchSelected(EventPayload):
    """The user chose a sibling turn: its branch becomes active, down to its newest leaf."""

    event_type: ClassVar[str] = "branch.selected"

    chat_id: str
    turn_id: str = Field(description="the sibling chosen")
    leaf_turn_id: str = Field(description="the newest leaf below it, now the chat's leaf")
    from_turn_id: str | None = Field(description="the leaf before")


class TurnStopped(EventPayload):
    """The user stopped a streaming reply: the turn ends with what streamed, truncated.

    It becomes the chat's leaf (shown as truncated) and can be regenerated; nothing is
    written after the reply (no memories, no state), so it changes nothing else.
    """

    event_type: ClassVar[str] = "turn.stopped"

    turn_id: str
    chat_id: str
    persona_id: str
    stage: str = Field(description="the stage running when it stopped")
    partial_reply: str = Field(description="the text streamed before the stop")
    truncated: bool = True
