"""Telemetry events: one row of C/N/M/S/R per completed turn."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, ClassVar

from persona.events.base import EventPayload
from persona.events.decisions import Telemetry


def _telemetry_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # 0.1.0 keyed rows by a turn count; the row's trace finds its turn.
    p = dict(p)
    p.pop("turn_index", None)
    p["turn_id"] = None
    return p


class TelemetryRecorded(EventPayload):
    """The turn's telemetry and dialogue state, for dashboards."""

    event_type: ClassVar[str] = "telemetry.recorded"
    version: ClassVar[int] = 2
    upcasters = MappingProxyType({1: _telemetry_v1_to_v2})

    chat_id: str
    persona_id: str
    turn_id: str | None
    telemetry: Telemetry
    dialogue_state: str
