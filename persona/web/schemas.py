"""Request and response bodies of the JSON API."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    field_validator,
)

from persona.controls import CONTROL_CLASS, first_control
from persona.pipeline.meta import Meta

ID_PATTERN = r"^[A-Za-z0-9_:.\-]{1,128}$"
MAX_MESSAGE_CHARS = 32000
# What the message validators accept, published so that clients and fuzzers know it: no
# control character (see `reply_check.CONTROL_CLASS`; lone surrogates are refused too, but
# JSON Schema cannot name them), and something besides whitespace (Python's `str.isspace`
# set, spelled out so every regex dialect reads it alike). Leading whitespace, then a
# character that is neither, then anything allowed: no two parts overlap, so no regex
# engine backtracks on a long message.
_SPACE = r" \t\n\r\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
MESSAGE_PATTERN = rf"^[{_SPACE}]*[^{_SPACE}{CONTROL_CLASS}][^{CONTROL_CLASS}]*$"

Identifier = Annotated[StrictStr, Field(pattern=ID_PATTERN, max_length=128)]


# JSON numbers in a range: integers welcome, booleans and strings refused. A strict float
# publishes plain `{"type": "number", "minimum", "maximum"}`; the union of strict types used
# before published pydantic's own `ge`/`le` beside an `anyOf`, which standard JSON Schema
# tools ignore (to them any number was allowed).
Temperature = Annotated[float, Field(ge=0.0, le=2.0, strict=True)]
Reward = Annotated[float, Field(ge=-1.0, le=1.0, strict=True)]


def json_number(value: Any) -> Any:
    """Refuse booleans and strings, which pydantic's lax int would convert."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


# A client's metadata object: a bound on its stored size and nesting.
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 8


def json_depth(value: Any) -> int:
    """How deep objects and arrays nest (a scalar is 0, `{}` is 1); iterative."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


# JSON Schema's integer is any number without a fraction: 3408.0 is one (a strict int would
# refuse what the schema publishes as valid); 3408.5 still is not. The range comes first:
# after the validator, pydantic would publish it as its own `ge`/`le` keys.
TokenCount = Annotated[int, Field(ge=1, le=4096), BeforeValidator(json_number)]


def refuse_controls(value: Any) -> Any:
    """Refuse what a page cannot show: control characters and lone surrogates.

    Runs before the string check, which would refuse a lone surrogate with a vaguer
    "unable to parse raw data as a unicode string".
    """
    if isinstance(value, str) and (found := first_control(value)) is not None:
        position, char = found
        raise ValueError(
            f"message contains control character U+{ord(char):04X} at position {position}"
        )
    return value


def refuse_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("message must not be blank")
    return value


# A user's message, wherever one is sent (/persona/chat, an edited turn): published with the
# pattern and checked by the validators (whose errors name the character).
MessageText = Annotated[
    StrictStr,
    Field(
        min_length=1, max_length=MAX_MESSAGE_CHARS, json_schema_extra={"pattern": MESSAGE_PATTERN}
    ),
    BeforeValidator(refuse_controls),
    AfterValidator(refuse_blank),
]


class GenParams(BaseModel):
    """Per-request generation overrides."""

    model_config = ConfigDict(extra="forbid")

    temperature: Temperature | None = None
    max_tokens: TokenCount | None = None


class ChatRequest(BaseModel):
    """The body of POST /persona/chat and /persona/chat/stream."""

    model_config = ConfigDict(extra="forbid")

    message: MessageText
    user_id: Identifier = "local"
    session_id: Identifier | None = Field(
        default=None,
        description="Chat id: absent starts a new chat; an unseen id starts a chat under it.",
    )
    persona_id: Identifier | None = None
    reward_signal: Reward = 0.0
    gen: GenParams | None = None
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=(
            "The client's own JSON object, stored with the turn and shown in its trace"
            f" (at most {MAX_METADATA_BYTES} bytes as JSON, nested {MAX_METADATA_DEPTH} deep)."
        ),
    )

    @field_validator("metadata")
    @classmethod
    def bounded_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Refuse metadata the log should not hold: too big, too deep, not plain JSON."""
        if value is None:
            return None
        # Depth first: it is counted without recursion, json.dumps then cannot overflow.
        if (depth := json_depth(value)) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata is nested {depth} deep (at most {MAX_METADATA_DEPTH})")
        try:
            size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            # Non-finite numbers, lone surrogates, non-string keys: no JSON to store.
            raise ValueError(f"metadata is not storable JSON: {exc}") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size} bytes as JSON (at most {MAX_METADATA_BYTES})")
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


# ---- Server-Sent Events -------------------------------------------------------------------
# The 200 of an SSE route declares one event: `event` names it, `data` is JSON whose shape
# the event's name selects (`contentSchema`). docs/api.md lists them with examples.

_TEXT = {"type": "string"}
_TRACE_ID = {"type": "string", "pattern": r"^[0-9a-f]{32}$"}
_SESSION_ID = {"type": "string", "pattern": ID_PATTERN}


def _payload(**properties: dict[str, Any]) -> dict[str, Any]:
    """A JSON object with exactly these keys."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def sse_events(**payloads: dict[str, Any]) -> dict[str, Any]:
    """The schema of one event of a stream that sends these events (name -> data schema)."""
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "event": {"const": name},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": payload,
                    },
                },
                "required": ["event", "data"],
            }
            for name, payload in payloads.items()
        ]
    }


_META = {"$ref": "#/components/schemas/Meta"}
# What moved a chat's tree (the `tree` event of its stream): every open tab re-renders.
TREE_OPS = ("regenerated", "edited", "rewound", "rewind_undone", "branch_selected", "stopped")
_TURN = {"trace_id": _TRACE_ID, "session_id": _SESSION_ID, "turn_id": _TEXT}

# POST /persona/chat/stream: the one turn it started.
TURN_STREAM_EVENT = sse_events(
    start=_payload(**_TURN),
    delta=_payload(text=_TEXT),
    done=_payload(reply=_TEXT, meta=_META),
    error=_payload(error=_TEXT, trace_id=_TRACE_ID),
)
# GET /persona/chat/{session_id}/events: every turn of the chat, each event with its trace.
CHAT_STREAM_EVENT = sse_events(
    queued=_payload(**_TURN, message=_TEXT),
    start=_payload(**_TURN, message=_TEXT),
    delta=_payload(text=_TEXT, trace_id=_TRACE_ID),
    done=_payload(reply=_TEXT, meta=_META, trace_id=_TRACE_ID),
    error=_payload(error=_TEXT, trace_id=_TRACE_ID),
    resync=_payload(session_id=_SESSION_ID, reason=_TEXT),
    tree=_payload(
        op={"enum": list(TREE_OPS)},
        session_id=_SESSION_ID,
        leaf_turn_id={"type": ["string", "null"]},
        trace_id=_TRACE_ID,
    ),
)
