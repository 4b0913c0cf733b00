"""The published contract: the OpenAPI schema says what the API does, and a fuzzer holds it.

schemathesis reads /openapi.json, generates requests from it (the schema's boundaries
first, then random valid and invalid ones), sends them over real HTTP to the app on a
loopback port (scripted backend, temporary database) and checks every answer: no 5xx, a
status code, content type, headers and body the schema declares (each SSE event too),
valid data accepted, invalid data refused. Bounded and derandomized: the same requests
every run.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from helpers import wait_until
from schemathesis.engine import Status, events, from_schema

from persona.web.schemas import CHAT_STREAM_EVENT, TURN_STREAM_EVENT

EXAMPLES = 40  # generated per operation by the fuzzing phase (the coverage phase adds its own)
EVENTS = "/persona/chat/{session_id}/events"
SSE = "text/event-stream"

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 7,
        "generation": {"deterministic": True, "max-examples": EXAMPLES, "database": "none"},
        "cache": {"enabled": False},  # nothing written beside the tests
        "output": {"sanitization": {"enabled": False}},  # ids are no secrets: show them
        "phases": {
            # The API declares no links between operations; the stateful phase would only
            # chain chat turns into ever longer chats (minutes) that fuzzing covers one by one.
            "stateful": {"enabled": False},
        },
        "checks": {
            # A well-formed request can still ask for more than the model's context window
            # holds (a long message, a large gen.max_tokens): the declared 413 says so. The
            # window is the loaded model's, so the schema cannot state it as a bound.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "413", "429"]
            },
        },
        "operations": [
            {
                # A chat's live stream never ends while its client listens, and no turn runs
                # in a fuzzed chat: it is read for one second, then checked (status, content
                # type; its events are checked by test_a_live_chat_stream_sends_what_it_declares).
                # The fuzzing phase is off here: each valid id would cost that second, and the
                # coverage phase already sends the boundary ids, valid and invalid.
                "include-path": EVENTS,
                "request-timeout": 1,
                "phases": {"fuzzing": {"enabled": False}},
            },
            {
                # An export is valid only as a whole (a header line that counts the events,
                # chat.started first, parents before children, ids of this chat): no JSON
                # Schema states that, so a generated non-empty string is a file the import
                # must refuse (422, tested line by line in test_chat_io), not accept. Every
                # other check (no 5xx, declared statuses and bodies) still runs on it.
                "include-path": "/persona/chats/import",
                "checks": {"positive_data_acceptance": {"enabled": False}},
            },
        ],
    }
)


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: Any, value: Any) -> bytes:
    """A chat export to import (POST /persona/chats/import): one JSON value per line. A
    generated string is sent as the file's text, anything else as its JSON lines."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    lines = value if isinstance(value, list) else [value]
    return "\n".join(json.dumps(line) for line in lines).encode()


@dataclass
class Run:
    """What one schemathesis run sent and found."""

    sent: Counter[str] = field(default_factory=Counter)  # requests per operation
    failures: list[str] = field(default_factory=list)  # one line per distinct failure
    errors: list[str] = field(default_factory=list)  # the run itself went wrong

    def summary(self) -> str:
        lines = [f"{n:5d}  {label}" for label, n in sorted(self.sent.items())]
        return "\n".join([*lines, f"{sum(self.sent.values()):5d}  in all", *self.failures])


def fuzz(url: str) -> Run:
    """Run every phase schemathesis is configured for against the app at `url`."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=CONFIG)
    run = Run()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            run.sent[event.recorder.label] += len(event.recorder.interactions)
            for case_id, checks in event.recorder.checks.items():
                answer = event.recorder.interactions.get(case_id)
                status = answer.response.status_code if answer and answer.response else None
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        line = (
                            f"{event.recorder.label}: {check.name}: {failure.title} ({status}):"
                            f" {failure.message}\n  {check.failure_info.code_sample}"
                        )
                        if line not in run.failures:
                            run.failures.append(line)
        elif isinstance(event, events.NonFatalError):
            run.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            run.errors.append(repr(event.exception))
    return run


def test_the_api_keeps_its_published_contract(live_server: Any) -> None:
    run = fuzz(live_server.url)
    print(run.summary())  # the counts, for a run with -s
    assert not run.errors, run.errors
    assert not run.failures, run.summary()
    operations = {
        f"{method.upper()} {path}"
        for path, item in httpx.get(f"{live_server.url}/openapi.json").json()["paths"].items()
        for method in item
    }
    # Every published operation was exercised, the streamed chat by fuzzing too.
    assert set(run.sent) == operations and all(run.sent[op] for op in operations)
    assert run.sent["POST /persona/chat/stream"] > EXAMPLES


# ---- what the schema publishes ----------------------------------------------------------------


def _keys(node: Any) -> Any:
    """Every (key, value) of a JSON document, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keys(value)


