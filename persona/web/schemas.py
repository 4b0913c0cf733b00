"""Request and response bodies of the JSON API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from persona.pipeline.meta import Meta

ID_PATTERN = r"^[A-Za-z0-9_:.\-]{1,128}$"
MAX_MESSAGE_CHARS = 32000

Identifier = Annotated[StrictStr, Field(pattern=ID_PATTERN, max_length=128)]


class GenParams(BaseModel):
    """Per-request generation overrides."""

    model_config = ConfigDict(extra="forbid")

    temperature: Annotated[StrictFloat | StrictInt, Field(ge=0.0, le=2.0)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1, le=4096)] | None = None


class ChatRequest(BaseModel):
    """The body of POST /persona/chat and /persona/chat/stream."""

    model_config = ConfigDict(extra="forbid")

    message: Annotated[StrictStr, Field(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    user_id: Identifier = "local"
    session_id: Identifier | None = Field(
        default=None,
        description="Chat id: absent starts a new chat; an unseen id starts a chat under it.",
    )
    persona_id: Identifier | None = None
    reward_signal: Annotated[StrictFloat | StrictInt, Field(ge=-1.0, le=1.0)] = 0.0
    gen: GenParams | None = None

    @field_validator("message")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message must not be blank")
        return value


class ChatResponse(BaseModel):
    """What POST /persona/chat returns."""

    reply: str
    meta: Meta
    session_id: str
    turn_id: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx body: a human-readable error, and details where they help."""

    error: str
    trace_id: str | None = None
    message_tokens: int | None = None
    limit_tokens: int | None = None
    detail: list[dict[str, Any]] | None = None
