"""The event of a turn accepted onto its chat's queue, before it starts."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from persona.events.base import EventPayload


class TurnQueued(EventPayload):
    """The user's message was accepted; the turn waits for the turns ahead of it.

    Written before the server answers, so a message it accepted always leaves a trace:
    it later starts (turn.started) or is recorded as failed (turn.failed, stage `queue`).
    """

    event_type: ClassVar[str] = "turn.queued"

    turn_id: str
    chat_id: str
    persona_id: str
    user_id: str
    message: str
    reward_signal: float = 0.0
    ahead: int = Field(ge=0, description="turns of the chat waiting or running when accepted")
