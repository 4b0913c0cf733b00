"""Measure what a turn costs outside the LLM, as the memory store grows.

For each store size: seed that many episodic memories through the normal append and
projection path, run turns through the real pipeline with the scripted backend, and
report p50/p95 of every stage's `meta.timing_ms`, of the whole turn as the caller waits
for it, and of that wall time minus the speaker. Then time a full `rebuild` of the
largest database. Offline and deterministic (fixed seeds, fixed clocks); speed is
measured here and never asserted in tests.

    python bench/turn_overhead.py [--turns 50] [--sizes 100,1000,10000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from persona.clock import FixedClock, iso
from persona.config import LLMSettings, Settings
from persona.engine import Engine
from persona.events import MemoryWritten, Utterance
from persona.llm.base import GenOptions
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.context import TurnRequest
from persona.projector.replay import rebuild
from persona.storage import queries
from persona.storage.db import connect
from persona.storage.eventlog import NewEvent, count_events

# The stages whose time the turn records on its events, and `writes` (the appends before
# the completion); `overhead_total` is their sum without the speaker, so it leaves out
# only the completion's own append and the request's reads: `outside_llm` has those.
STAGES: tuple[str, ...] = (
    "perception",
    "memory",
    "gating",
    "metacognition",
    "post",
    "writes",
    "overhead_total",
)
# Every timed column of the stage table, in order.
COLUMNS: tuple[str, ...] = (*STAGES, "speaker", "turn_wall", "outside_llm")
DEFAULT_SIZES: tuple[int, ...] = (100, 1_000, 10_000)
SEED_BATCH = 1_000
TURNS_PER_CHAT = 10
START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
# Seeded memories are spread over this span before the first turn, so recency varies.
SEED_SPAN = timedelta(days=30)


def _vocabulary(text: str) -> tuple[str, ...]:
    """Split a comma-separated word list (kept as text so it stays compact)."""
    return tuple(word.strip() for word in text.split(","))


PEOPLE = _vocabulary(
    "sister, brother, mother, father, neighbour, colleague, friend, grandmother, son, "
    "daughter, partner, landlord, teacher, cousin, boss"
)
PLACES = _vocabulary(
    "library, harbour, market, bakery, station, garden, museum, office, lake, mountain, "
    "cafe, hospital, park, beach, attic, cinema, river"
)
THINGS = _vocabulary(
    "map, bicycle, guitar, notebook, camera, letter, recipe, telescope, painting, violin, "
    "novel, puzzle, compass, lantern, kettle, umbrella, passport, watch, scarf, "
    "photograph"
)
ACTIVITIES = _vocabulary(
    "hiking, baking bread, painting watercolours, running, learning Spanish, "
    "fixing the roof, planting tomatoes, reading poetry, studying for exams, "
    "playing chess, sailing, knitting, birdwatching, cooking curry, swimming"
)
FEELINGS = _vocabulary(
    "anxious, happy, tired, proud, lonely, excited, nervous, calm, frustrated, hopeful, "
    "grateful, overwhelmed, sad, curious"
)
TIMES = _vocabulary(
    "this morning, last night, yesterday, on Sunday, last week, after work, before dinner, "
    "during the storm, at dawn, over the holidays"
)
USER_LINES = (
    "I went to the {place} with my {person} {time} and we found an old {thing}.",
    "I've been {activity} {time} and I feel {feeling} about it.",
    "My {person} gave me a {thing} for my birthday; it reminds me of the {place}.",
    "I lost my {thing} near the {place} {time}.",
    "I feel {feeling} because my {person} is moving away from the {place}.",
    "Can you remind me to bring the {thing} when I visit my {person}?",
    "We argued about {activity} at the {place} and now I feel {feeling}.",
)
REPLY_LINES = (
    "That sounds lovely. Tell me more about the {thing}.",
    "You mentioned the {place} before. How is your {person} doing?",
    "It makes sense to feel {feeling}. What would help right now?",
    "I will remember the {thing}. Is {activity} still part of your week?",
)
MESSAGES = (
    "Do you remember what I told you about the {thing} from the {place}?",
    "I feel {feeling} today, my {person} called about the {place}.",
    "Can you help me plan {activity} {time}?",
    "hello! how are you?",
    "What did my {person} give me, was it the {thing}?",
    "I started {activity} again and I found my old {thing} in the {other_place}.",
    "Tell me a story about a {thing} hidden in the {place}.",
    "(( out of character: how does your memory of the {place} work? ))",
    "I'm {feeling} about {activity}, my {person} thinks I should stop.",
)


class _BenchSettings(Settings):
    """Defaults only: no developer config file or PERSONA_* variable skews the bench."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        person=rng.choice(PEOPLE),
        place=rng.choice(PLACES),
        other_place=rng.choice(PLACES),
        thing=rng.choice(THINGS),
        activity=rng.choice(ACTIVITIES),
        feeling=rng.choice(FEELINGS),
        time=rng.choice(TIMES),
    )


