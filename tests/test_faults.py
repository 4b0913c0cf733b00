"""Model faults through the whole app: broken streams, deadlines, and secrets.

An Engine with the openai backend talks to a fake OpenAI-compatible server on loopback
(tests/fake_openai.py); turns go through the app over real HTTP (a live uvicorn server).
Each fault must reach the client as a failure with its trace id, be stored as turn.failed
(what streamed kept as `partial_reply`, never an answer), and leave the chat usable.
Deadlines here are short so faults end quickly; assertions are about outcomes, not time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_openai import TEXT, FakeOpenAI, Mode
from helpers import (
    LiveServer,
    async_wait_until,
    read_sse,
    skip_without_local_model,
    wait_until,
)

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.errors import TurnFailed
from persona.events import CATALOG
from persona.events import TurnFailed as TurnFailedEvent
from persona.llm.base import ChatMessage, Deadlines, GenOptions, LLMError
from persona.llm.openai_backend import OpenAIBackend
from persona.llm.scripted import FailAfter, ScriptedBackend, Unfinished
from persona.llm.structured import STRUCTURED_WORKERS
from persona.pipeline.context import TurnRequest
from persona.pipeline.post import DEFAULT_POST_STAGES
from persona.pipeline.runner import DEFAULT_STAGES
from persona.pipeline.turn import Turn
from persona.storage.queries import trace_events

KEY = "sk-fault-Hq7Lw2Vn9Xc4Tb1Rm8Zp"
# Small, but far above what a loopback answer takes: only a fault runs into them.
FIRST_TOKEN_S, CALL_S, TURN_S = 1.0, 2.0, 3.0
HANG_GUARD_S = 30.0  # a client timeout that only a hung server would reach
SPEAKER_EVENTS = {"reply.completed", "turn.completed", "memory.written"}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def app_settings(tmp_path: Path, fake: FakeOpenAI, **llm: Any) -> Settings:
    """Settings for an app whose model is the fake server (openai backend)."""
    return Settings(
        db_path=tmp_path / "persona.db",
        llm={
            "provider": "openai",
            "base_url": fake.base_url,
            "api_key": KEY,
            "first_token_timeout_s": FIRST_TOKEN_S,
            "timeout_s": CALL_S,
            "turn_timeout_s": TURN_S,
            **llm,
        },
    )


@pytest.fixture
def app(tmp_path: Path, fake: FakeOpenAI) -> Iterator[httpx.Client]:
    """An HTTP client of the app served on loopback, its model the fake server."""
    engine = Engine(app_settings(tmp_path, fake), clock=FixedClock())
    with (
        LiveServer(engine) as server,
        httpx.Client(base_url=server.url, timeout=HANG_GUARD_S) as client,
    ):
        yield client


def stored(client: httpx.Client, trace_id: str) -> list[dict[str, Any]]:
    """The turn's events, as the trace API serves them."""
    r = client.get(f"/persona/traces/{trace_id}")
    assert r.status_code == 200
    return list(r.json()["events"])


def assert_failed_and_chat_goes_on(
    client: httpx.Client, fake: FakeOpenAI, session: str, trace_id: str, error: str
) -> dict[str, Any]:
    """The turn is stored as failed, shows no answer, and the chat's next turn works."""
    events = stored(client, trace_id)
    types = [e["type"] for e in events]
    assert types[-1] == "turn.failed" and not SPEAKER_EVENTS & set(types), types
    failed = events[-1]["payload"]
    assert error in failed["error"], failed["error"]
    partial = failed["partial_reply"]
    assert failed["partial_reply_chars"] == len(partial or "")
    history = client.get(f"/persona/chat/{session}").json()["messages"]
    assert [(m["role"], m["turn_status"]) for m in history] == [("user", "failed")]
    # The chat's lock was released: its next turn runs and completes normally.
    fake.enqueue("normal")
    again = client.post("/persona/chat", json={"message": "and now?", "session_id": session})
    assert again.status_code == 200 and again.json()["reply"] == TEXT
    return dict(failed)


