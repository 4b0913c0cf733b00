"""Persona files: created once, and a changed file is applied as a revision event."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import run_turn

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.events import PersonaRevised
from persona.llm.scripted import ScriptedBackend
from persona.projector.replay import verify
from persona.storage import queries
from persona.storage.eventlog import read_events

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "personas" / "default.toml"


def _settings(tmp_path: Path) -> Settings:
    (tmp_path / "personas").mkdir(exist_ok=True)
    if not (tmp_path / "personas" / "default.toml").exists():
        shutil.copyfile(SHIPPED, tmp_path / "personas" / "default.toml")
    return Settings(
        data_dir=tmp_path, db_path=tmp_path / "persona.db", llm={"provider": "scripted"}
    )


async def _start(settings: Settings) -> Engine:
    engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock())
    await engine.start()
    return engine


async def _revisions(engine: Engine) -> list[PersonaRevised]:
    events = await engine.store.read(lambda c: list(read_events(c, stream_id="persona:default")))
    return [e.payload for e in events if isinstance(e.payload, PersonaRevised)]


async def test_an_unchanged_file_records_nothing_on_restart(tmp_path):
    settings = _settings(tmp_path)
    for _ in range(2):
        engine = await _start(settings)
        assert await _revisions(engine) == []
        await engine.stop()


async def test_an_edited_file_becomes_a_revision_that_keeps_the_old_values(tmp_path):
    settings = _settings(tmp_path)
    engine = await _start(settings)
    await run_turn(engine, "hello")
    await engine.stop()

    path = tmp_path / "personas" / "default.toml"
    text = path.read_text()
    path.write_text(
        text.replace('name = "Mira"', 'name = "Nora"')
        .replace("old maps", "sea glass")
        .replace("warmth = 0.8", "warmth = 0.6")
    )
    engine = await _start(settings)
    try:
        (revised,) = await _revisions(engine)
        assert revised.changed == ["name", "genesis", "traits"]
        assert revised.previous.name == "Mira" and revised.current.name == "Nora"
        assert "old maps" in revised.previous.genesis
        assert revised.previous.traits["warmth"] == 0.8 and revised.current.traits["warmth"] == 0.6
        persona = await engine.store.read(queries.get_persona, "default")
        assert persona.name == "Nora" and "sea glass" in persona.genesis
        core = await engine.store.read(queries.core_memory, "default")
        assert "sea glass" in core.content and "old maps" not in core.content
        result = await run_turn(engine, "who are you?")
        assert "Nora" in engine.backend.calls[-1][0].content  # the prompt's identity
        assert result["reply"]
    finally:
        await engine.stop()
    # Restarting with the same file records no second revision; the log replays exactly.
    engine = await _start(settings)
    try:
        assert len(await _revisions(engine)) == 1
    finally:
        await engine.stop()
    live, replayed = verify(settings.db_path, tmp_path / "scratch.db")
    assert live == replayed
