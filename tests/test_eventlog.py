"""The event log: append-only, versioned streams, atomic with its projections."""

from __future__ import annotations

import sqlite3

import pytest

from persona.events import ChatStarted, PersonaCreated, UnknownEventType
from persona.projector import Projector
from persona.storage.db import connect, run_in_transaction
from persona.storage.eventlog import (
    ConcurrencyError,
    NewEvent,
    count_events,
    read_events,
)
from persona.storage.migrations import migrate
from persona.storage.store import WriteTx

AT = "2026-01-01T00:00:00.000000Z"


@pytest.fixture
def conn(tmp_path):
    c = connect(tmp_path / "log.db")
    migrate(c)
    yield c
    c.close()


def _persona_event(pid: str = "p1") -> NewEvent:
    return NewEvent(
        payload=PersonaCreated(persona_id=pid, name="P", description="d", genesis="g"),
        stream_id=f"persona:{pid}",
        actor="system",
    )


def _chat_event(pid: str = "a") -> NewEvent:
    return NewEvent(
        payload=ChatStarted(chat_id="c", persona_id=pid, user_id="u", title="t"),
        stream_id=f"persona:{pid}",
        actor="t",
    )


def _append(conn, events, expected=None):
    return run_in_transaction(conn, lambda c: WriteTx(c, Projector(), AT).append(events, expected))


def test_update_and_delete_are_refused_by_the_database(conn):
    _append(conn, [_persona_event()])
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE events SET payload = '{}'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM events")
    assert count_events(conn) == 1
    stored = next(read_events(conn)).payload
    assert isinstance(stored, PersonaCreated) and stored.name == "P"


def test_streams_get_consecutive_versions_and_global_sequence(conn):
    stored = _append(conn, [_persona_event("a"), _persona_event("b")])
    more = _append(conn, [_chat_event("a")])
    assert [e.stream_version for e in stored + more] == [1, 1, 2]
    assert [e.seq for e in stored + more] == sorted(e.seq for e in stored + more)


def test_type_and_version_come_from_the_payload_class(conn):
    _append(conn, [_persona_event("a")])
    row = conn.execute("SELECT type, schema_version FROM events").fetchone()
    assert tuple(row) == ("persona.created", PersonaCreated.version)


def test_optimistic_concurrency_rejects_a_stale_writer(conn):
    _append(conn, [_persona_event("a")])
    late = _chat_event("a")
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
    # The same chat started twice: the second fold violates the chats primary key.
    with pytest.raises(sqlite3.IntegrityError):
        _append(conn, [_persona_event("a"), _chat_event("a"), _chat_event("a")])
    assert count_events(conn) == 0
    assert conn.execute("SELECT COUNT(*) FROM persona").fetchone()[0] == 0


def test_an_unknown_event_type_in_the_log_is_refused_on_read(conn):
    conn.execute(
        "INSERT INTO events (event_id, stream_id, stream_version, wall_time, actor, type,"
        " payload) VALUES ('x', 's', 1, 'now', 'x', 'no.such.event', '{}')"
    )
    with pytest.raises(UnknownEventType, match=r"no\.such\.event"):
        list(read_events(conn))


def test_read_filters_by_trace(conn):
    traced = NewEvent(
        payload=PersonaCreated(persona_id="z", name="Z", description="d", genesis="g"),
        stream_id="persona:z",
        actor="system",
        trace_id="t1",
    )
    _append(conn, [traced, _persona_event("y")])
    events = list(read_events(conn, trace_id="t1"))
    assert [ev.payload.persona_id for ev in events] == ["z"]  # type: ignore[attr-defined]