# mode -> (words in the stored error, the partial reply stored: None, or a check)
FAULTS: dict[str, tuple[Mode, str, Any]] = {
    "truncated": (Mode("truncated"), "without a normal finish", "Hello there, it "),
    "json_body": (Mode("json_body"), "without a normal finish", None),
    "text_body": (Mode("text_body"), "without a normal finish", None),
    "bare_done": (Mode("bare_done"), "without a normal finish", None),
    "content_filter": (Mode("content_filter"), "finish_reason='content_filter'", TEXT),
    "empty": (Mode("normal", text=""), "empty after the reply check", None),
    "pings": (Mode("pings"), "first-token deadline", None),
    "slow_first": (Mode("slow_first", delay_s=3 * FIRST_TOKEN_S), "first-token deadline", None),
    "trickle": (Mode("trickle"), "call deadline", lambda text: set(text.split()) == {"la"}),
    "http_500": (Mode("error", status=500, message="upstream fell over"), "500", None),
}


def check_partial(expected: Any, partial: str | None) -> None:
    if callable(expected):
        assert partial and expected(partial), partial
    else:
        assert partial == expected


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_is_a_502_with_trace_and_a_failed_turn(
    app: httpx.Client, fake: FakeOpenAI, name: str
) -> None:
    mode, error, partial = FAULTS[name]
    fake.enqueue(mode)
    r = app.post("/persona/chat", json={"message": "hello", "session_id": f"json-{name}"})
    assert r.status_code == 502, r.text
    body = r.json()
    assert error in body["error"] and len(body["trace_id"]) == 32
    failed = assert_failed_and_chat_goes_on(app, fake, f"json-{name}", body["trace_id"], error)
    check_partial(partial, failed["partial_reply"])


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_ends_the_stream_with_an_error_frame(
    app: httpx.Client, fake: FakeOpenAI, name: str
) -> None:
    mode, error, partial = FAULTS[name]
    fake.enqueue(mode)
    session = f"sse-{name}"
    body = {"message": "hello", "session_id": session}
    with app.stream("POST", "/persona/chat/stream", json=body) as r:
        assert r.status_code == 200
        frames = list(read_sse(r))
    kinds = [kind for kind, _ in frames]
    assert kinds[0] == "start" and kinds[-1] == "error" and "done" not in kinds
    start, end = frames[0][1], frames[-1][1]
    assert end["trace_id"] == start["trace_id"] and error in end["error"]
    # What the client saw streaming is what is kept as the failed attempt.
    shown = "".join(data["text"] for kind, data in frames if kind == "delta")
    failed = assert_failed_and_chat_goes_on(app, fake, session, end["trace_id"], error)
    assert (failed["partial_reply"] or "") == shown
    check_partial(partial, failed["partial_reply"])


@pytest.mark.parametrize(("kind", "finish"), [("normal", "stop"), ("length", "length")])
def test_a_normal_finish_completes_the_turn_and_is_recorded(
    app: httpx.Client, fake: FakeOpenAI, kind: str, finish: str
) -> None:
    fake.enqueue(kind)
    r = app.post("/persona/chat", json={"message": "hello", "session_id": "ok"})
    assert r.status_code == 200 and r.json()["reply"].strip()
    events = stored(app, r.json()["meta"]["trace_id"])
    reply = next(e["payload"] for e in events if e["type"] == "reply.completed")
    assert reply["finish_reason"] == finish and events[-1]["type"] == "turn.completed"


def test_the_turn_deadline_bounds_stages_and_reply(tmp_path: Path, fake: FakeOpenAI) -> None:
    # Call deadlines far off: only the turn's own deadline can end this turn.
    settings = app_settings(
        tmp_path, fake, first_token_timeout_s=60, timeout_s=60, turn_timeout_s=TURN_S
    )
    fake.enqueue("trickle")
    with (
        LiveServer(Engine(settings, clock=FixedClock())) as server,
        httpx.Client(base_url=server.url, timeout=HANG_GUARD_S) as client,
    ):
        r = client.post("/persona/chat", json={"message": "hello", "session_id": "slow"})
        assert r.status_code == 502
        error = r.json()["error"]
        assert "turn deadline" in error and "speaker" in error and "shutting down" not in error
        failed = assert_failed_and_chat_goes_on(client, fake, "slow", r.json()["trace_id"], error)
        assert failed["stage"] == "speaker" and set(failed["partial_reply"].split()) == {"la"}
    # The deadline closed the model's HTTP response: the fake saw its client hang up.
    trickled = next(s for s in fake.chat_requests() if s.mode == "trickle")
    assert trickled.client_gone.is_set()