def memory_events(
    persona_id: str, persona_name: str, count: int, clock: FixedClock, rng: random.Random
) -> list[NewEvent]:
    """`count` memory.written events shaped like the ones turns write, one per past turn."""
    events = []
    for i in range(count):
        chat_id = f"seed-chat-{i // 40:05d}"  # about forty remembered turns per chat
        turn_id = f"{rng.getrandbits(128):032x}"
        user = " ".join(_fill(rng.choice(USER_LINES), rng) for _ in range(rng.randint(1, 3)))
        reply = _fill(rng.choice(REPLY_LINES), rng)
        events.append(
            NewEvent(
                payload=MemoryWritten(
                    memory_id=f"ep:{turn_id}",
                    persona_id=persona_id,
                    tier="L1",
                    kind="exchange",
                    chat_id=chat_id,
                    turn_id=turn_id,
                    content=f"{user}\n{reply}",
                    said=[
                        Utterance(role="user", name="User", text=user),
                        Utterance(role="persona", name=persona_name, text=reply),
                    ],
                    importance=round(rng.uniform(0.2, 0.9), 4),
                    witnesses=["local"],  # the user the measured turns run as
                ),
                stream_id=f"chat:{chat_id}",
                actor="episodic",
                trace_id=f"{rng.getrandbits(128):032x}",
                chat_time=iso(clock.now()),
                event_id=f"{rng.getrandbits(128):032x}",
            )
        )
    return events


