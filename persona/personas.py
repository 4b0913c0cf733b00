"""Personas: load a persona file and record its creation as an event."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from persona.events import PersonaCreated
from persona.storage import queries
from persona.storage.eventlog import NewEvent
from persona.storage.store import Store


class PersonaSpec(BaseModel):
    """What a persona file holds."""

    model_config = ConfigDict(extra="forbid")

    persona_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=4000)
    genesis: str = Field(min_length=1, max_length=20000)
    traits: dict[str, float] = Field(default_factory=dict)


def load_spec(path: Path) -> PersonaSpec:
    """Read and validate a persona TOML file."""
    with path.open("rb") as fh:
        data: dict[str, Any] = tomllib.load(fh)
    spec = PersonaSpec.model_validate(data)
    spec.genesis = spec.genesis.strip()
    return spec


def created_event(spec: PersonaSpec) -> NewEvent:
    """The event that brings a persona into existence."""
    return NewEvent(
        payload=PersonaCreated(**spec.model_dump()),
        stream_id=f"persona:{spec.persona_id}",
        actor="system",
    )


def ensure_persona(store: Store, path: Path) -> str:
    """Create the persona from `path` unless it already exists; return its id."""
    spec = load_spec(path)
    if store.sync_read(queries.get_persona, spec.persona_id) is None:
        # A new persona's stream must be empty: expected version 0.
        store.sync_append([created_event(spec)], {f"persona:{spec.persona_id}": 0})
    return spec.persona_id
