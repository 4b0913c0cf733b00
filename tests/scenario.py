"""A fixed persona, seeded memories and a scripted conversation for the golden-file tests.

Everything a golden file depends on is written here, not taken from the shipped data:
editing Mira (data/personas/default.toml) must not move a golden file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.events import MemoryWritten, Utterance
from persona.llm.scripted import ScriptedBackend
from persona.storage.eventlog import NewEvent

PERSONA_ID = "tess"
PERSONA_TOML = """\
persona_id = "tess"
name = "Tess"
description = "A calm companion who remembers what you share."
genesis = "I am Tess. I like tide pools, old maps and slow mornings."

[traits]
warmth = 0.7
curiosity = 0.6
"""

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
# A tight window: the rendered prompt (identity, turn note, message) and the 110-token
# reply leave room for only some of the candidates.
MAX_TOKENS = 110
CONTEXT_WINDOW = 280  # 250 until the dialogue state line grew a style hint


def make_clock() -> FixedClock:
    """A clock that moves only when told: memory ages are exactly what the scenario says."""
    return FixedClock(start=START, step=timedelta(0))


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Scripted backend, the Tess persona, a tight token budget, top 4 memories."""
    (tmp_path / "personas").mkdir(exist_ok=True)
    (tmp_path / "personas" / "tess.toml").write_text(PERSONA_TOML, encoding="utf-8")
    data: dict[str, object] = {
        "db_path": tmp_path / "golden.db",
        "data_dir": tmp_path,
        "default_persona_file": "personas/tess.toml",
        "llm": {"provider": "scripted"},
        "memory": {"top_k": 4},
    }
    data.update(overrides)
    return Settings(**data)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Seed:
    """A memory written before the scenario, `age_h` hours before its first turn."""

    memory_id: str
    content: str
    importance: float
    age_h: float
    chat_id: str | None = "chat-earlier"


SEEDS = (
    Seed("m-maps", "User said: I collect old maps of Lisbon harbour.", 0.9, 240),
    Seed("m-sister", "User said: My sister Ana lives in Porto; she visits on Sundays.", 0.6, 48),
    Seed("m-coffee", "User said: Too much coffee this morning, I feel jittery.", 0.3, 6),
    Seed("m-exam", "User said: I am anxious about my driving exam on Friday.", 0.5, 1),
    Seed("m-tides", "User said: The tide pools at Cascais were full of crabs.", 0.4, 12, None),
)


async def seed_memories(engine: Engine, clock: FixedClock) -> None:
    """Write SEEDS through real memory.written events, oldest first, at their ages."""
    seeds = sorted(SEEDS, key=lambda s: -s.age_h)
    for seed, after in zip(seeds, [*seeds[1:], None], strict=True):
        memory = MemoryWritten(
            memory_id=seed.memory_id,
            persona_id=PERSONA_ID,
            tier="L1",
            kind="exchange",
            content=seed.content.removeprefix("User said: "),
            said=[
                Utterance(role="user", name="User", text=seed.content.removeprefix("User said: "))
            ],
            witnesses=["local"],
            importance=seed.importance,
            chat_id=seed.chat_id,
        )
        await engine.store.append(
            [NewEvent(payload=memory, stream_id=f"persona:{PERSONA_ID}", actor="seed")]
        )
        clock.advance(timedelta(hours=seed.age_h - (after.age_h if after else 0)))


@dataclass(frozen=True)
class Scenario:
    """A started engine on the Tess persona with SEEDS written, its backend and clock."""

    engine: Engine
    backend: ScriptedBackend
    clock: FixedClock


@asynccontextmanager
async def open_scenario(tmp_path: Path, **overrides: Any) -> AsyncIterator[Scenario]:
    """Start an engine for the scenario (settings overrides allowed); stop it afterwards."""
    clock, backend = make_clock(), ScriptedBackend(context_window=CONTEXT_WINDOW)
    engine = Engine(make_settings(tmp_path, **overrides), backend=backend, clock=clock)
    await engine.start()
    try:
        await seed_memories(engine, clock)
        yield Scenario(engine, backend, clock)
    finally:
        await engine.stop()


def trace_of(n: int) -> str:
    """A fixed trace id: 32 hex digits like the runner's, `n` in the 8 that pages show."""
    return f"{n:08x}" + "0" * 24


@dataclass(frozen=True)
class Exchange:
    """One scripted turn: what the user says, the reply, the reward for the last reply."""

    message: str
    reply: str
    reward: float = 0.0


# A fixed conversation: every dialogue state the metacognition stage names, in one chat.
CONVERSATION = (
    Exchange("Hi Tess!", "Hello! Lovely to see you."),
    Exchange(
        "My name is Sam and I live in Lisbon, near the harbour.",
        "Nice to meet you, Sam. Lisbon harbour has wonderful old maps.",
        0.5,
    ),
    Exchange("What is the capital of Portugal?", "Lisbon is the capital of Portugal.", 1.0),
    Exchange(
        "I feel so sad and lonely tonight, my sister moved away.",
        "I am sorry, Sam. Missing Ana is hard; I am here.",
        -0.5,
    ),
    Exchange("((ooc: are you an AI?))", "Yes, I am an AI companion.", 0.0),
    Exchange("Thanks for listening, bye!", "Goodbye, Sam. Sleep well.", 1.0),
)
HOURS_BETWEEN_TURNS = 2
