"""The operator endpoint, through real HTTP: key check, validation, events, and that an
override (a freeze, SILENT, a forced mode) holds across turns and a restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import LiveServer

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend
from persona.storage import queries
from persona.storage.db import connect
from persona.storage.eventlog import count_events
from persona.web.operator import key_ok

KEY = "operator-key-0123456789abcdef"
URL = "/persona/operator/override"


def _settings(tmp_path: Path, **server: Any) -> Settings:
    return Settings(db_path=tmp_path / "op.db", llm={"provider": "scripted"}, server=server)


@contextmanager
def serve(settings: Settings) -> Iterator[httpx.Client]:
    engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock())
    with LiveServer(engine) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        yield http


def override(http: httpx.Client, kind: str, payload: dict[str, Any], key: str | None = KEY):
    headers = {"x-persona-operator-key": key} if key is not None else {}
    body = {"kind": kind, "payload": payload, "reason": "test", "actor": "ops-1"}
    return http.post(URL, json=body, headers=headers)


def chat(http: httpx.Client, message: str, reward: float = 0.0) -> dict[str, Any]:
    body = {"message": message, "session_id": "c1", "reward_signal": reward}
    response = http.post("/persona/chat", json=body)
    assert response.status_code == 200, response.text
    meta: dict[str, Any] = response.json()["meta"]
    return meta


def test_key_ok_is_constant_time_and_refuses_without_a_configured_key():
    assert key_ok(KEY, KEY)
    assert not key_ok(KEY, KEY + "x") and not key_ok(KEY, None)
    assert not key_ok(None, KEY) and not key_ok("", "")


@pytest.mark.parametrize("server", [{}, {"operator_key": KEY}])
def test_a_missing_or_wrong_key_is_403_and_writes_nothing(tmp_path, server):
    settings = _settings(tmp_path, **server)
    with serve(settings) as http:
        conn = connect(settings.db_path)
        try:
            before = count_events(conn)
            for key in (None, "wrong-key-0123456789", KEY if not server else None):
                response = override(http, "freeze_updates", {"freeze": True}, key)
                assert response.status_code == 403, response.text
                assert KEY not in response.text
            assert count_events(conn) == before
        finally:
            conn.close()


@pytest.mark.parametrize(
    "kind,payload",
    [
        ("nope", {"freeze": True}),
        ("freeze_updates", {"freeze": "yes please"}),
        ("freeze_updates", {"freeze": True, "extra": 1}),
        ("trait_set", {}),
        ("trait_set", {"calm": 1.5}),
        ("trait_set", {"calm": None, "empathy": 0.4}),
        ("trait_set", {"charm": 0.5}),
        ("value_set", {"calm": 0.5}),
        ("subjectivity_mode", {"mode": "S9"}),
        ("global_state", {"state": "OVERLOADED"}),
    ],
)
def test_unknown_kinds_and_payload_shapes_are_422(tmp_path, kind, payload):
    with serve(_settings(tmp_path, operator_key=KEY)) as http:
        assert override(http, kind, payload).status_code == 422


def test_a_freeze_holds_across_turns_and_a_restart(tmp_path):
    settings = _settings(tmp_path, operator_key=KEY)
    with serve(settings) as http:
        chat(http, "hello there")
        moved = chat(http, "thanks, that helped a lot", reward=1.0)["identity"]
        assert moved["applied"] and moved["values"]["user_alignment"] > 0.5
        response = override(http, "freeze_updates", {"freeze": True})
        assert response.status_code == 200, response.text
        assert response.json()["state"]["frozen"] is True
        frozen = chat(http, "great answer", reward=1.0)["identity"]
        assert frozen["frozen"] and not frozen["applied"]
        assert frozen["values"] == moved["values"] and frozen["traits"] == moved["traits"]
        assert frozen["last_override"] == {
            "kind": "freeze_updates",
            "actor": "ops-1",
            "reason": "test",
            "at": frozen["last_override"]["at"],
        }
        page = http.get("/chats/c1")
        assert 'data-testid="frozen"' in page.text and 'data-testid="operator"' in page.text
    with serve(settings) as http:  # a restart: the freeze is read from the log's projection
        after = chat(http, "wonderful", reward=1.0)["identity"]
        assert after["frozen"] and after["values"] == moved["values"]
        assert override(http, "freeze_updates", {"freeze": False}).status_code == 200
        thawed = chat(http, "wonderful again", reward=1.0)["identity"]
        assert thawed["applied"]
        assert thawed["values"]["user_alignment"] > moved["values"]["user_alignment"]
    conn = connect(settings.db_path)
    try:
        kinds = conn.execute(
            "SELECT json_extract(payload, '$.kind') FROM events WHERE type = 'operator.override'"
        ).fetchall()
        pid = conn.execute("SELECT persona_id FROM persona").fetchone()[0]
        state = queries.identity_state(conn, pid)
    finally:
        conn.close()
    assert [k[0] for k in kinds] == ["freeze_updates", "freeze_updates"]
    assert state.frozen is False


def test_silent_and_a_forced_mode_steer_metacognition_until_released(tmp_path):
    settings = _settings(tmp_path, operator_key=KEY)
    with serve(settings) as http:
        assert chat(http, "hello")["global_state"] == "NORMAL"
        assert override(http, "global_state", {"state": "SILENT"}).status_code == 200
        assert override(http, "subjectivity_mode", {"mode": "S2_AUTONOMOUS"}).status_code == 200
        meta = chat(http, "are you there?")
        assert meta["global_state"] == "SILENT"
        assert meta["subjectivity_mode"] == "S2_AUTONOMOUS"
        assert "forced by the operator" in meta["subjectivity"]["reasons"][-1]
    with serve(settings) as http:
        assert chat(http, "still there?")["global_state"] == "SILENT"
        assert override(http, "global_state", {"state": "AUTO"}).status_code == 200
        assert override(http, "subjectivity_mode", {"mode": "AUTO"}).status_code == 200
        meta = chat(http, "hello again")
        assert meta["global_state"] != "SILENT"
        assert "forced" not in meta["subjectivity"]["reasons"][-1]


def test_trait_and_value_sets_are_recorded_with_actor_and_reason(tmp_path):
    settings = _settings(tmp_path, operator_key=KEY)
    with serve(settings) as http:
        response = override(http, "value_set", {"safety_bias": 0.9})
        assert response.status_code == 200, response.text
        state = response.json()["state"]
        assert state["values"]["safety_bias"] == 0.9 and state["values"]["openness"] == 0.5
        response = override(http, "trait_set", {"calm": 0.8})
        assert response.json()["state"]["traits"]["calm"] == 0.8
        assert response.json()["state"]["values"]["safety_bias"] == 0.9
    conn = connect(settings.db_path)
    try:
        rows = conn.execute(
            "SELECT actor, stream_id, payload FROM events WHERE type = 'operator.override'"
        ).fetchall()
    finally:
        conn.close()
    assert [r[0] for r in rows] == ["operator:ops-1", "operator:ops-1"]
    assert len({r[1] for r in rows}) == 1 and rows[0][1].startswith("persona:")
    assert all(json.loads(r[2])["reason"] == "test" for r in rows)
