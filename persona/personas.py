"""Personas: load a persona file and record its creation as an event."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from persona.events import PersonaCreated, PersonaFields, PersonaRevised
from persona.storage import queries
from persona.storage.eventlog import NewEvent, stream_version
from persona.storage.queries import PersonaRow
from persona.storage.store import Store

log = logging.getLogger(__name__)


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


def revision(spec: PersonaSpec, current: PersonaRow, source: str) -> PersonaRevised | None:
    """The revision that brings the stored persona to its file's values (None: no change)."""
    new = PersonaFields(
        name=spec.name, description=spec.description, genesis=spec.genesis, traits=spec.traits
    )
    old = PersonaFields(
        name=current.name,
        description=current.description,
        genesis=current.genesis,
        traits=current.traits,
    )
    changed = [f for f in PersonaFields.model_fields if getattr(new, f) != getattr(old, f)]
    if not changed:
        return None
    return PersonaRevised(
        persona_id=spec.persona_id, previous=old, current=new, changed=changed, source=source
    )


def ensure_persona(store: Store, path: Path) -> str:
    """Create the persona from `path`, or record a revision if the file changed; return its id.

    Editing a persona file takes effect on the next start, as a `persona.revised` event
    that keeps the previous values (so the change can be seen and undone).
    """
    spec = load_spec(path)
    stream = f"persona:{spec.persona_id}"
    current = store.sync_read(queries.get_persona, spec.persona_id)
    if current is None:
        # A new persona's stream must be empty: expected version 0.
        store.sync_append([created_event(spec)], {stream: 0})
        return spec.persona_id
    revised = revision(spec, current, path.name)
    if revised is not None:
        version = store.sync_read(stream_version, stream)
        store.sync_append(
            [NewEvent(payload=revised, stream_id=stream, actor="system")], {stream: version}
        )
        log.info("persona %s revised from %s: %s", spec.persona_id, path.name, revised.changed)
    return spec.persona_id
