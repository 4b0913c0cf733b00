"""Relationship events, on the persona's stream (several chats touch them)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import Field

from persona.events.base import EventPayload


def _edge_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # 0.1.0 recorded only the resulting weight, computed outside the writer.
    return {**p, "previous_weight": None, "signal": None, "rate": None, "turn_id": None}


class EdgeAsserted(EventPayload):
    """A relationship edge got a new weight: `(1 - rate) * previous + rate * signal`."""

    event_type: ClassVar[str] = "edge.asserted"
    version: ClassVar[int] = 2
    upcasters = MappingProxyType({1: _edge_v1_to_v2})

    persona_id: str
    src: str
    rel: str
    dst: str
    weight: float = Field(ge=-1.0, le=1.0)
    previous_weight: float | None = Field(description="None when the edge was new")
    signal: float | None
    rate: float | None
    turn_id: str | None
