"""The turn context that flows through the stages, and the stage seam."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from persona.config import Settings
from persona.llm.base import Backend, GenOptions
from persona.storage.store import Store


@dataclass(frozen=True)
class TurnRequest:
    """What the user asked for, already validated."""

    message: str
    user_id: str
    chat_id: str
    persona_id: str
    reward_signal: float
    gen: GenOptions


@dataclass
class TurnContext:
    """Everything known about one turn; each stage reads it and adds its decision."""

    request: TurnRequest
    trace_id: str
    turn_id: str
    turn_index: int
    now: datetime
    persona: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing_ms: dict[str, float] = field(default_factory=dict)
    reply: str = ""
    llm_timing: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageEnv:
    """What stages may use: settings, storage reads, the backend and its tokenizer."""

    settings: Settings
    store: Store
    backend: Backend
    count_tokens: Callable[[str], int]


@dataclass(frozen=True)
class Decision:
    """A stage's output: the payload of its event, plus optional extra events."""

    payload: dict[str, Any]
    extra_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class Stage(Protocol):
    """A pipeline stage: reads the context, returns its decision (becomes an event)."""

    name: str
    event_type: str

    async def run(self, ctx: TurnContext, env: StageEnv) -> Decision: ...
