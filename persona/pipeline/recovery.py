"""Recovery: turns a dead process left unfinished are recorded as failed on start."""

from __future__ import annotations

from persona.events import TurnFailed
from persona.pipeline.turn import chat_stream
from persona.storage import queries
from persona.storage.eventlog import NewEvent
from persona.storage.store import Store

INTERRUPTED = "interrupted: the process stopped before the turn ended"


async def recover(store: Store) -> int:
    """Append turn.failed for every turn still 'started'. Returns how many."""
    orphans = await store.read(queries.unfinished_turns)
    for turn in orphans:
        await store.append(
            [
                NewEvent(
                    payload=TurnFailed(
                        turn_id=turn["turn_id"],
                        chat_id=turn["chat_id"],
                        persona_id=turn["persona_id"],
                        stage="recovery",
                        error=INTERRUPTED,
                    ),
                    stream_id=chat_stream(turn["chat_id"]),
                    actor="runner",
                    trace_id=turn["trace_id"],
                )
            ]
        )
    return len(orphans)
