"""The turn context that flows through the stages, and the stage seams."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from persona.config import Settings
from persona.errors import MissingDecision
from persona.events import ChatState, EventPayload, IdentityState
from persona.llm.base import Backend, GenOptions
from persona.pipeline.prompts import PromptSet
from persona.storage.queries import EdgeRow, PathTurn, PersonaRow
from persona.storage.store import ReadView

D = TypeVar("D", bound=EventPayload)


@dataclass(frozen=True)
class TurnRequest:
    """What the user asked for, already validated."""

    message: str
    user_id: str
    chat_id: str
    persona_id: str
    reward_signal: float
    gen: GenOptions
    # The generation options the client set itself: a dialogue state never changes those.
    gen_explicit: frozenset[str] = frozenset()
    # The client's own JSON object, stored on turn.started (never read by the stages).
    metadata: dict[str, Any] | None = None
    # Set for a regenerated or edited turn: a sibling of an existing turn.
    variant: Variant | None = None


@dataclass(frozen=True)
class Variant:
    """A new turn beside `of_turn_id` (same parent): another reply, or an edited message."""

    kind: Literal["regenerate", "edit"]
    of_turn_id: str
    parent_turn_id: str | None
    previous: str  # the message of `of_turn_id`


@dataclass
class TurnContext:
    """Everything known about one turn; each stage reads it and adds its decision.

    `parent_state` is the snapshot the parent turn left: what carries from turn to turn.
    `recent_user_messages` are the user's messages on the active path, oldest first.
    """

    request: TurnRequest
    trace_id: str
    turn_id: str
    parent_turn_id: str | None
    depth: int
    now: datetime
    persona: PersonaRow
    parent_state: ChatState
    history: list[PathTurn] = field(default_factory=list)
    recent_user_messages: list[str] = field(default_factory=list)
    # The persona's control state as the turn began (traits, values, operator overrides);
    # None where a caller built the context without it (stages then see no override).
    identity: IdentityState | None = None
    decisions: dict[type[EventPayload], EventPayload] = field(default_factory=dict)
    reply: str = ""

    def record(self, decision: EventPayload) -> None:
        """Keep a stage's decision for the stages after it."""
        self.decisions[type(decision)] = decision

    def need(self, kind: type[D]) -> D:
        """The decision of the stage that produces `kind`; fails clearly if it has not run."""
        found = self.decisions.get(kind)
        if found is None:
            ran = ", ".join(sorted(t.event_type for t in self.decisions)) or "none"
            raise MissingDecision(
                f"no {kind.__name__} ({kind.event_type}) decision in this turn;"
                f" decisions so far: {ran}"
            )
        assert isinstance(found, kind)
        return found

    def get(self, kind: type[D]) -> D | None:
        """The decision of `kind` if its stage ran, else None."""
        found = self.decisions.get(kind)
        return found if isinstance(found, kind) else None


@dataclass(frozen=True)
class StageEnv:
    """What stages may use: settings, read-only storage, the backend and its tokenizer."""

    settings: Settings
    store: ReadView
    backend: Backend
    count_tokens: Callable[[str], int]
    prompts: PromptSet


@dataclass(frozen=True)
class ModelCall:
    """One model call a stage made: recorded on the stage's own event."""

    model: str
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float


@dataclass(frozen=True)
class StageOutput:
    """A stage's decision (its event's payload), extra events, and any model call."""

    decision: EventPayload
    extra: tuple[EventPayload, ...] = ()
    call: ModelCall | None = None


class Stage(Protocol):
    """A pipeline stage: reads the context, returns its decision (becomes an event)."""

    @property
    def name(self) -> str: ...

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput: ...


class PersonaView(Protocol):
    """Persona-scoped state as the writer's transaction sees it (post-reply stages)."""

    def edge_weight(self, src: str, rel: str, dst: str) -> float | None: ...

    def current_edges(self, persona_id: str, src: str, rels: Sequence[str]) -> list[EdgeRow]: ...

    def identity_state(self, persona_id: str) -> IdentityState: ...


@dataclass(frozen=True)
class Emit:
    """An event a post-reply stage decided; `scope` names the stream it goes on."""

    payload: EventPayload
    scope: Literal["chat", "persona"] = "chat"


class PostStage(Protocol):
    """Work after the reply: decided inside the writer's transaction, recorded atomically."""

    @property
    def name(self) -> str: ...

    def decide(self, ctx: TurnContext, env: StageEnv, persona: PersonaView) -> list[Emit]: ...
