"""The operator endpoint: change a persona's control state by hand, on the record.

`POST /persona/operator/override` needs the header `x-persona-operator-key`, compared in
constant time with `server.operator_key`; with no key configured it always answers 403.
Every accepted override is an `operator.override` event (actor, reason, the state after it)
on the persona's stream; the site-wide guards (host, access token, CSRF, body cap) apply
as to any POST. The key is only ever compared: never logged or echoed.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from persona.events import IdentityState, OperatorOverride
from persona.events.identity import OverrideNote
from persona.pipeline import identity
from persona.storage import queries
from persona.storage.eventlog import NewEvent
from persona.storage.store import WriteTx
from persona.web.changes import write_responses
from persona.web.deps import EngineDep
from persona.web.schemas import ID_PATTERN, ErrorBody

router = APIRouter()
log = logging.getLogger(__name__)

KEY_HEADER = "x-persona-operator-key"
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
# At least one field: an empty change is refused (minProperties), not recorded.
_PAYLOAD = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"minProperties": 1})
_STRICT = ConfigDict(extra="forbid", frozen=True)


class _Partial(BaseModel):
    """A partial change: at least one field set (an empty change is refused, not recorded)."""

    model_config = _PAYLOAD

    @model_validator(mode="before")
    @classmethod
    def no_nulls(cls, data: Any) -> Any:
        # Leave a field out to keep its value; null is not a value (the schema says so).
        if isinstance(data, dict) and any(v is None for v in data.values()):
            raise ValueError("null is not a value: leave the field out instead")
        return data

    @model_validator(mode="after")
    def not_empty(self) -> Self:
        if not self.model_dump(exclude_none=True):
            raise ValueError("set at least one field")
        return self


class TraitPayload(_Partial):
    """Trait state values to set, 0..1 (the others keep theirs)."""

    calm: Unit | SkipJsonSchema[None] = None
    empathy: Unit | SkipJsonSchema[None] = None
    curiosity: Unit | SkipJsonSchema[None] = None


class ValuePayload(_Partial):
    """Values to set, 0..1 (the others keep theirs)."""

    stability: Unit | SkipJsonSchema[None] = None
    openness: Unit | SkipJsonSchema[None] = None
    safety_bias: Unit | SkipJsonSchema[None] = None
    user_alignment: Unit | SkipJsonSchema[None] = None


class ModePayload(BaseModel):
    """A subjectivity mode to force, or AUTO to let the control plane decide again."""

    model_config = _STRICT
    mode: Literal["S0_REACTIVE", "S1_REFLECTIVE", "S2_AUTONOMOUS", "S3_SAFE", "AUTO"]


class FreezePayload(BaseModel):
    """true: no trait, value or budget change until false."""

    model_config = _STRICT
    freeze: bool


class GlobalPayload(BaseModel):
    """SILENT, or AUTO to give the global state back to the control plane."""

    model_config = _STRICT
    state: Literal["SILENT", "AUTO"]


class _Override(BaseModel):
    model_config = _STRICT
    reason: str = Field(min_length=1, max_length=500, description="why (recorded)")
    actor: str = Field(default="operator", min_length=1, max_length=128, pattern=ID_PATTERN)

    def changes(self) -> dict[str, Any]:
        payload: BaseModel = getattr(self, "payload")  # noqa: B009 - each kind declares it
        return payload.model_dump(exclude_none=True)


class TraitSet(_Override):
    kind: Literal["trait_set"]
    payload: TraitPayload


class ValueSet(_Override):
    kind: Literal["value_set"]
    payload: ValuePayload


class SubjectivityMode(_Override):
    kind: Literal["subjectivity_mode"]
    payload: ModePayload


class FreezeUpdates(_Override):
    kind: Literal["freeze_updates"]
    payload: FreezePayload


class GlobalState(_Override):
    kind: Literal["global_state"]
    payload: GlobalPayload


Override = Annotated[
    TraitSet | ValueSet | SubjectivityMode | FreezeUpdates | GlobalState,
    Field(discriminator="kind"),
]


class OverrideResult(BaseModel):
    """The recorded override and the persona's control state after it."""

    event_id: str
    persona_id: str
    kind: str
    state: IdentityState


_FORBIDDEN = {
    "model": ErrorBody,
    "description": "No operator key is configured, the header is missing or wrong, or the"
    " request came from another site's page (CSRF guard)",
}
_RESPONSES = {
    **write_responses("Unknown persona", "Unknown kind, or a payload of the wrong shape"),
    403: _FORBIDDEN,
}


def key_ok(configured: str | None, sent: str | None) -> bool:
    """Constant-time comparison; no configured key refuses everything."""
    if not configured or sent is None:
        return False
    return hmac.compare_digest(sent.encode("utf-8"), configured.encode("utf-8"))


def _record(tx: WriteTx, persona_id: str, body: Any, kind: str) -> list[Any]:
    # Read, decide and append in one writer transaction: a turn's identity step cannot
    # interleave and overwrite the override.
    prev = tx.read(queries.identity_state, persona_id)
    note = OverrideNote(kind=kind, actor=body.actor, reason=body.reason, at=tx.wall_time)
    state = identity.apply_override(prev, kind, body.changes(), note)
    stream = f"persona:{persona_id}"  # the stream persona-scoped events go on
    event = NewEvent(
        payload=OperatorOverride(
            persona_id=persona_id,
            kind=kind,  # type: ignore[arg-type]  # one of the five literals, by the union
            payload=body.changes(),
            reason=body.reason,
            actor=body.actor,
            state=state,
        ),
        stream_id=stream,
        actor=f"operator:{body.actor}",
    )
    return tx.append([event], {stream: tx.stream_version(stream)})


@router.post(
    "/persona/operator/override",
    response_model=OverrideResult,
    responses=_RESPONSES,
)
async def override(
    body: Override,
    engine: EngineDep,
    x_persona_operator_key: Annotated[str | None, Header()] = None,
    persona_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, max_length=128, description="default persona")
    ] = None,
) -> Any:
    """Set traits or values, force or release a subjectivity mode, freeze drift, or put the
    persona SILENT; recorded as an `operator.override` event with actor and reason."""
    key = engine.settings.server.operator_key
    if not key_ok(key.get_secret_value() if key else None, x_persona_operator_key):
        log.warning("operator override refused: no key configured or a wrong key")
        return JSONResponse({"error": "operator key missing or wrong"}, status_code=403)
    pid = persona_id or engine.default_persona_id
    if pid is None or await engine.store.read(queries.get_persona, pid) is None:
        return JSONResponse({"error": f"unknown persona_id {pid!r}"}, status_code=404)
    kind = body.kind
    stored = await engine.store.transact(lambda tx: _record(tx, pid, body, kind))
    event = stored[0]
    assert isinstance(event.payload, OperatorOverride)
    log.info("operator %s: %s on %s (%s)", body.actor, kind, pid, body.reason)
    state = event.payload.state
    return OverrideResult(event_id=event.event_id, persona_id=pid, kind=kind, state=state)
