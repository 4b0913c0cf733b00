"""`POST /persona/sleep`: the persona (or its user) asks for a sleep consolidation now."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from persona.sleep import sleep
from persona.web.changes import write_responses
from persona.web.deps import EngineDep
from persona.web.schemas import Identifier

router = APIRouter()

_RESPONSES = write_responses("Unknown persona", "Invalid field values")


class SleepRequest(BaseModel):
    """Which persona sleeps (default: the server's default persona)."""

    model_config = ConfigDict(extra="forbid")

    persona_id: Identifier | None = None


class SleepResult(BaseModel):
    """What the sleep wrote; all counts zero and no `event_id` when nothing was new."""

    persona_id: str
    trigger: str
    method: str
    notes: int
    digests: int
    beliefs: int
    consolidated: int
    merged: int
    superseded: int
    narrated: int
    fallbacks: int
    event_id: str | None


@router.post("/persona/sleep", response_model=SleepResult, responses=_RESPONSES)
async def sleep_now(engine: EngineDep, body: SleepRequest | None = None) -> SleepResult:
    """Consolidate the persona's memories now (trigger `asked`): L1 into L2 digests and L3
    beliefs, originals kept; running it again with nothing new writes nothing."""
    persona_id = (body.persona_id if body else None) or engine.default_persona_id
    settings = engine.settings.sleep
    report = await sleep(engine.store, persona_id, "asked", settings, engine.backend)
    return SleepResult.model_validate(report.as_json())