# ---- the backend alone: every deadline closes the stream --------------------------------


def backend_for(fake: FakeOpenAI, **llm: Any) -> OpenAIBackend:
    settings = {"provider": "openai", "base_url": fake.base_url, "api_key": KEY}
    settings |= {"first_token_timeout_s": FIRST_TOKEN_S, "timeout_s": CALL_S, **llm}
    # model_validate: no environment, no config file.
    return OpenAIBackend(Settings.model_validate({"llm": settings}))


HI = [ChatMessage(role="user", content="hi")]


@pytest.mark.parametrize(("kind", "error"), [("pings", "first-token"), ("trickle", "call")])
async def test_a_deadline_closes_the_http_response(fake: FakeOpenAI, kind: str, error: str) -> None:
    backend = backend_for(fake)
    fake.enqueue(kind)
    try:
        with pytest.raises(LLMError, match=f"{error} deadline"):
            await backend.stream(HI, GenOptions()).text()
    finally:
        await backend.aclose()
    (seen,) = fake.chat_requests()
    # Endless answers end only when the client hangs up (or the fake stops).
    assert await asyncio.to_thread(seen.client_gone.wait, HANG_GUARD_S)


async def test_the_first_token_deadline_stops_applying_once_a_token_came(
    fake: FakeOpenAI,
) -> None:
    # Tokens keep coming for longer than the first-token deadline: only the call
    # deadline (further off) ends the call.
    backend = backend_for(fake, first_token_timeout_s=0.5, timeout_s=1.5)
    fake.enqueue(Mode("trickle", interval_s=0.05))
    try:
        with pytest.raises(LLMError, match="call deadline") as caught:
            await backend.stream(HI, GenOptions()).text()
    finally:
        await backend.aclose()
    assert "first-token" not in str(caught.value)


async def test_complete_has_the_same_rules(fake: FakeOpenAI) -> None:
    backend = backend_for(fake)
    fake.enqueue("content_filter", "trickle", "text_body", "length")
    try:
        with pytest.raises(LLMError, match="finish_reason='content_filter'"):
            await backend.complete(HI, GenOptions())
        with pytest.raises(LLMError, match="call deadline"):
            await backend.complete(HI, GenOptions())
        with pytest.raises(LLMError, match="without choices"):
            await backend.complete(HI, GenOptions())
        assert await backend.complete(HI, GenOptions()) == TEXT
    finally:
        await backend.aclose()


async def test_the_scripted_backend_keeps_the_same_rules() -> None:
    backend = ScriptedBackend(
        [Unfinished("half of it"), Unfinished("all of it", "content_filter"), "fine."],
        deadlines=Deadlines(first_token_s=5.0),
    )
    for reason in ("None", "'content_filter'"):
        response = backend.stream(HI, GenOptions())
        with pytest.raises(LLMError, match=f"finish_reason={reason}"):
            await response.text()
        assert not response.done  # a broken reply is never replayed as a whole one
    assert await backend.stream(HI, GenOptions()).text() == "fine."
    slow = ScriptedBackend(["late"], delay_s=HANG_GUARD_S, deadlines=Deadlines(first_token_s=0.2))
    with pytest.raises(LLMError, match="first-token deadline"):
        await slow.stream(HI, GenOptions()).text()


@pytest.mark.local_model
async def test_a_deadline_stops_the_local_worker() -> None:
    skip_without_local_model()
    from persona.llm.local import WORKER_NAME, LocalBackend

    backend = LocalBackend(Settings.model_validate({"llm": {"provider": "local"}}))
    await backend.warm()
    # 2000 tokens take about a minute on CPU; the call may take a fraction of that.
    backend.deadlines = Deadlines(total_s=0.5)
    story = [ChatMessage(role="user", content="Write a long story about a lighthouse.")]
    response = backend.stream(story, GenOptions(temperature=0, max_tokens=2000))
    with pytest.raises(LLMError, match="call deadline"):
        await response.text()

    def stopped() -> bool:
        return not any(t.name == WORKER_NAME and t.is_alive() for t in threading.enumerate())

    await asyncio.to_thread(wait_until, stopped, HANG_GUARD_S)
    # It stopped at the next token, far short of the 2000 asked for.
    assert backend._shared().llm.n_tokens < response.usage.prompt_tokens + 1000


