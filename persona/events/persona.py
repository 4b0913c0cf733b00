"""Events of the persona's own stream (`persona:<id>`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from persona.events.base import EventPayload


class PersonaCreated(EventPayload):
    """A persona came into existence from its definition file."""

    event_type: ClassVar[str] = "persona.created"

    persona_id: str
    name: str
    description: str
    genesis: str
    traits: dict[str, float] = Field(default_factory=dict)
