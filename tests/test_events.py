"""The event catalog: typed payloads, versions, upcasters, and handler coverage."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import ClassVar

import pytest
from pydantic import ValidationError

from persona.events import (
    CATALOG,
    EVENT_TYPES,
    Catalog,
    EdgeAsserted,
    EventPayload,
    PersonaCreated,
    TelemetryRecorded,
    TurnCompleted,
    TurnStarted,
    UnknownEventType,
    UpcastError,
)
from persona.projector import Projector
from persona.projector.handlers import HANDLERS
from persona.storage.db import run_in_transaction
from persona.storage.eventlog import NewEvent, read_events
from persona.storage.migrations import migrate
from persona.storage.store import WriteTx


def test_catalog_and_projection_handlers_cover_each_other():
    assert set(HANDLERS) == set(EVENT_TYPES)
    assert set(CATALOG.types.values()) == set(EVENT_TYPES)


def test_every_payload_is_frozen_and_refuses_unknown_keys():
    for cls in EVENT_TYPES:
        assert cls.model_config.get("frozen") is True, cls
        assert cls.model_config.get("extra") == "forbid", cls
        assert cls.event_type and cls.version >= 1
        # Each version below the current one has its upcaster: the chain is complete.
        assert sorted(cls.upcasters) == list(range(1, cls.version)), cls
    with pytest.raises(ValidationError):
        PersonaCreated(persona_id="p", name="n", description="d", genesis="g", extra=1)  # type: ignore[call-arg]
    p = PersonaCreated(persona_id="p", name="n", description="d", genesis="g")
    with pytest.raises(ValidationError):
        p.name = "other"  # type: ignore[misc]


def test_a_0_1_0_turn_started_upcasts_to_a_linear_turn():
    v1 = {
        "turn_id": "t",
        "chat_id": "c",
        "persona_id": "p",
        "user_id": "u",
        "turn_index": 3,
        "message": "hi",
        "reward_signal": 0.5,
        "gen": {"temperature": 0.7, "max_tokens": 200},
        "backend": "scripted",
        "config_hash": "abc",
    }
    event = CATALOG.decode("turn.started", 1, v1)
    assert isinstance(event, TurnStarted)
    assert (event.parent_turn_id, event.linear, event.engine_version) == (None, True, "0.1.0")
    assert event.reward_signal == 0.5 and event.gen.max_tokens == 200


def test_old_edge_telemetry_and_completion_payloads_upcast():
    edge = CATALOG.decode(
        "edge.asserted",
        1,
        {
            "persona_id": "p",
            "src": "persona:p",
            "rel": "talks_with",
            "dst": "user:u",
            "weight": 0.2,
        },
    )
    assert isinstance(edge, EdgeAsserted)
    assert (edge.weight, edge.previous_weight, edge.signal) == (0.2, None, None)
    tel = CATALOG.decode(
        "telemetry.recorded",
        1,
        {
            "chat_id": "c",
            "persona_id": "p",
            "turn_index": 0,
            "telemetry": {"C": 0.5, "N": 1.0, "M": 0.0, "S": 1.0, "R": 0.5},
            "dialogue_state": "opening",
        },
    )
    assert isinstance(tel, TelemetryRecorded) and tel.turn_id is None
    done = CATALOG.decode(
        "turn.completed",
        1,
        {"turn_id": "t", "chat_id": "c", "persona_id": "p", "reply": "r", "meta": {"x": 1}},
    )
    assert isinstance(done, TurnCompleted) and done.reply == "r"


def test_a_broken_upcast_chain_is_an_error_not_a_half_read_event():
    class Thing(EventPayload):
        event_type: ClassVar[str] = "thing.happened"
        version: ClassVar[int] = 3
        upcasters = MappingProxyType({1: lambda p: {**p, "b": 0}})

        a: int
        b: int
        c: int

    catalog = Catalog([Thing])
    with pytest.raises(UpcastError, match="no upcaster from v2 to v3"):
        catalog.decode("thing.happened", 1, {"a": 1})
    with pytest.raises(UpcastError, match="newer than this code"):
        catalog.decode("thing.happened", 4, {"a": 1, "b": 2, "c": 3})
    assert catalog.decode("thing.happened", 3, {"a": 1, "b": 2, "c": 3}) == Thing(a=1, b=2, c=3)
    with pytest.raises(UnknownEventType):
        catalog.decode("other.thing", 1, {})


def test_duplicate_event_types_are_refused():
    with pytest.raises(ValueError, match="defined twice"):
        Catalog([PersonaCreated, PersonaCreated])


def test_upcasting_happens_on_read_and_never_rewrites_the_row(tmp_path, db):
    conn = db(tmp_path / "log.db")
    migrate(conn)
    stored = {"persona_id": "p", "src": "a", "rel": "r", "dst": "b", "weight": 0.25}
    conn.execute(
        "INSERT INTO events (event_id, stream_id, stream_version, wall_time, actor, type,"
        " schema_version, payload) VALUES ('e', 'persona:p', 1, 'now', 'x', 'edge.asserted',"
        " 1, ?)",
        (json.dumps(stored),),
    )
    (event,) = read_events(conn)
    assert isinstance(event.payload, EdgeAsserted) and event.schema_version == 2
    raw = conn.execute("SELECT schema_version, payload FROM events").fetchone()
    assert (raw[0], json.loads(raw[1])) == (1, stored)


def test_new_events_are_written_at_their_current_version(tmp_path, db):
    conn = db(tmp_path / "log.db")
    migrate(conn)
    edge = EdgeAsserted(
        persona_id="p",
        src="a",
        rel="r",
        dst="b",
        weight=0.1,
        previous_weight=None,
        signal=0.5,
        rate=0.2,
        turn_id="t",
    )
    run_in_transaction(
        conn,
        lambda c: WriteTx(c, Projector(), "2026-01-01T00:00:00.000000Z").append(
            [NewEvent(payload=edge, stream_id="persona:p", actor="x")]
        ),
    )
    raw = conn.execute("SELECT type, schema_version, payload FROM events").fetchone()
    assert (raw[0], raw[1]) == ("edge.asserted", 2)
    assert json.loads(raw[2]) == edge.to_json()
