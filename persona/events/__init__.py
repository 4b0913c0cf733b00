"""The event catalog: one frozen payload model per event type, each with its version.

Everything that writes or reads an event payload uses these models; `CATALOG` decodes
stored payloads (upcasting old versions) and lists every type the projector must fold.
"""

from persona.events.base import (
    Catalog,
    EventPayload,
    Model,
    UnknownEventType,
    Upcaster,
    UpcastError,
)
from persona.events.chat import (
    ChatStarted,
    ChatStateRecorded,
    Generation,
    PromptMessage,
    ReplyCompleted,
    ReplyUsage,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
)
from persona.events.chats import ChatArchived, ChatRenamed, ChatRestored
from persona.events.decisions import (
    BeliefRevised,
    Budget,
    ClassifierFailed,
    ClassifierInfo,
    CoreMemory,
    GateDecision,
    MemoryRetrieval,
    Metacognition,
    Perception,
    RetrievedMemory,
    Safety,
    Telemetry,
    Workspace,
)
from persona.events.identity import IdentityState, IdentityUpdated, OperatorOverride
from persona.events.memory import (
    FactRecorded,
    MemoryAccessed,
    MemoryConsolidated,
    MemoryDeleted,
    MemoryEdited,
    MemoryEmbedded,
    MemoryPinned,
    MemoryWritten,
    Utterance,
)
from persona.events.persona import PersonaCreated, PersonaFields, PersonaRevised
from persona.events.queue import TurnQueued
from persona.events.relationship import EdgeAsserted
from persona.events.state import ChatState
from persona.events.telemetry import TelemetryRecorded

# Every event type, in the order a turn produces them (an explicit tuple, not a registry).
EVENT_TYPES: tuple[type[EventPayload], ...] = (
    PersonaCreated,
    PersonaRevised,
    ChatStarted,
    TurnQueued,
    TurnStarted,
    Perception,
    ClassifierFailed,
    MemoryRetrieval,
    Workspace,
    Metacognition,
    BeliefRevised,
    ReplyCompleted,
    MemoryWritten,
    MemoryAccessed,
    FactRecorded,
    EdgeAsserted,
    TelemetryRecorded,
    ChatStateRecorded,
    IdentityUpdated,
    OperatorOverride,
    TurnCompleted,
    TurnFailed,
    MemoryEdited,
    MemoryPinned,
    MemoryDeleted,
    MemoryConsolidated,
    MemoryEmbedded,
    ChatRenamed,
    ChatArchived,
    ChatRestored,
)

CATALOG = Catalog(EVENT_TYPES)

__all__ = [
    "CATALOG",
    "EVENT_TYPES",
    "BeliefRevised",
    "Budget",
    "Catalog",
    "ChatArchived",
    "ChatRenamed",
    "ChatRestored",
    "ChatStarted",
    "ChatState",
    "ChatStateRecorded",
    "ClassifierFailed",
    "ClassifierInfo",
    "CoreMemory",
    "EdgeAsserted",
    "EventPayload",
    "FactRecorded",
    "GateDecision",
    "Generation",
    "IdentityState",
    "IdentityUpdated",
    "MemoryAccessed",
    "MemoryConsolidated",
    "MemoryDeleted",
    "MemoryEdited",
    "MemoryEmbedded",
    "MemoryPinned",
    "MemoryRetrieval",
    "MemoryWritten",
    "Metacognition",
    "Model",
    "OperatorOverride",
    "Perception",
    "PersonaCreated",
    "PersonaFields",
    "PersonaRevised",
    "PromptMessage",
    "ReplyCompleted",
    "ReplyUsage",
    "RetrievedMemory",
    "Safety",
    "Telemetry",
    "TelemetryRecorded",
    "TurnCompleted",
    "TurnFailed",
    "TurnQueued",
    "TurnStarted",
    "UnknownEventType",
    "UpcastError",
    "Upcaster",
    "Utterance",
    "Workspace",
]
