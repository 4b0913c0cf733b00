"""Shared fixtures: temp DB, fixed clock, scripted backend, engine, app, server, golden files."""

from __future__ import annotations

import difflib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import LiveServer
from llama_server import llama_server  # noqa: F401  (session fixture, started once)

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend
from persona.storage.db import connect
from persona.web.app import create_app

GOLDEN_DIR = Path(__file__).parent / "golden"
_REWRITTEN = pytest.StashKey[list[Path]]()
_SEEN = pytest.StashKey[set[Path]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the files under tests/golden/ with what the tests produce (on purpose)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_REWRITTEN] = []
    config.stash[_SEEN] = set()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not config.getoption("--update-golden"):
        return
    rewritten = config.stash[_REWRITTEN]
    terminalreporter.section("golden files")
    for path in rewritten:
        terminalreporter.write_line(f"rewrote {path.relative_to(GOLDEN_DIR.parent)}")
    if not rewritten:
        terminalreporter.write_line("all golden files the tests produced were up to date")
    # Only meaningful on a full run: files no test produced are stale or were not reached.
    unseen = sorted(p for p in GOLDEN_DIR.rglob("*") if p.is_file()) if GOLDEN_DIR.exists() else []
    for path in (p for p in unseen if p not in config.stash[_SEEN]):
        terminalreporter.write_line(f"not produced by this run: {path.relative_to(GOLDEN_DIR)}")


class Golden:
    """Compare a value with its file under tests/golden/, or rewrite it (--update-golden).

    A str is compared as is (SQL, HTML); anything else as indented JSON, keys in the
    order the value has them (so key order is part of the contract too).
    """

    def __init__(self, config: pytest.Config):
        self.update: bool = config.getoption("--update-golden")
        self._rewritten = config.stash[_REWRITTEN]
        self._seen = config.stash[_SEEN]

    def __call__(self, name: str, value: Any) -> None:
        path = GOLDEN_DIR / name
        self._seen.add(path)
        if not isinstance(value, str):
            value = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
        text: str = value
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if self.update:
            if text != old:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                self._rewritten.append(path)
            return
        where = f"tests/golden/{name}"
        if old is None:
            pytest.fail(f"{where} does not exist: run pytest --update-golden to create it")
        if text != old:
            diff = "".join(
                difflib.unified_diff(
                    old.splitlines(keepends=True), text.splitlines(keepends=True), where, "now"
                )
            )
            pytest.fail(
                f"{where} differs (if the change is intended, rerun with --update-golden and"
                f" review the diff):\n{diff}",
                pytrace=False,
            )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """golden(name, value): compare `value` with tests/golden/<name>, or rewrite it."""
    return Golden(request.config)


@pytest.fixture
def db() -> Iterator[Callable[[Path | str], sqlite3.Connection]]:
    """db(path): a connection opened with persona's `connect`, closed after the test."""
    opened: list[sqlite3.Connection] = []

    def open_db(path: Path | str) -> sqlite3.Connection:
        conn = connect(path)
        opened.append(conn)
        return conn

    yield open_db
    for conn in opened:
        conn.close()


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer config file or PERSONA_* variable leaks into a test."""
    for key in list(os.environ):
        if key.startswith("PERSONA_") or key == "OPENAI_API_KEY":
            monkeypatch.delenv(key)
    monkeypatch.setenv("PERSONA_CONFIG_FILE", str(tmp_path / "absent-config.toml"))
    # The server's own sleep check fires on the wall clock; tests call maybe_sleep.
    monkeypatch.setenv("PERSONA_SLEEP__CHECK_EVERY_S", "0")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(db_path=tmp_path / "persona.db", llm={"provider": "scripted"})


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def engine(
    settings: Settings, backend: ScriptedBackend, clock: FixedClock
) -> AsyncIterator[Engine]:
    eng = Engine(settings, backend=backend, clock=clock)
    await eng.start()
    yield eng
    await eng.stop()


@pytest.fixture
def client(settings: Settings, backend: ScriptedBackend, clock: FixedClock) -> Iterator[TestClient]:
    app = create_app(engine=Engine(settings, backend=backend, clock=clock))
    # A loopback name the Host allow-list accepts by default (not TestClient's "testserver").
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client


@pytest.fixture
def live_server(
    settings: Settings, backend: ScriptedBackend, clock: FixedClock
) -> Iterator[LiveServer]:
    with LiveServer(Engine(settings, backend=backend, clock=clock)) as server:
        yield server
