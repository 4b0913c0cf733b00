"""Events of a chat's stream (`chat:<id>`): the chat, its turns, replies and state."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import Field

from persona.events.base import EventPayload, Model
from persona.events.state import ChatState


class ChatStarted(EventPayload):
    """A chat between a persona and a user began."""

    event_type: ClassVar[str] = "chat.started"

    chat_id: str
    persona_id: str
    user_id: str
    title: str


class Generation(Model):
    """The generation options a turn ran with (None: the engine's own default)."""

    temperature: float
    max_tokens: int
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


def _turn_started_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # 0.1.0 chats were linear and counted turns (failed ones too). Such a turn has no
    # recorded parent: `linear` tells the projector to attach it to the chat's head.
    p = dict(p)
    p.pop("turn_index", None)
    p.update(parent_turn_id=None, depth=0, linear=True)
    p.setdefault("engine_version", "0.1.0")
    return p


class TurnStarted(EventPayload):
    """The user sent a message; a turn began on top of `parent_turn_id`."""

    event_type: ClassVar[str] = "turn.started"
    version: ClassVar[int] = 2
    upcasters = MappingProxyType({1: _turn_started_v1_to_v2})

    turn_id: str
    chat_id: str
    persona_id: str
    user_id: str
    parent_turn_id: str | None = Field(description="None for a chat's first turn")
    depth: int = Field(ge=0, description="the parent's depth + 1 (0 for the first turn)")
    message: str
    reward_signal: float = 0.0
    gen: Generation
    backend: str
    model: str = ""
    config_hash: str
    engine_version: str = ""
    build_sha: str = ""
    linear: bool = Field(
        default=False,
        description="written before turns had parents: attach to the chat's head on replay",
    )
    gen_explicit: list[str] = Field(
        default_factory=list, description="generation options the client set itself"
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="the client's own JSON object, stored as sent"
    )
    inputs_hash: str = Field(
        default="",
        description="sha256 of the turn's exact inputs: message, parent state, persona,"
        " config_hash, gen ('' before it was recorded)",
    )


class PromptMessage(Model):
    """One message of the prompt as the model saw it."""

    role: str
    content: str


class ReplyUsage(Model):
    """Token counts the backend reported (or counted) for the reply."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class ReplyCompleted(EventPayload):
    """The speaker finished a whole reply (never written for a broken one).

    `reply` is the text as stored and shown once done: a degenerate reply is trimmed
    (`flags`), and then `raw_reply` keeps what the model generated.
    """

    event_type: ClassVar[str] = "reply.completed"

    turn_id: str
    chat_id: str
    reply: str
    prompt: list[PromptMessage]
    usage: ReplyUsage
    first_token_ms: float
    generation_ms: float
    prompt_tokens_counted: int = Field(
        default=0, description="the speaker's own count of the rendered prompt (0: unknown)"
    )
    trimmed: list[str] = Field(
        default_factory=list, description="workspace items cut to fit the context window"
    )
    flags: list[str] = Field(
        default_factory=list,
        description="what the reply check did: label, continued, loop, cut, repeat",
    )
    raw_reply: str | None = Field(
        default=None, description="the text as generated, when the check changed it"
    )
    finish_reason: str | None = Field(
        default=None,
        description="how generation ended: stop or length (None: written before it was kept)",
    )


class ChatStateRecorded(EventPayload):
    """The chat-scoped state after a completed turn (read by the turns that follow it)."""

    event_type: ClassVar[str] = "chat_state.recorded"

    turn_id: str
    chat_id: str
    state: ChatState


def _turn_completed_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # 0.1.0 stored the whole meta here; meta is now derived from the turn's events.
    p = dict(p)
    p.pop("meta", None)
    return p


class TurnCompleted(EventPayload):
    """A turn ended with a reply; it becomes the chat's head."""

    event_type: ClassVar[str] = "turn.completed"
    version: ClassVar[int] = 2
    upcasters = MappingProxyType({1: _turn_completed_v1_to_v2})

    turn_id: str
    chat_id: str
    persona_id: str
    reply: str
    writes_ms: float = Field(
        default=0.0, description="time the turn's earlier appends took (timing, not a decision)"
    )


def _turn_failed_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # Version 1 kept only the length of a partial reply, not its text.
    return {**p, "partial_reply": None}


class TurnFailed(EventPayload):
    """A turn ended without a reply (model failure, deadline, crash, shutdown, interruption).

    What streamed before the failure is kept as a failed attempt (`partial_reply`), never
    as the turn's answer.
    """

    event_type: ClassVar[str] = "turn.failed"
    version: ClassVar[int] = 2
    upcasters = MappingProxyType({1: _turn_failed_v1_to_v2})

    turn_id: str
    chat_id: str
    persona_id: str
    stage: str
    error: str
    partial_reply_chars: int = 0
    partial_reply: str | None = Field(
        default=None, description="the text streamed before the failure (None: none)"
    )