async def seed(engine: Engine, count: int, rng: random.Random) -> dict[str, float]:
    """Append `count` memories in batched transactions; return the append throughput."""
    persona = await engine.store.read(queries.get_persona, engine.default_persona_id)
    assert persona is not None, "the engine creates its default persona on start"
    step = SEED_SPAN / max(count, 1)
    clock = FixedClock(START + timedelta(minutes=1), step)
    events = memory_events(persona.persona_id, persona.name, count, clock, rng)
    t0 = time.perf_counter()
    for start in range(0, len(events), SEED_BATCH):
        await engine.store.append(events[start : start + SEED_BATCH])
    seconds = time.perf_counter() - t0
    return {
        "events": count,
        "seconds": round(seconds, 4),
        "events_per_s": round(count / seconds, 1) if seconds > 0 else 0.0,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def run_turns(
    engine: Engine, size: int, turns: int, warmup: int, rng: random.Random
) -> list[dict[str, float]]:
    """Run warm-up plus measured turns; return each measured turn's timings in ms.

    Besides the stages: `turn_wall` is `resolve` + `submit` until the result, as a caller
    waits for it; `outside_llm` is that minus the speaker, the whole time outside the model.
    """
    measured = []
    for i in range(warmup + turns):
        chat_id = f"bench-{size}-{i // TURNS_PER_CHAT:03d}"
        message = _fill(rng.choice(MESSAGES), rng)
        t0 = time.perf_counter()
        persona_id = await engine.runner.resolve(chat_id, None, "local", engine.default_persona_id)
        reward = rng.uniform(-1.0, 1.0)
        request = TurnRequest(message, "local", chat_id, persona_id, reward, GenOptions())
        result = await (await engine.runner.submit(request)).result
        wall_ms = (time.perf_counter() - t0) * 1000
        if i < warmup:
            continue
        timing = dict(result.meta.timing_ms)
        timing["turn_wall"] = wall_ms
        timing["outside_llm"] = wall_ms - timing["speaker"]
        timing["lexical_hits"] = sum(1 for m in result.meta.memory.retrieved if m.lexical > 0)
        measured.append(timing)
    return measured


def summarize(timings: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50 and p95 of each reported stage, of the speaker, of the whole turn and the rest."""
    out = {}
    for name in COLUMNS:
        values = [t[name] for t in timings]
        out[name] = {
            "p50": round(percentile(values, 50), 3),
            "p95": round(percentile(values, 95), 3),
        }
    return out


def time_rebuild(db_path: Path) -> dict[str, float]:
    """Drop and replay every projection of `db_path`; return the replay throughput."""
    conn = connect(db_path)
    try:
        events = count_events(conn)
        t0 = time.perf_counter()
        replayed = rebuild(conn)
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    assert replayed == events, f"rebuild replayed {replayed} of {events} events"
    return {
        "events": events,
        "seconds": round(seconds, 4),
        "events_per_s": round(events / seconds, 1) if seconds > 0 else 0.0,
    }


async def bench_size(
    size: int, turns: int, warmup: int, seed_value: int, workdir: Path, with_rebuild: bool
) -> dict[str, Any]:
    """Seed a fresh DB with `size` memories, run the turns, optionally time a rebuild."""
    rng = random.Random(seed_value * 1_000_003 + size)
    db_path = workdir / f"bench-{size}.db"
    settings = _BenchSettings(db_path=db_path, llm=LLMSettings(provider="scripted"))
    clock = FixedClock(START)
    engine = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await engine.start()
    try:
        append = await seed(engine, size, rng)
        stored = await engine.store.read(queries.count_memories, engine.default_persona_id)
        # Turns happen after the last seeded memory, so older ones have decayed.
        clock.advance(SEED_SPAN + timedelta(hours=1))
        timings = await run_turns(engine, size, turns, warmup, rng)
    finally:
        await engine.stop()
    result: dict[str, Any] = {
        "memories": size,
        "memories_in_store": stored,
        "turns": len(timings),
        "append": append,
        "mean_lexical_hits": round(sum(t["lexical_hits"] for t in timings) / len(timings), 2)
        if timings
        else 0.0,
        "stages_ms": summarize(timings),
    }
    if with_rebuild:
        result["rebuild"] = time_rebuild(db_path)
    return result


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(terse=True),
    }


async def run_bench(
    sizes: Sequence[int], turns: int, warmup: int = 2, seed_value: int = 7
) -> dict[str, Any]:
    """The whole benchmark as a JSON-ready report."""
    largest = max(sizes)
    results = []
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        for size in sizes:
            results.append(
                await bench_size(size, turns, warmup, seed_value, Path(tmp), size == largest)
            )
    rebuild_result = next(r.pop("rebuild") for r in results if "rebuild" in r)
    return {
        "machine": machine_info(),
        "params": {"sizes": list(sizes), "turns": turns, "warmup": warmup, "seed": seed_value},
        "results": results,
        "rebuild": {"memories": largest, **rebuild_result},
    }


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['p50']:.2f} / {stat['p95']:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: machine line, stage table, throughput table."""
    m, p = report["machine"], report["params"]
    lines = [
        f"Machine: {m['cpu_count']} CPUs, Python {m['python']}, SQLite {m['sqlite']},"
        f" {m['platform']}. {p['turns']} turns per size after {p['warmup']} warm-up,"
        f" seed {p['seed']}.",
        "",
        "Per-turn time in ms, p50 / p95 (scripted backend, so `speaker` is near zero):",
        "",
        "| memories | " + " | ".join(STAGES) + " | speaker | turn (wall) | outside_llm (wall) |",
        "|---:|" + "---:|" * len(COLUMNS),
    ]
    for r in report["results"]:
        cells = [_cell(r["stages_ms"][name]) for name in COLUMNS]
        lines.append(f"| {r['memories']:,} | " + " | ".join(cells) + " |")
    rb = report["rebuild"]
    lines += [
        "",
        "| operation | memories | events | seconds | events/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        a = r["append"]
        lines.append(
            f"| append (seed, batches of {SEED_BATCH:,}) | {r['memories']:,} | {a['events']:,}"
            f" | {a['seconds']:.3f} | {a['events_per_s']:,.0f} |"
        )
    lines.append(
        f"| rebuild (full replay) | {rb['memories']:,} | {rb['events']:,}"
        f" | {rb['seconds']:.3f} | {rb['events_per_s']:,.0f} |"
    )
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 0:
        raise argparse.ArgumentTypeError("sizes are non-negative integers, comma-separated")
    return list(dict.fromkeys(sizes))  # a repeated size would reuse its database file


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from the command line; print markdown, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50, help="measured turns per size")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured turns per size")
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=list(DEFAULT_SIZES),
        help="memory-store sizes, comma-separated (default 100,1000,10000)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed for text and messages")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    report = asyncio.run(run_bench(args.sizes, args.turns, args.warmup, args.seed))
    print(render_markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
