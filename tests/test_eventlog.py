"""The event log: append-only, versioned streams, atomic with its projections."""

from __future__ import annotations

import sqlite3

import pytest

from persona.projector import UnknownEventType, append_and_project
from persona.storage.db import connect, run_in_transaction
from persona.storage.eventlog import (
    ConcurrencyError,
    NewEvent,
    count_events,
    insert_events,
    read_events,
)
from persona.storage.migrations import migrate


@pytest.fixture
def conn(tmp_path):
    c = connect(tmp_path / "log.db")
    migrate(c)
    yield c
    c.close()


def _persona_event(pid: str = "p1") -> NewEvent:
    return NewEvent(
        type="persona.created",
        stream_id=f"persona:{pid}",
        actor="system",
        payload={"persona_id": pid, "name": "P", "description": "d", "genesis": "g", "traits": {}},
    )


def _append(conn, events, expected=None):
    return run_in_transaction(
        conn, append_and_project, events, "2026-01-01T00:00:00.000000Z", expected
    )


def test_update_and_delete_are_refused_by_the_database(conn):
    _append(conn, [_persona_event()])
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE events SET payload = '{}'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM events")
    assert count_events(conn) == 1
    assert next(read_events(conn)).payload["name"] == "P"


def test_streams_get_consecutive_versions_and_global_sequence(conn):
    stored = _append(conn, [_persona_event("a"), _persona_event("b")])
    more = _append(
        conn,
        [
            NewEvent(
                type="chat.started",
                stream_id="persona:a",
                actor="t",
                payload={"chat_id": "c", "persona_id": "a", "user_id": "u", "title": "t"},
            )
        ],
    )
    assert [e.stream_version for e in stored + more] == [1, 1, 2]
    assert [e.seq for e in stored + more] == sorted(e.seq for e in stored + more)


def test_optimistic_concurrency_rejects_a_stale_writer(conn):
    _append(conn, [_persona_event("a")])
    late = NewEvent(
        type="chat.started",
        stream_id="persona:a",
        actor="t",
        payload={"chat_id": "c", "persona_id": "a", "user_id": "u", "title": "t"},
    )
    with pytest.raises(ConcurrencyError):
        _append(conn, [late], {"persona:a": 0})  # the writer believed the stream was empty
    assert count_events(conn) == 1
    assert _append(conn, [late], {"persona:a": 1})[0].stream_version == 2


def test_same_stream_version_twice_is_a_constraint_violation(conn):
    _append(conn, [_persona_event("a")])
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO events (event_id, stream_id, stream_version, wall_time, actor, type,"
            " payload) VALUES ('dup', 'persona:a', 1, 'now', 'x', 'persona.created', '{}')"
        )


def test_a_failing_projection_rolls_back_the_append(conn):
    bad = NewEvent(type="no.such.event", stream_id="s", actor="t", payload={})
    with pytest.raises(UnknownEventType):
        _append(conn, [_persona_event("a"), bad])
    assert count_events(conn) == 0
    assert conn.execute("SELECT COUNT(*) FROM persona").fetchone()[0] == 0


def test_read_filters_by_trace_and_upcasts_old_payloads(conn):
    e = NewEvent(
        type="persona.created",
        stream_id="persona:z",
        actor="system",
        trace_id="t1",
        schema_version=0,
        payload={"persona_id": "z", "name": "Z", "description": "d", "genesis": "g", "traits": {}},
    )
    run_in_transaction(conn, insert_events, [e, _persona_event("y")], "2026-01-01T00:00:00.000000Z")
    events = list(read_events(conn, trace_id="t1"))
    assert [ev.payload["persona_id"] for ev in events] == ["z"]

    def v0_to_v1(payload):
        return {**payload, "name": payload["name"].lower()}

    upcast = list(read_events(conn, trace_id="t1", upcasters={("persona.created", 0): v0_to_v1}))
    assert upcast[0].payload["name"] == "z"
    assert upcast[0].schema_version == 1
    # The stored row is never rewritten.
    assert '"Z"' in conn.execute("SELECT payload FROM events WHERE trace_id='t1'").fetchone()[0]
