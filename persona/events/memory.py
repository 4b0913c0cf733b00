"""Events that write the persona's memory."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from persona.events.base import EventPayload


class MemoryWritten(EventPayload):
    """The persona stored a memory (episodic: one exchange of a turn)."""

    event_type: ClassVar[str] = "memory.written"

    memory_id: str
    persona_id: str
    kind: Literal["episodic", "core"]
    content: str
    importance: float = Field(ge=0.0, le=1.0)
    chat_id: str | None = None
    turn_id: str | None = Field(default=None, description="the turn that wrote it")