# ---- a deadline is not a shutdown --------------------------------------------------------


async def test_an_outside_cancel_is_recorded_as_shutdown_not_as_a_deadline(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    engine = Engine(app_settings(tmp_path, fake, turn_timeout_s=60, first_token_timeout_s=60))
    await engine.start()
    try:
        runner = engine.runner
        request = TurnRequest("hello", "local", "c", engine.default_persona_id, 0.0, GenOptions())
        turn = Turn(
            runner.store,
            runner.env,
            runner.stages,
            runner.speaker,
            runner.post_stages,
            runner.identity,
            request,
            "a" * 32,
            "t1",
        )
        fake.enqueue("pings")
        task = asyncio.create_task(turn.execute(lambda ctx: None, lambda text: None))
        await asyncio.to_thread(wait_until, fake.chat_requests, HANG_GUARD_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events = await engine.store.read(trace_events, "a" * 32)
        failed = events[-1].payload
        assert isinstance(failed, TurnFailedEvent)
        assert "shutting down" in failed.error and "deadline" not in failed.error
    finally:
        await engine.stop()


class _StuckStage:
    """A pre-reply stage that never decides."""

    name = "stuck"

    async def run(self, ctx: Any, env: Any) -> Any:
        await asyncio.sleep(HANG_GUARD_S)
        raise AssertionError("the turn deadline should have ended this stage")


class _SlowPost:
    """A post-reply stage that takes longer than the whole turn may."""

    name = "slow-post"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def decide(self, ctx: Any, env: Any, persona: Any) -> list[Any]:
        time.sleep(self.seconds)  # in the writer's thread, as post stages run
        return []


async def scripted_turn(tmp_path: Path, turn_s: float, **runner: Any) -> tuple[Any, list[Any]]:
    """Run one scripted turn with the runner's stages changed; (its error, its events)."""
    settings = Settings(
        db_path=tmp_path / "p.db", llm={"provider": "scripted", "turn_timeout_s": turn_s}
    )
    engine = Engine(settings, ScriptedBackend(["All good."]))
    await engine.start()
    try:
        for name, value in runner.items():
            setattr(engine.runner, name, value)
        pid = engine.default_persona_id
        request = TurnRequest("hi", "local", "c", pid, 0.0, GenOptions())
        handle = await engine.runner.submit(request)
        error = None
        try:
            await handle.result
        except TurnFailed as exc:
            error = exc
        return error, await engine.store.read(trace_events, handle.trace_id)
    finally:
        await engine.stop()


async def test_the_turn_deadline_ends_a_stuck_stage(tmp_path: Path) -> None:
    error, events = await scripted_turn(tmp_path, 0.5, stages=(*DEFAULT_STAGES, _StuckStage()))
    assert error is not None and "turn deadline" in str(error) and "stuck" in str(error)
    failed = events[-1].payload
    assert isinstance(failed, TurnFailedEvent) and failed.stage == "stuck"
    assert failed.partial_reply is None
    assert not {"reply.completed", "turn.completed"} & {e.type for e in events}


async def test_the_classifier_call_cannot_outlast_the_turn(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    # The classifier's own bound is far off; the server never finishes its answer.
    settings = app_settings(tmp_path, fake, turn_timeout_s=1.0)
    settings = settings.model_copy(
        update={
            "perception": settings.perception.model_copy(
                update={"use_classifier": True, "classifier_timeout_s": 60.0}
            )
        }
    )
    fake.enqueue("pings")
    engine = Engine(settings, clock=FixedClock())
    await engine.start()
    try:
        pid = engine.default_persona_id
        request = TurnRequest("hi", "local", "c", pid, 0.0, GenOptions())
        handle = await engine.runner.submit(request)
        with pytest.raises(TurnFailed, match=r"turn deadline \(1s\) passed during perception"):
            await handle.result
    finally:
        await engine.stop()
    (classify,) = fake.chat_requests()
    assert classify.mode == "pings" and not classify.body.get("stream")


async def test_a_whole_reply_is_recorded_even_past_the_turn_deadline(tmp_path: Path) -> None:
    # Recording (post-reply stages included) runs after the deadline is lifted: the
    # reply was whole, and cutting the write short would leave it half-recorded.
    post = (*DEFAULT_POST_STAGES, _SlowPost(1.0))
    error, events = await scripted_turn(tmp_path, 0.5, post_stages=post)
    assert error is None
    types = [e.type for e in events]
    assert types[-1] == "turn.completed" and "turn.failed" not in types


async def test_a_scripted_failure_keeps_its_partial_text(tmp_path: Path) -> None:
    settings = Settings(db_path=tmp_path / "p.db", llm={"provider": "scripted"})
    engine = Engine(settings, ScriptedBackend([FailAfter("I was saying", "boom")]))
    await engine.start()
    try:
        pid = engine.default_persona_id
        handle = await engine.runner.submit(TurnRequest("hi", "local", "c", pid, 0.0, GenOptions()))
        with pytest.raises(TurnFailed, match="boom"):
            await handle.result
        events = await engine.store.read(trace_events, handle.trace_id)
        failed = events[-1].payload
        assert isinstance(failed, TurnFailedEvent)
        assert (failed.partial_reply, failed.partial_reply_chars) == ("I was saying", 12)
    finally:
        await engine.stop()


def test_a_version_1_turn_failed_upcasts_with_no_partial_text() -> None:
    v1 = {"turn_id": "t", "chat_id": "c", "persona_id": "p", "stage": "speaker", "error": "e"}
    event = CATALOG.decode("turn.failed", 1, {**v1, "partial_reply_chars": 7})
    assert isinstance(event, TurnFailedEvent)
    assert (event.partial_reply, event.partial_reply_chars) == (None, 7)


# ---- secrets ------------------------------------------------------------------------------


def with_userinfo(url: str, userinfo: str) -> str:
    return url.replace("http://", f"http://{userinfo}@", 1)


async def test_url_credentials_are_sent_as_a_bearer_key_never_as_basic(fake: FakeOpenAI) -> None:
    cases = [
        # (base_url user-info, api_key) -> the bearer key the server must see
        ("user:s3cr%40t", None, "s3cr@t"),
        ("user:from-url", "from-settings", "from-settings"),
    ]
    for userinfo, key, expected in cases:
        settings = {"provider": "openai", "base_url": with_userinfo(fake.base_url, userinfo)}
        if key:
            settings["api_key"] = key
        backend = OpenAIBackend(Settings.model_validate({"llm": settings}))
        fake.enqueue("echo_auth", "echo_auth")
        try:
            streamed = await backend.stream(HI, GenOptions()).text()
            whole = await backend.complete(HI, GenOptions())
            backend.structured_create()(model="m", messages=[{"role": "user", "content": "x"}])
        finally:
            await backend.aclose()
        assert streamed == whole == f"Bearer {expected}"
    auths = [r.headers.get("authorization", "") for r in fake.chat_requests()]
    assert len(auths) == 6 and not any(a.startswith("Basic") for a in auths), auths
    assert all("from-url" not in a and "user" not in a for a in auths), auths


async def test_errors_mask_the_key_as_a_whole_word_only(fake: FakeOpenAI) -> None:
    # A one-letter key: masking by substring would turn "Expecting" into "E****pecting".
    backend = backend_for(fake, api_key="x")
    message = "Expecting value: line 1 column 1 (char 0); key x refused; also sk-abc***wxyz"
    fake.enqueue(Mode("error", status=400, message=message))
    try:
        with pytest.raises(LLMError) as caught:
            await backend.stream(HI, GenOptions()).text()
    finally:
        await backend.aclose()
    error = str(caught.value)
    assert "Expecting value" in error and "key **** refused" in error, error
    assert " x " not in error and "sk-" not in error, error


class _HeldPost:
    """A post-reply stage that says when it runs and waits to be let go."""

    name = "held-post"

    def __init__(self) -> None:
        self.running = threading.Event()
        self.go = threading.Event()

    def decide(self, ctx: Any, env: Any, persona: Any) -> list[Any]:
        self.running.set()
        self.go.wait(30)  # a hang guard; the test lets it go
        return []


async def test_shutdown_during_the_reply_write_leaves_the_turn_completed(tmp_path: Path) -> None:
    # The reply was whole when shutdown cancelled the turn: the write finishes and the turn
    # is completed, never completed-then-failed.
    settings = Settings(
        db_path=tmp_path / "p.db", llm={"provider": "scripted"}, server={"shutdown_grace_s": 0}
    )
    engine = Engine(settings, ScriptedBackend(["All good."]))
    await engine.start()
    held = _HeldPost()
    engine.runner.post_stages = (*DEFAULT_POST_STAGES, held)
    pid = engine.default_persona_id
    handle = await engine.runner.submit(TurnRequest("hi", "local", "c", pid, 0.0, GenOptions()))
    await asyncio.to_thread(held.running.wait, 30)
    (task,) = engine.runner._tasks
    stopping = asyncio.create_task(engine.stop())

    # Shutdown cancels the turn while its write is under way; then the write may end.
    async def cancelled() -> bool:
        return task.cancelling() > 0

    await async_wait_until(cancelled)
    held.go.set()
    await stopping
    assert (await handle.result).reply == "All good."
    conn = sqlite3.connect(tmp_path / "p.db")
    try:
        types = [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq")]
    finally:
        conn.close()
    assert types[-1] == "turn.completed" and "turn.failed" not in types


def test_upstream_control_characters_never_reach_the_log_or_the_page(
    app: httpx.Client, fake: FakeOpenAI
) -> None:
    # An upstream error body and a cut-short stream, both carrying control characters.
    fake.enqueue(Mode("error", status=500, message="upstream \x00 broke \x1b[31mRED\x07", raw=True))
    first = app.post("/persona/chat", json={"message": "hi", "session_id": "ctl"})
    assert first.status_code == 502
    fake.enqueue(Mode("truncated", text="part\x00ial \x1b[31mred text goes on"))
    second = app.post("/persona/chat", json={"message": "again", "session_id": "ctl"})
    assert second.status_code == 502
    errors = [stored(app, r.json()["trace_id"])[-1]["payload"] for r in (first, second)]
    assert "upstream broke RED" in errors[0]["error"]
    assert errors[1]["partial_reply"] == "partial red text "  # three chunks, cleaned
    page = app.get("/chats/ctl").text
    for char in ("\x00", "\x1b", "\x07"):
        assert char not in page and all(char not in str(e) for e in errors)


async def test_stalled_classifier_threads_stay_bounded_and_never_block_admission(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    # Each classifier call stalls on keep-alives past its timeout; its thread lives on
    # until the upstream ends. They must not pile up, nor starve the admission check.
    settings = app_settings(tmp_path, fake)
    settings = settings.model_copy(
        update={
            "perception": settings.perception.model_copy(
                update={"use_classifier": True, "classifier_timeout_s": 0.2}
            )
        }
    )
    turns = STRUCTURED_WORKERS + 4
    # The first turns' classifier calls reach the server and stall there, one per worker;
    # later ones find every worker busy, time out waiting and are never sent.
    for i in range(turns):
        fake.enqueue(*(("pings", "normal") if i < STRUCTURED_WORKERS else ("normal",)))
    engine = Engine(settings, clock=FixedClock())
    await engine.start()
    try:
        pid = engine.default_persona_id
        for i in range(turns):
            request = TurnRequest(f"message {i}", "local", f"c{i}", pid, 0.0, GenOptions())
            await engine.runner.check_fits(request)  # admission: needs the default executor
            handle = await engine.runner.submit(request)
            result = await handle.result  # the classifier timed out: the lexicon decided
            assert result.reply == TEXT
        stalled = [t for t in threading.enumerate() if t.name.startswith("structured")]
        assert len(stalled) == STRUCTURED_WORKERS
        classified = [r for r in fake.chat_requests() if not r.body.get("stream")]
        assert len(classified) == STRUCTURED_WORKERS
    finally:
        fake.stopping.set()  # the stalled answers end: their threads return
        await engine.stop()
