"""Shared fixtures: temp DB, fixed clock, scripted backend, engine, app, live server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import LiveServer
from llama_server import llama_server  # noqa: F401  (session fixture, started once)

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend
from persona.web.app import create_app


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer config file or PERSONA_* variable leaks into a test."""
    for key in list(os.environ):
        if key.startswith("PERSONA_") or key == "OPENAI_API_KEY":
            monkeypatch.delenv(key)
    monkeypatch.setenv("PERSONA_CONFIG_FILE", str(tmp_path / "absent-config.toml"))


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
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def live_server(
    settings: Settings, backend: ScriptedBackend, clock: FixedClock
) -> Iterator[LiveServer]:
    with LiveServer(Engine(settings, backend=backend, clock=clock)) as server:
        yield server
