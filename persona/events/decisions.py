"""The stage decisions: each stage returns one of these, and it is its event's payload."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from persona.events.base import EventPayload, Model


class Safety(Model):
    """Perceived safety risk of a message."""

    total_risk: float = Field(ge=0.0, le=1.0)
    override: bool
    cues: list[str] = Field(default_factory=list)


class ClassifierInfo(Model):
    """What the classifier model answered (or that it failed) for a message."""

    ok: bool
    primary_intent: str
    confidence: float
    attempts: int
    model: str = ""


class Perception(EventPayload):
    """Perception: what the user said and meant."""

    event_type: ClassVar[str] = "perception.completed"

    intent: dict[str, float]
    top_intent: str
    cues: dict[str, list[str]] = Field(default_factory=dict)
    safety: Safety
    ooc: bool
    importance: float = Field(ge=0.0, le=1.0)
    classifier: ClassifierInfo | None = None


class CoreMemory(Model):
    """The persona's L3 core memory, always present."""

    memory_id: str
    content: str


class RetrievedMemory(Model):
    """One memory the memory stage ranked, with the parts of its score."""

    memory_id: str
    content: str
    chat_id: str | None = None
    score: float
    lexical: float
    recency: float
    importance: float


class MemoryRetrieval(EventPayload):
    """Memory: what is relevant to this message."""

    event_type: ClassVar[str] = "memory.retrieved"

    query: str | None = Field(description="the search terms, space-separated")
    candidates: int = Field(ge=0)
    core: CoreMemory | None
    results: list[RetrievedMemory]


class Budget(Model):
    """How the context window is split (tokens)."""

    context: int
    reply: int
    message: int
    available: int
    core: int = 0
    used: int = 0


class GateDecision(Model):
    """One candidate of the workspace competition and why it did or did not get in."""

    kind: Literal["history", "memory"]
    id: str
    priority: float
    tokens: int
    selected: bool
    reason: str


class Workspace(EventPayload):
    """Gating: what got into the prompt, within the token budget."""

    event_type: ClassVar[str] = "workspace.selected"

    budget: Budget
    candidates: list[GateDecision]
    selected_memories: list[str]
    selected_history: list[str]


class Telemetry(Model):
    """C coherence, N novelty, M memory support, S safety margin, R reward (each 0..1)."""

    C: float
    N: float
    M: float
    S: float
    R: float


class Metacognition(EventPayload):
    """Metacognition: how the conversation is going."""

    event_type: ClassVar[str] = "metacognition.completed"

    telemetry: Telemetry
    dialogue_state: str


class ClassifierFailed(EventPayload):
    """A structured model call failed; the stage fell back to its own judgement."""

    event_type: ClassVar[str] = "classifier.failed"

    stage: str
    schema_name: str
    model: str | None = None
    error: str
    attempts: int
