"""The HTTP contract: JSON chat, SSE chat, broadcast, failures, and bad input."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from helpers import aread_sse, read_sse, wait_until

from persona.llm.scripted import FailAfter
from persona.pipeline.meta import MetaV1
from persona.pipeline.prompts import PromptSet
from persona.storage.eventlog import count_events, read_events

META_KEYS = {
    "trace_id",
    "intent",
    "dialogue_state",
    "telemetry",
    "safety",
    "decision_candidates",
    "memory",
    "timing_ms",
    "meta_v1",
    "meta_version",
    "engine_version",
    "build_sha",
    "config_hash",
}


def test_health_and_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/persona/chat", "/persona/chat/stream", "/health"} <= set(paths)


def test_chat_contract(client, settings):
    r = client.post("/persona/chat", json={"message": "hello"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"reply", "meta", "session_id", "turn_id"}
    assert body["reply"] == "(scripted reply) You said: hello"
    meta = body["meta"]
    assert set(meta) >= META_KEYS
    assert set(meta["meta_v1"]) == set(tuple(MetaV1.model_fields))
    assert meta["meta_v1"]["trace_id"] == meta["trace_id"]
    assert len(meta["intent"]) == 8 and all(0 <= v <= 1 for v in meta["intent"].values())
    assert set(meta["telemetry"]) == {"C", "N", "M", "S", "R"}
    assert set(meta["safety"]) == {"total_risk", "override", "categories", "flags", "reasons"}
    assert isinstance(meta["decision_candidates"], list)
    assert {"perception", "memory", "gating", "metacognition", "speaker"} <= set(meta["timing_ms"])
    config_hash = settings.config_hash(PromptSet.load().sources)
    assert meta["config_hash"] == config_hash and len(config_hash) == 64
    assert meta["session_id"] == body["session_id"] and meta["turn_id"] == body["turn_id"]

    again = client.post(
        "/persona/chat", json={"message": "and again", "session_id": body["session_id"]}
    )
    assert again.json()["session_id"] == body["session_id"]
    history = client.get(f"/persona/chat/{body['session_id']}").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]


def test_unseen_session_id_starts_a_chat_under_that_id(client):
    r = client.post("/persona/chat", json={"message": "hi", "session_id": "my-own:id_1.x"})
    assert r.json()["session_id"] == "my-own:id_1.x"
    assert client.get("/persona/chat/my-own:id_1.x").json()["chat"]["persona_id"] == "default"


def test_trace_endpoint_lists_the_turns_events(client):
    meta = client.post("/persona/chat", json={"message": "hi"}).json()["meta"]
    body = client.get(f"/persona/traces/{meta['trace_id']}").json()
    types = [e["type"] for e in body["events"]]
    assert types[0] == "chat.started" and types[-1] == "turn.completed"
    # The same pure function of the events gives the same meta as the reply had.
    assert body["meta"] == meta
    assert client.get(f"/persona/traces/{'0' * 32}").status_code == 404


def test_stream_contract_and_event_order(client, backend):
    backend.enqueue("Hello there, traveller. Maps are my favourite thing.")
    with client.stream("POST", "/persona/chat/stream", json={"message": "hi"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(read_sse(r))
    kinds = [k for k, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"} and len(kinds) > 3
    start, done = events[0][1], events[-1][1]
    assert set(start) == {"trace_id", "session_id", "turn_id"}
    assert "".join(d["text"] for k, d in events if k == "delta") == done["reply"]
    assert done["reply"] == "Hello there, traveller. Maps are my favourite thing."
    assert done["meta"]["trace_id"] == start["trace_id"] and set(done["meta"]) >= META_KEYS


def test_llm_failure_mid_stream_records_a_failed_turn(client, backend, settings, db):
    backend.enqueue(FailAfter("I was about to say something", "model crashed"))
    with client.stream(
        "POST", "/persona/chat/stream", json={"message": "hi", "session_id": "s1"}
    ) as r:
        events = list(read_sse(r))
    kinds = [k for k, _ in events]
    assert kinds[0] == "start" and "delta" in kinds and kinds[-1] == "error"
    error = events[-1][1]
    assert "model crashed" in error["error"] and error["trace_id"] == events[0][1]["trace_id"]
    history = client.get("/persona/chat/s1").json()["messages"]
    assert [m["role"] for m in history] == ["user"]  # no half reply stored as an answer
    assert history[0]["turn_status"] == "failed"
    types = [e.type for e in read_events(db(settings.db_path), trace_id=error["trace_id"])]
    assert "turn.failed" in types and "reply.completed" not in types
    assert "memory.written" not in types
    # The chat goes on afterwards.
    assert (
        client.post("/persona/chat", json={"message": "again", "session_id": "s1"}).status_code
        == 200
    )


def test_llm_failure_on_the_json_endpoint_is_a_502_with_trace(client, backend):
    backend.enqueue(FailAfter("", "backend unreachable"))
    r = client.post("/persona/chat", json={"message": "hi"})
    assert r.status_code == 502
    assert "backend unreachable" in r.json()["error"] and len(r.json()["trace_id"]) == 32
    trace = client.get(f"/persona/traces/{r.json()['trace_id']}").json()
    assert trace["events"][-1]["type"] == "turn.failed" and trace["meta"] is None


BAD_BODIES = [
    (b'{"message": ""}', 422),
    (b'{"message": "   "}', 422),
    (('{"message": "' + "x" * 32001 + '"}').encode(), 422),
    (b'{"message": 42}', 422),
    (b'{"message": ["hi"]}', 422),
    (b'{"message": "hi", "reward_signal": "high"}', 422),
    (b'{"message": "hi", "reward_signal": 1.5}', 422),
    (b'{"message": "hi", "reward_signal": -2}', 422),
    (b'{"message": "hi", "session_id": "has space"}', 422),
    (('{"message": "hi", "session_id": "' + "a" * 129 + '"}').encode(), 422),
    (b'{"message": "hi", "session_id": "semi;colon"}', 422),
    (b'{"message": "hi", "gen": {"temperature": 9}}', 422),
    (b'{"message": "hi", "gen": {"max_tokens": 0}}', 422),
    (b'{"message": "hi", "gen": {"top_k": 3}}', 422),
    (b'{"message": "hi", "unknown": 1}', 422),
    (b'{"mesage": "hi"}', 422),
    (b"[]", 422),
    (b'{"message": "hi"', 400),
    (b"not json at all", 400),
    (b'{"message": "\xff\xfe bad utf-8"}', 400),
    (b'{"message": "hi", "persona_id": "nobody"}', 404),
]


@pytest.mark.parametrize("path", ["/persona/chat", "/persona/chat/stream"])
@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
def test_bad_input_is_a_clear_4xx_and_nothing_is_persisted(
    client, settings, db, path, body, status
):
    conn = db(settings.db_path)
    before = count_events(conn)
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert count_events(conn) == before


def test_session_of_another_persona_is_a_conflict(client, settings, db):
    from persona.personas import PersonaSpec, created_event

    client.post("/persona/chat", json={"message": "hi", "session_id": "s"})
    engine = client.app.state.engine
    spec = PersonaSpec(persona_id="other", name="O", description="d", genesis="g")
    engine.store.sync_append([created_event(spec)])
    conn = db(settings.db_path)
    before = count_events(conn)
    r = client.post(
        "/persona/chat", json={"message": "hi", "session_id": "s", "persona_id": "other"}
    )
    assert r.status_code == 409 and "default" in r.json()["error"]
    assert count_events(conn) == before
    ok = client.post("/persona/chat", json={"message": "hi", "persona_id": "other"})
    assert ok.json()["meta"]["persona_id"] == "other"


async def test_client_disconnect_mid_stream_still_completes_the_turn(live_server, backend):
    reply = "one two three four five six seven eight nine ten eleven twelve"
    backend.enqueue(reply)
    backend.delay_s = 0.05
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        async with http.stream(
            "POST", "/persona/chat/stream", json={"message": "hi", "session_id": "gone"}
        ) as r:
            async for kind, _ in aread_sse(r):
                if kind == "delta":
                    break  # the client goes away after the first token

        def completed():
            msgs = httpx.get(f"{live_server.url}/persona/chat/gone").json()["messages"]
            return msgs if len(msgs) == 2 else None

        messages = await asyncio.to_thread(wait_until, completed, 10)
    assert messages[1]["content"] == reply and messages[1]["turn_status"] == "completed"


async def test_every_open_tab_receives_the_turn(live_server, backend):
    backend.delay_s = 0.01
    backend.enqueue("Both tabs should see this reply")
    engine = live_server.engine

    async def tab():
        async with (
            httpx.AsyncClient(base_url=live_server.url, timeout=10) as http,
            http.stream("GET", "/persona/chat/shared/events") as r,
        ):
            return [ev async for ev in aread_sse(r)]

    tabs = [asyncio.create_task(tab()) for _ in range(2)]
    await asyncio.to_thread(wait_until, lambda: engine.broadcaster.subscriber_count("shared") == 2)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        sent = (
            await http.post("/persona/chat", json={"message": "hi", "session_id": "shared"})
        ).json()
    results = await asyncio.wait_for(asyncio.gather(*tabs), timeout=10)
    for events in results:
        kinds = [k for k, _ in events]
        # Accepted (queued) first, then the turn itself.
        assert kinds[:2] == ["queued", "start"] and kinds[-1] == "done"
        assert events[0][1]["message"] == "hi"
        assert events[0][1]["trace_id"] == events[1][1]["trace_id"] == sent["meta"]["trace_id"]
        assert "".join(d["text"] for k, d in events if k == "delta") == sent["reply"]
        assert events[-1][1]["meta"]["trace_id"] == sent["meta"]["trace_id"]


# ---- control characters: refused at the door, the same for the JSON API and the form ------


@pytest.mark.parametrize(
    ("escaped", "code"),
    [
        (r"\u0000", "U+0000"),
        (r"\u001b[31m", "U+001B"),
        (r"\ud800", "U+D800"),
        (r"\u007f", "U+007F"),
        (r"\u0085", "U+0085"),
    ],
)
@pytest.mark.parametrize("path", ["/persona/chat", "/persona/chat/stream"])
def test_a_control_character_in_a_message_is_refused_and_nothing_is_written(
    client, settings, db, path, escaped, code
):
    conn = db(settings.db_path)
    before = count_events(conn)
    raw = ('{"message": "hi' + escaped + ' there"}').encode()  # the JSON escape, as sent
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", "message"]
    assert detail["msg"].endswith(f"message contains control character {code} at position 2")
    assert count_events(conn) == before


def test_tab_newline_and_carriage_return_are_text(client):
    message = "col\tcol\nline\r\nend"
    body = client.post("/persona/chat", json={"message": message}).json()
    history = client.get(f"/persona/chat/{body['session_id']}").json()["messages"]
    assert history[0]["content"] == message


def test_the_form_refuses_a_control_character_like_the_api(client, settings, db):
    conn = db(settings.db_path)
    before = count_events(conn)
    r = client.post("/chats/chat-ctl/messages", data={"message": "hi\x00 there"})
    assert r.status_code == 422
    assert "message contains control character U+0000 at position 2" in r.text
    assert count_events(conn) == before


# ---- metadata ------------------------------------------------------------------------


def test_metadata_is_stored_with_the_turn_and_shown_in_its_trace(client):
    metadata = {"client": "sigmaris", "tags": ["a", "b"], "nested": {"n": 1, "ok": True}}
    r = client.post("/persona/chat", json={"message": "hi", "metadata": metadata})
    assert r.status_code == 200
    trace = client.get(f"/persona/traces/{r.json()['meta']['trace_id']}").json()
    started = next(e for e in trace["events"] if e["type"] == "turn.started")
    assert started["payload"]["metadata"] == metadata
    # Without it the turn records null, and the stream route takes it as well.
    plain = client.post("/persona/chat", json={"message": "hi"}).json()
    trace = client.get(f"/persona/traces/{plain['meta']['trace_id']}").json()
    started = next(e for e in trace["events"] if e["type"] == "turn.started")
    assert started["payload"]["metadata"] is None


def test_the_stream_route_accepts_metadata(client):
    with client.stream(
        "POST", "/persona/chat/stream", json={"message": "hi", "metadata": {"k": "v"}}
    ) as r:
        assert r.status_code == 200
        frames = list(read_sse(r))
    trace = client.get(f"/persona/traces/{frames[0][1]['trace_id']}").json()
    started = next(e for e in trace["events"] if e["type"] == "turn.started")
    assert started["payload"]["metadata"] == {"k": "v"}


def _deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        ([1, 2], "valid dictionary"),
        ("text", "valid dictionary"),
        (7, "valid dictionary"),
        ({"big": "x" * (16 * 1024)}, "bytes as JSON (at most 16384)"),
        (_deep(9), "nested 9 deep (at most 8)"),
    ],
)
def test_metadata_that_is_not_a_bounded_object_is_refused(client, settings, db, metadata, why):
    conn = db(settings.db_path)
    before = count_events(conn)
    r = client.post("/persona/chat", json={"message": "hi", "metadata": metadata})
    assert r.status_code == 422
    (detail,) = r.json()["detail"]
    assert detail["loc"][:2] == ["body", "metadata"] and why in detail["msg"]
    assert count_events(conn) == before


def test_metadata_at_its_bounds_is_accepted(client):
    # 16384 bytes exactly as compact JSON, and 8 levels deep.
    filler = "x" * (16 * 1024 - len('{"big": ""}'))
    for metadata in ({"big": filler}, _deep(8)):
        r = client.post("/persona/chat", json={"message": "hi", "metadata": metadata})
        assert r.status_code == 200, r.text


def test_non_finite_numbers_in_metadata_are_refused(client):
    raw = b'{"message": "hi", "metadata": {"x": NaN}}'
    r = client.post("/persona/chat", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
