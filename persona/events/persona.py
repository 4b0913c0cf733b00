"""Events of the persona's own stream (`persona:<id>`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from persona.events.base import EventPayload, Model


class PersonaCreated(EventPayload):
    """A persona came into existence from its definition file."""

    event_type: ClassVar[str] = "persona.created"

    persona_id: str
    name: str
    description: str
    genesis: str
    traits: dict[str, float] = Field(default_factory=dict)


class PersonaFields(Model):
    """The definition of a persona as its file states it."""

    name: str
    description: str
    genesis: str
    traits: dict[str, float] = Field(default_factory=dict)


class PersonaRevised(EventPayload):
    """The persona's definition file changed: the new values, and the ones they replace."""

    event_type: ClassVar[str] = "persona.revised"

    persona_id: str
    previous: PersonaFields
    current: PersonaFields
    changed: list[str] = Field(description="names of the fields that differ")
    source: str = Field(default="", description="where the new definition came from")
