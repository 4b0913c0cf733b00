"""Recovery: turns a stopped process left unfinished are recorded as failed.

A turn still queued (accepted, never started) is failed too, never re-run: re-running it
could answer, maybe hours later, a message the user has given up on or sent again. The
failure says it was not answered; sending it again is the user's call.
"""

from __future__ import annotations

from persona.events import TurnFailed
from persona.pipeline.turn import chat_stream
from persona.storage import queries
from persona.storage.eventlog import NewEvent
from persona.storage.store import Store, WriteTx

# The stage a failure of a turn that never started is blamed on.
QUEUE_STAGE = "queue"
INTERRUPTED = "interrupted: the process stopped before the turn ended"
INTERRUPTED_QUEUED = "interrupted: the process stopped before the turn started"
# Turn.execute records this for a turn cancelled mid-run at shutdown.
SHUTDOWN = "cancelled: server shutting down"
SHUTDOWN_QUEUED = "cancelled: server shutting down before the turn started"


def failure(
    turn_id: str, chat_id: str, persona_id: str, trace_id: str, stage: str, error: str
) -> NewEvent:
    """The turn.failed event the runner appends for a turn it ends itself."""
    return NewEvent(
        payload=TurnFailed(
            turn_id=turn_id, chat_id=chat_id, persona_id=persona_id, stage=stage, error=error
        ),
        stream_id=chat_stream(chat_id),
        actor="runner",
        trace_id=trace_id,
    )


async def fail_unfinished(
    store: Store,
    started: tuple[str, str] = ("recovery", INTERRUPTED),
    queued: tuple[str, str] = (QUEUE_STAGE, INTERRUPTED_QUEUED),
) -> int:
    """Append turn.failed, with the (stage, error) given, for every turn still started or
    queued. Returns how many.

    One write transaction: it sees every write still in flight before it (a turn that a
    cancellation caught mid-append), and nothing can fail the same turn twice.
    """

    def fail(tx: WriteTx) -> int:
        orphans = tx.read(queries.unfinished_turns)
        events = []
        for turn in orphans:
            stage, error = queued if turn["status"] == "queued" else started
            ids = (turn["turn_id"], turn["chat_id"], turn["persona_id"], turn["trace_id"])
            events.append(failure(*ids, stage, error))
        if events:
            tx.append(events)
        return len(events)

    return await store.transact(fail)


async def recover(store: Store) -> int:
    """On start: fail every turn a dead process left started or queued. Returns how many."""
    return await fail_unfinished(store)
