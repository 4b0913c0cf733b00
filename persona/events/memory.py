"""Events that write, touch and change the persona's memory.

Tiers: L0 is the event log itself; L1 episodic memories (an exchange of a turn, an
observed utterance, a fact extracted from them); L2 consolidated digests; L3 core memory
(the persona's genesis and what the user pins), always in context. Nothing is deleted:
an edit is a new version, a deletion a tombstone, a consolidation marks its originals.
"""

from __future__ import annotations

import base64
import re
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from persona.events.base import EventPayload, Model

Tier = Literal["L1", "L2", "L3"]
MemoryKind = Literal["exchange", "utterance", "fact", "digest", "belief", "core"]

# How 0.1.0/0.2.0 stored an exchange: "User said: …\n<Name> replied: …".
_TRANSCRIPT = re.compile(
    r"\AUser said: ?(?P<user>.*?)\n(?P<name>[^\n:]+) replied: ?(?P<reply>.*)\Z", re.S
)


class Utterance(Model):
    """What one party said, as data (the prompt renders it as a short note)."""

    role: Literal["user", "persona", "other"]
    name: str = Field(description="who said it, as the conversation names them")
    text: str


def _memory_written_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # v1: kind episodic|core and a transcript. v2 keeps what was said as data.
    p = dict(p)
    kind = p.pop("kind", "episodic")
    p["tier"], p["kind"] = ("L3", "core") if kind == "core" else ("L1", "exchange")
    found = _TRANSCRIPT.match(p.get("content", "")) if kind != "core" else None
    if found:
        p["said"] = [
            {"role": "user", "name": "User", "text": found["user"]},
            {"role": "persona", "name": found["name"], "text": found["reply"]},
        ]
        p["content"] = f"{found['user']}\n{found['reply']}"
    return p


class MemoryWritten(EventPayload):
    """The persona stored a memory."""

    event_type: ClassVar[str] = "memory.written"
    version: ClassVar[int] = 2
    upcasters = MappingProxyType({1: _memory_written_v1_to_v2})

    memory_id: str
    persona_id: str
    tier: Tier = "L1"
    kind: MemoryKind = "exchange"
    content: str = Field(description="the words, without speaker labels (what is searched)")
    said: list[Utterance] = Field(default_factory=list, description="who said what, in order")
    importance: float = Field(ge=0.0, le=1.0)
    importance_score: int | None = Field(default=None, ge=1, le=10, description="perception's")
    chat_id: str | None = None
    turn_id: str | None = Field(default=None, description="the turn that wrote it")
    entities: list[str] = Field(default_factory=list, description="names mentioned")
    witnesses: list[str] = Field(
        default_factory=list,
        description="user ids who were there (empty: the chat's user, filled by the projector)",
    )
    shared: bool = Field(
        default=False, description="retrievable with any user (beliefs, lore, chosen to share)"
    )
    source_ref: str | None = Field(
        default=None, description="an outside id it came from (an imported dialogue turn)"
    )
    valid_from: str | None = Field(default=None, description="when it became true (chat time)")


class MemoryAccessed(EventPayload):
    """A turn used these memories in its prompt (last accessed, access count)."""

    event_type: ClassVar[str] = "memory.accessed"

    persona_id: str
    turn_id: str
    memory_ids: list[str]


class MemoryEdited(EventPayload):
    """The user corrected a memory: a new version of its text (the old stays in the log)."""

    event_type: ClassVar[str] = "memory.edited"

    memory_id: str
    persona_id: str
    content: str
    revision: int = Field(ge=2, description="the memory's version after this edit")
    reason: str = ""


class MemoryPinned(EventPayload):
    """Pinned memories are L3: always in context. Unpinning returns the original tier."""

    event_type: ClassVar[str] = "memory.pinned"

    memory_id: str
    persona_id: str
    pinned: bool


class MemoryDeleted(EventPayload):
    """A tombstone: never retrieved again, and still gone after a rebuild."""

    event_type: ClassVar[str] = "memory.deleted"

    memory_id: str
    persona_id: str
    reason: str = ""


class MemoryConsolidated(EventPayload):
    """A sleep's diff: the L2 digests and L3 beliefs it wrote (each its own
    `memory.written` just before this), the L1 originals they cover (kept, marked
    consolidated), and the near-duplicates merged into a kept one."""

    event_type: ClassVar[str] = "memory.consolidated"

    persona_id: str
    trigger: Literal["inactivity", "asked", "pressure", "command"]
    method: Literal["extractive", "narrative"] = "extractive"
    digests: dict[str, list[str]] = Field(
        default_factory=dict, description="digest id -> the L1 ids it covers"
    )
    beliefs: list[str] = Field(default_factory=list, description="L3 belief ids written")
    merged: list[tuple[str, str]] = Field(
        default_factory=list, description="(duplicate id, kept id): both stay"
    )
    superseded: list[str] = Field(
        default_factory=list, description="earlier beliefs these replace (kept, marked invalid)"
    )


class FactRecorded(EventPayload):
    """A first-person fact extracted from a turn, as a typed edge of the persona's graph.

    `src —rel→ dst` (a negated fact is recorded under `not_<rel>`); `supersedes` lists the
    edges it contradicts (same subject and relation only): they get `invalid_at`, never
    deleted.
    """

    event_type: ClassVar[str] = "fact.recorded"

    persona_id: str
    turn_id: str | None
    memory_id: str = Field(description="the L1 fact memory written with it")
    edge_id: str = Field(description="src|rel|the object's key (case, articles ignored)")
    src: str
    rel: str
    dst: str
    text: str = Field(description="the sentence it came from")
    supersedes: list[str] = Field(default_factory=list, description="edge ids it retires")


class MemoryEmbedded(EventPayload):
    """A dense vector of a memory's text, from the embedding model `model` (one per memory:
    a later one, after an edit or with another model, replaces it)."""

    event_type: ClassVar[str] = "memory.embedded"

    memory_id: str
    persona_id: str
    model: str
    dim: int = Field(ge=1)
    vector: str = Field(description="base64 of `dim` little-endian float32 values")

    @model_validator(mode="after")
    def _vector_has_dim_values(self) -> MemoryEmbedded:
        try:
            raw = base64.b64decode(self.vector, validate=True)
        except ValueError as exc:
            raise ValueError("vector is not base64") from exc
        if len(raw) != 4 * self.dim:
            raise ValueError(f"vector holds {len(raw) // 4} float32 values, not dim={self.dim}")
        return self