def test_number_ranges_are_standard_json_schema(client: Any) -> None:
    published = client.get("/openapi.json").json()
    # pydantic's own range keys, which JSON Schema tools ignore, appear nowhere.
    assert not {"ge", "le", "gt", "lt"} & {key for key, _ in _keys(published)}
    request = published["components"]["schemas"]["ChatRequest"]["properties"]
    assert request["reward_signal"] == {
        "type": "number",
        "minimum": -1.0,
        "maximum": 1.0,
        "title": "Reward Signal",
        "default": 0.0,
    }
    temperature = published["components"]["schemas"]["GenParams"]["properties"]["temperature"]
    assert {"type": "number", "minimum": 0.0, "maximum": 2.0} in temperature["anyOf"]


def test_numbers_refuse_booleans_and_strings_and_take_what_json_schema_takes(client: Any) -> None:
    for bad in (True, "0.5", 1.5):
        body = {"message": "hi", "reward_signal": bad}
        assert client.post("/persona/chat", json=body).status_code == 422
    for bad in (False, "1", 2.5):
        body = {"message": "hi", "gen": {"temperature": bad}}
        assert client.post("/persona/chat", json=body).status_code == 422
    for bad in (True, "40", 40.5):
        body = {"message": "hi", "gen": {"max_tokens": bad}}
        assert client.post("/persona/chat", json=body).status_code == 422
    # JSON Schema's integer includes 40.0, so the API takes it too.
    body = {"message": "hi", "reward_signal": 1, "gen": {"temperature": 0, "max_tokens": 40.0}}
    assert client.post("/persona/chat", json=body).status_code == 200


def test_an_sse_route_declares_only_the_stream(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, method, event in (
        ("/persona/chat/stream", "post", TURN_STREAM_EVENT),
        (EVENTS, "get", CHAT_STREAM_EVENT),
    ):
        responses = paths[path][method]["responses"]
        assert responses["200"]["content"] == {SSE: {"schema": event}}
        errors = {code: r["content"] for code, r in responses.items() if code != "200"}
        assert errors and all(list(content) == ["application/json"] for content in errors.values())


def test_every_operation_declares_the_access_tokens_401(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    operations = [op for item in paths.values() for op in item.values()]
    assert operations and all("401" in op["responses"] for op in operations)


def test_the_streams_are_served_as_declared(live_server: Any) -> None:
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        with http.stream("GET", "/persona/chat/c1/events") as r:
            assert (r.status_code, r.headers["content-type"].split(";")[0]) == (200, SSE)
        with http.stream("POST", "/persona/chat/stream", json={"message": "hi"}) as r:
            assert (r.status_code, r.headers["content-type"].split(";")[0]) == (200, SSE)


async def test_a_live_chat_stream_sends_what_it_declares(live_server: Any, backend: Any) -> None:
    """The fuzzed chats never run a turn while their stream is read: run one here and hold
    every event of it to the published schema, with schemathesis's own checks."""
    backend.enqueue("Hello there, how are you?")
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json", config=CONFIG)
    case = schema[EVENTS]["GET"].Case(path_parameters={"session_id": "watched"})
    engine = live_server.engine
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:

        async def follow() -> schemathesis.Response:
            lines, last = [], None
            async with http.stream("GET", "/persona/chat/watched/events") as r:
                async for line in r.aiter_lines():
                    lines.append(line)
                    last = line.removeprefix("event: ") if line.startswith("event:") else last
                    if not line and last in ("done", "error"):
                        break
            # The stream never ends: what arrived up to the turn's end, as one response.
            return schemathesis.Response(
                status_code=r.status_code,
                headers={name: [value] for name, value in r.headers.items()},
                content="\n".join(lines).encode() + b"\n",
                request=requests.Request("GET", str(r.request.url)).prepare(),
                elapsed=0.0,
                verify=True,
            )

        stream = asyncio.create_task(follow())
        await asyncio.to_thread(wait_until, lambda: engine.broadcaster.subscriber_count("watched"))
        sent = await http.post("/persona/chat", json={"message": "hi", "session_id": "watched"})
        assert sent.status_code == 200
        response = await asyncio.wait_for(stream, timeout=10)
    assert b"event: done" in response.content
    case.validate_response(response)  # raises on any event the schema does not declare
