"""Measure how long moving a chat's leaf takes: choosing a branch, rewinding, undoing.

Builds one temporary database: a persona with many memories from many chats, and one
chat whose turns form a tree (a main path and side branches, each started by an edit).
The turns are written as the events a real turn writes (queued, started, reply,
episodic and fact memories, memory access, affinity edge, identity, telemetry, chat
state, completed), shaped from two real turns run first with the scripted backend; the
stage decision events are left out (the projector folds none of them). Then it times,
through the tree routes' own functions (decide, append, fold, impact, in one writer
transaction), switching to random branches and rewinding a random 1..50 turns followed
by an undo, and the same moves appended as bare events (the projector's fold alone).
Offline and deterministic (fixed seeds, fixed clocks); speed is measured here and never
asserted in tests.

    python bench/branch_switch.py [--ops 200] [--quick] [--through api,fold] [--seed 7] \
        [--json out.json] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from persona.clock import FixedClock, iso
from persona.config import LLMSettings, Settings
from persona.engine import Engine
from persona.events import (
    ChatStarted,
    ChatStateRecorded,
    EdgeAsserted,
    EventPayload,
    FactRecorded,
    IdentityUpdated,
    MemoryAccessed,
    MemoryWritten,
    ReplyCompleted,
    TelemetryRecorded,
    TurnCompleted,
    TurnQueued,
    TurnStarted,
    Utterance,
)
from persona.events.tree import BranchSelected, ChatRewound, RewindUndone, TurnEdited
from persona.llm.base import GenOptions
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.context import TurnRequest
from persona.projector.branches import path_to
from persona.storage import queries
from persona.storage.eventlog import NewEvent, count_events
from persona.web import tree

P = TypeVar("P", bound=EventPayload)
START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
CHAT_ID = "tree-chat"
USER_ID = "local"
TARGET_P95_MS = 50.0
MAX_REWIND = 50
# A branch switch between rewinds, so each rewind starts from another leaf.
REWINDS_PER_LEAF = 10


@dataclass(frozen=True)
class Shape:
    """The dataset: one tree-shaped chat, and other chats up to `memories` in all."""

    main_turns: int = 505
    branches: int = 99  # side branches; with the main path, branches + 1 leaves
    branch_turns: int = 5
    memories: int = 10_000  # the persona's memories, every chat together
    other_chat_turns: int = 40
    fact_every: int = 10  # every n-th turn of a chat also records a fact
    accesses: int = 3  # memories a turn's prompt used

    @property
    def chat_turns(self) -> int:
        return self.main_turns + self.branches * self.branch_turns


FULL = Shape()
QUICK = Shape(main_turns=105, branches=19, memories=2_000)


def _words(text: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in text.split(","))


PEOPLE = _words("sister, brother, mother, neighbour, colleague, friend, cousin, teacher")
PLACES = _words("library, harbour, market, bakery, station, garden, museum, lake, park")
THINGS = _words("map, bicycle, guitar, notebook, camera, letter, kettle, lantern, scarf")
ACTIVITIES = _words("hiking, baking bread, running, chess, sailing, knitting, swimming")
TOWNS = _words("Leeds, Porto, Ghent, Bergen, Lyon, Krakow, Cork, Tartu")
LINES = (
    "I went to the {place} with my {person} and we found an old {thing}.",
    "I've been {activity} all week and my {person} joined me once.",
    "My {person} gave me a {thing}; it reminds me of the {place}.",
    "Do you remember the {thing} I lost near the {place}?",
)


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        person=rng.choice(PEOPLE),
        place=rng.choice(PLACES),
        thing=rng.choice(THINGS),
        activity=rng.choice(ACTIVITIES),
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


# ---- templates: the shape of a real turn's events ------------------------------------------


@dataclass(frozen=True)
class Templates:
    """Payloads of a real turn (the second of a chat) to copy with new ids and text."""

    started: TurnStarted
    reply: ReplyCompleted
    identity: IdentityUpdated
    telemetry: TelemetryRecorded
    state: ChatStateRecorded


async def capture_templates(workdir: Path) -> Templates:
    """Run two real turns with the scripted backend; keep the second one's payloads."""
    settings = _BenchSettings(
        db_path=workdir / "templates.db", llm=LLMSettings(provider="scripted")
    )
    engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock(START))
    await engine.start()
    try:
        trace_id = ""
        for message in ("My sister Anna lives in Porto.", "I went to the library with Bob."):
            pid = await engine.runner.resolve("t", None, USER_ID, engine.default_persona_id)
            request = TurnRequest(message, USER_ID, "t", pid, 0.0, GenOptions(max_tokens=64))
            trace_id = (await (await engine.runner.submit(request)).result).trace_id
        events = await engine.store.read(queries.trace_events, trace_id)
    finally:
        await engine.stop()
    found = {type(e.payload): e.payload for e in events}
    return Templates(
        started=_of(found, TurnStarted),
        reply=_of(found, ReplyCompleted),
        identity=_of(found, IdentityUpdated),
        telemetry=_of(found, TelemetryRecorded),
        state=_of(found, ChatStateRecorded),
    )


def _of(found: dict[type, EventPayload], cls: type[P]) -> P:
    payload = found.get(cls)
    assert isinstance(payload, cls), f"a real turn wrote no {cls.__name__}"
    return payload


# ---- the dataset -----------------------------------------------------------------------------


@dataclass
class Builder:
    """Writes synthetic turns as real events, keeping what later turns refer to."""

    persona_id: str
    persona_name: str
    templates: Templates
    rng: random.Random
    shape: Shape
    at: datetime = START
    pool: list[str] = field(default_factory=list)  # memories a later turn may use
    lives_in: dict[str, str] = field(default_factory=dict)  # current fact edge per subject
    memories: int = 0
    turns: int = 0

    def _id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _event(self, payload: EventPayload, stream: str, actor: str, trace: str) -> NewEvent:
        return NewEvent(
            payload=payload,
            stream_id=stream,
            actor=actor,
            trace_id=trace,
            chat_time=iso(self.at),
            event_id=self._id(),
        )

    def turn(
        self,
        chat_id: str,
        parent: str | None,
        depth: int,
        index: int,
        edit_of: str | None = None,
        use_pool: bool = True,
    ) -> tuple[str, list[NewEvent]]:
        """One completed turn's events; `edit_of`: an edit of that sibling (a new branch)."""
        t, rng, pid = self.templates, self.rng, self.persona_id
        turn_id, trace = self._id(), self._id()
        chat, persona = f"chat:{chat_id}", f"persona:{pid}"
        message = _fill(rng.choice(LINES), rng)
        reply = f"(scripted reply) You said: {message}"
        self.at += timedelta(seconds=30)
        ev = self._event
        out = []
        if index == 0:
            started = ChatStarted(chat_id=chat_id, persona_id=pid, user_id=USER_ID, title=message)
            out.append(ev(started, chat, "runner", trace))
        queued = TurnQueued(
            turn_id=turn_id, chat_id=chat_id, persona_id=pid, user_id=USER_ID, message=message,
            ahead=0,
        )  # fmt: skip
        out.append(ev(queued, chat, "runner", trace))
        if edit_of is not None:
            edited = TurnEdited(
                turn_id=turn_id, chat_id=chat_id, of_turn_id=edit_of, parent_turn_id=parent,
                message=message, previous="(the message before)",
            )  # fmt: skip
            out.append(ev(edited, chat, "user", trace))
        ids = {"turn_id": turn_id, "chat_id": chat_id}
        out += [
            ev(
                t.started.model_copy(
                    update={**ids, "parent_turn_id": parent, "depth": depth, "message": message}
                ),
                chat, "runner", trace,
            ),
            ev(t.reply.model_copy(update={**ids, "reply": reply}), chat, "speaker", trace),
        ]  # fmt: skip
        used = rng.sample(self.pool, min(self.shape.accesses, len(self.pool))) if use_pool else []
        if used:
            accessed = MemoryAccessed(persona_id=pid, turn_id=turn_id, memory_ids=used)
            out.append(ev(accessed, chat, "memory_access", trace))
        written = [f"ep:{turn_id}"]
        out.append(
            ev(self._memory(written[0], chat_id, turn_id, message, reply), chat, "episodic", trace)
        )
        if index % self.shape.fact_every == self.shape.fact_every - 1:
            fact_id = f"fa:{turn_id}:0"
            written.append(fact_id)
            out.append(
                ev(self._memory(fact_id, chat_id, turn_id, message, None), chat, "facts", trace)
            )
            out.append(ev(self._fact(fact_id, turn_id, message), persona, "facts", trace))
        if index > 0:  # from a chat's second turn, the affinity edge moves
            weight = round(rng.uniform(-0.5, 0.8), 4)
            edge = EdgeAsserted(
                persona_id=pid, src=f"persona:{pid}", rel="talks_with", dst=f"user:{USER_ID}",
                weight=weight, previous_weight=None, signal=weight, rate=0.2, turn_id=turn_id,
            )  # fmt: skip
            out.append(ev(edge, persona, "relationship", trace))
        out += [
            ev(t.identity.model_copy(update=ids), persona, "identity", trace),
            ev(t.telemetry.model_copy(update=ids), chat, "telemetry", trace),
            ev(t.state.model_copy(update=ids), chat, "state", trace),
            ev(
                TurnCompleted(turn_id=turn_id, chat_id=chat_id, persona_id=pid, reply=reply),
                chat, "runner", trace,
            ),
        ]  # fmt: skip
        if use_pool:
            self.pool += written
        self.memories += len(written)
        self.turns += 1
        return turn_id, out

    def _memory(
        self, memory_id: str, chat_id: str, turn_id: str, message: str, reply: str | None
    ) -> MemoryWritten:
        said = [Utterance(role="user", name="User", text=message)]
        if reply is not None:
            said.append(Utterance(role="persona", name=self.persona_name, text=reply))
        return MemoryWritten(
            memory_id=memory_id,
            persona_id=self.persona_id,
            tier="L1",
            kind="exchange" if reply is not None else "fact",
            chat_id=chat_id,
            turn_id=turn_id,
            content=message if reply is None else f"{message}\n{reply}",
            said=said,
            importance=round(self.rng.uniform(0.2, 0.9), 4),
            witnesses=[USER_ID],
        )

    def _fact(self, memory_id: str, turn_id: str, text: str) -> FactRecorded:
        """A fact edge: a liking (kept), or where someone lives (retires the one before)."""
        rng, pid = self.rng, self.persona_id
        if rng.random() < 0.5:
            dst = rng.choice(ACTIVITIES)
            src, rel, supersedes = f"user:{USER_ID}", "likes", []
        else:
            person, dst = rng.choice(PEOPLE), rng.choice(TOWNS)
            src, rel = f"entity:{USER_ID}:{person}", "lives_in"
            before = self.lives_in.get(src)
            edge_id = f"{pid}|{src}|{rel}|{dst.lower()}"
            supersedes = [before] if before is not None and before != edge_id else []
            self.lives_in[src] = edge_id
        return FactRecorded(
            persona_id=pid, turn_id=turn_id, memory_id=memory_id,
            edge_id=f"{pid}|{src}|{rel}|{dst.lower()}", src=src, rel=rel, dst=dst, text=text,
            supersedes=supersedes,
        )  # fmt: skip


@dataclass
class ChatTree:
    """The measured chat: its main path and, per side branch, its first turn and fork."""

    main: list[str]
    forks: list[tuple[int, str]]  # (depth, the side branch's first turn)
    other_chats: int
    other_turns: int


def fork_depths(shape: Shape) -> list[int]:
    """Where the side branches leave the main path: spread evenly over its depth."""
    span = shape.main_turns - 1
    return [1 + (i * (span - 1)) // max(shape.branches - 1, 1) for i in range(shape.branches)]


async def build(engine: Engine, shape: Shape, templates: Templates, rng: random.Random) -> ChatTree:
    """Other chats first (the persona's past), then the measured chat, its branches last."""
    persona = await engine.store.read(queries.get_persona, engine.default_persona_id)
    assert persona is not None, "the engine creates its default persona on start"
    b = Builder(persona.persona_id, persona.name, templates, rng, shape)
    per_turn = 1 + 1 / shape.fact_every
    others = max(0, round((shape.memories - shape.chat_turns * per_turn) / per_turn))
    chats = 0
    for start in range(0, others, shape.other_chat_turns):
        chat_id, parent, batch = f"past-{chats:04d}", None, []
        for i in range(min(shape.other_chat_turns, others - start)):
            parent, events = b.turn(chat_id, parent, i, i)
            batch += events
        await engine.store.append(batch)
        chats += 1
    # The measured chat's turns recall the persona's past, never a sibling branch.
    main: list[str] = []
    batch, parent = [], None
    for depth in range(shape.main_turns):
        parent, events = b.turn(CHAT_ID, parent, depth, depth, use_pool=False)
        main.append(parent)
        batch += events
        if len(batch) > 2_000:
            await engine.store.append(batch)
            batch = []
    await engine.store.append(batch)
    depths = fork_depths(shape)
    rng.shuffle(depths)  # created in no particular order, as a user would
    forks = []
    for depth in depths:
        batch, parent = [], main[depth - 1]
        for i in range(shape.branch_turns):
            edit_of = main[depth] if i == 0 else None
            turn_id, events = b.turn(CHAT_ID, parent, depth + i, depth + i, edit_of, False)
            if i == 0:
                forks.append((depth, turn_id))
            parent = turn_id
            batch += events
        await engine.store.append(batch)
    return ChatTree(main, sorted(forks), chats, b.turns - shape.chat_turns)


# ---- the moves -----------------------------------------------------------------------------


def head(conn: sqlite3.Connection) -> str | None:
    """The measured chat's leaf."""
    row = conn.execute("SELECT head_turn_id FROM chats WHERE chat_id = ?", (CHAT_ID,)).fetchone()
    return row[0] if row else None


def check_path(conn: sqlite3.Connection) -> None:
    """The active turns are exactly the leaf's path, and each memory follows its turn."""
    path = set(path_to(conn, head(conn)))
    active = {
        r[0]
        for r in conn.execute(
            "SELECT turn_id FROM turns WHERE chat_id = ? AND active = 1", (CHAT_ID,)
        )
    }
    assert active == path, f"{len(active ^ path)} turns off the leaf's path"
    wrong = conn.execute(
        "SELECT COUNT(*) FROM memory m JOIN turns t ON t.turn_id = m.turn_id"
        " WHERE t.chat_id = ? AND m.active != t.active",
        (CHAT_ID,),
    ).fetchone()[0]
    assert wrong == 0, f"{wrong} memories disagree with their turn"


def _append_move(payload: EventPayload) -> Callable[[Engine], Awaitable[Any]]:
    def run(engine: Engine) -> Awaitable[Any]:
        return engine.store.append([NewEvent(payload, f"chat:{CHAT_ID}", "user")])

    return run


def branch_move(mode: str, turn_id: str, leaf: str, before: str | None) -> Callable[..., Any]:
    """Choose the branch of `turn_id` (its newest leaf `leaf`): the route, or the event."""
    if mode == "api":
        return lambda e: tree.select_branch(CHAT_ID, tree.BranchBody(turn_id=turn_id), e)
    payload = BranchSelected(
        chat_id=CHAT_ID, turn_id=turn_id, leaf_turn_id=leaf, from_turn_id=before
    )
    return _append_move(payload)


def rewind_move(mode: str, target: str | None, before: str | None) -> Callable[..., Any]:
    """Move the leaf back to `target`."""
    if mode == "api":
        return lambda e: tree.rewind(CHAT_ID, tree.RewindBody(turn_id=target), e)
    return _append_move(ChatRewound(chat_id=CHAT_ID, to_turn_id=target, from_turn_id=before))


def undo_move(mode: str, back_to: str | None, before: str | None) -> Callable[..., Any]:
    """Undo the rewind: the leaf goes back to `back_to`."""
    if mode == "api":
        return lambda e: tree.undo_rewind(CHAT_ID, e)
    return _append_move(RewindUndone(chat_id=CHAT_ID, to_turn_id=back_to, from_turn_id=before))


async def timed(engine: Engine, move: Callable[[Engine], Awaitable[Any]]) -> float:
    """Run one move; its time in ms (a refusal is a bug here, not a measurement)."""
    t0 = time.perf_counter()
    result = await move(engine)
    ms = (time.perf_counter() - t0) * 1000
    assert not hasattr(result, "status_code"), f"move refused: {bytes(result.body).decode()}"
    return ms


@dataclass
class Series:
    """Times of one kind of move, and how many turns each moved on or off the path."""

    ms: list[float] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)


async def _leaf(engine: Engine) -> str | None:
    return await engine.store.read(head)


async def switch_to(engine: Engine, mode: str, target: str, full_check: bool) -> tuple[float, int]:
    """Choose `target`'s branch; check the leaf; the time and the turns moved."""
    before = await _leaf(engine)
    old = set(await engine.store.read(path_to, before))
    leaf = await engine.store.read(queries.newest_leaf, target)
    ms = await timed(engine, branch_move(mode, target, leaf, before))
    now = await _leaf(engine)
    assert now == leaf, f"branch switch left the leaf at {now}, asked for {leaf}"
    if full_check:
        await engine.store.read(check_path)
    return ms, len(old ^ set(await engine.store.read(path_to, leaf)))


async def run_moves(
    engine: Engine, chat: ChatTree, mode: str, ops: int, seed: int, full_check: bool
) -> dict[str, Series]:
    """`ops` branch switches, then `ops` rewinds each followed by its undo."""
    rng = random.Random(seed)
    # Both turns of each fork: the side branch's first turn and the main path's.
    targets = [side for _, side in chat.forks] + [chat.main[depth] for depth, _ in chat.forks]
    out = {"branch": Series(), "rewind": Series(), "undo": Series()}

    async def random_switch() -> tuple[float, int]:
        on_path = set(await engine.store.read(path_to, await _leaf(engine)))
        choices = [t for t in targets if t not in on_path]
        return await switch_to(engine, mode, rng.choice(choices), full_check)

    for _ in range(ops):
        ms, moved = await random_switch()
        out["branch"].ms.append(ms)
        out["branch"].moved.append(moved)
    for i in range(ops):
        if i % REWINDS_PER_LEAF == 0:
            await random_switch()
        leaf = await _leaf(engine)
        path = await engine.store.read(path_to, leaf)
        k = rng.randint(1, MAX_REWIND)
        target = path[k] if k < len(path) else None
        ms = await timed(engine, rewind_move(mode, target, leaf))
        assert await _leaf(engine) == target, "the rewind left the leaf elsewhere"
        if full_check:
            await engine.store.read(check_path)
        out["rewind"].ms.append(ms)
        out["rewind"].moved.append(min(k, len(path)))
        ms = await timed(engine, undo_move(mode, leaf, target))
        assert await _leaf(engine) == leaf, "the undo left the leaf elsewhere"
        if full_check:
            await engine.store.read(check_path)
        out["undo"].ms.append(ms)
        out["undo"].moved.append(min(k, len(path)))
    return out


# ---- report ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(series: Series) -> dict[str, float]:
    """p50 / p95 / max of the times, and of the turns moved."""
    return {
        "n": len(series.ms),
        "p50": round(percentile(series.ms, 50), 3),
        "p95": round(percentile(series.ms, 95), 3),
        "max": round(max(series.ms, default=0.0), 3),
        "moved_p50": round(percentile(series.moved, 50), 1),
        "moved_max": max(series.moved, default=0),
    }


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(terse=True),
    }


def _dataset(conn: sqlite3.Connection) -> dict[str, int]:
    one = lambda sql: int(conn.execute(sql, (CHAT_ID,)).fetchone()[0])  # noqa: E731
    leaves = one(
        "SELECT COUNT(*) FROM turns t WHERE t.chat_id = ? AND NOT EXISTS"
        " (SELECT 1 FROM turns c WHERE c.parent_turn_id = t.turn_id)"
    )
    return {
        "chat_turns": one("SELECT COUNT(*) FROM turns WHERE chat_id = ?"),
        "chat_leaves": leaves,
        "chat_max_depth": one("SELECT MAX(depth) FROM turns WHERE chat_id = ?"),
        "chat_memories": one("SELECT COUNT(*) FROM memory WHERE chat_id = ?"),
        "memories": int(conn.execute("SELECT COUNT(*) FROM memory").fetchone()[0]),
        "turns": int(conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0]),
        "events": count_events(conn),
        "edge_log": int(conn.execute("SELECT COUNT(*) FROM edge_log").fetchone()[0]),
        "memory_access": int(conn.execute("SELECT COUNT(*) FROM memory_access").fetchone()[0]),
    }


async def run_bench(
    shape: Shape,
    ops: int,
    seed: int = 7,
    modes: Sequence[str] = ("api", "fold"),
    full_check: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    """The whole benchmark as a JSON-ready report."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        templates = await capture_templates(Path(tmp))
        settings = _BenchSettings(
            db_path=Path(tmp) / "tree.db", llm=LLMSettings(provider="scripted")
        )
        engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock(START))
        await engine.start()
        try:
            chat = await build(engine, shape, templates, rng)
            built_s = time.perf_counter() - t0
            await engine.store.read(check_path)
            dataset = {
                **await engine.store.read(_dataset),
                "other_chats": chat.other_chats,
                "fork_depths": [d for d, _ in chat.forks],
            }
            results: dict[str, dict[str, dict[str, float]]] = {}
            profiler = cProfile.Profile() if profile else None
            for mode in modes:
                if profiler is not None and mode == "api":
                    profiler.enable()
                series = await run_moves(engine, chat, mode, ops, seed, full_check)
                if profiler is not None:
                    profiler.disable()
                results[mode] = {name: summarize(s) for name, s in series.items()}
            await engine.store.read(check_path)
        finally:
            await engine.stop()
    report: dict[str, Any] = {
        "machine": machine_info(),
        "params": {"ops": ops, "seed": seed, "shape": shape.__dict__},
        "dataset": dataset,
        "build_s": round(built_s, 2),
        "total_s": round(time.perf_counter() - t0, 2),
        "results": results,
    }
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
        report["profile"] = text.getvalue()
    return report


LABELS = {
    "api": "route (decide, append, fold, impact)",
    "fold": "event only (append and fold)",
}
OPS = {"branch": "branch switch", "rewind": "rewind 1..50", "undo": "undo rewind"}


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: machine and dataset lines, one table row per move."""
    m, d, p = report["machine"], report["dataset"], report["params"]
    lines = [
        f"Machine: {m['cpu_count']} CPUs, Python {m['python']}, SQLite {m['sqlite']},"
        f" {m['platform']}. {p['ops']} moves of each kind, seed {p['seed']}.",
        f"Chat: {d['chat_turns']:,} turns, {d['chat_leaves']} leaves (branches), depth up to"
        f" {d['chat_max_depth']}, {d['chat_memories']:,} memories. Persona: {d['memories']:,}"
        f" memories, {d['turns']:,} turns in {d['other_chats'] + 1} chats, {d['events']:,}"
        f" events, {d['edge_log']:,} edge entries, {d['memory_access']:,} memory uses."
        f" Built in {report['build_s']:.1f} s; whole run {report['total_s']:.1f} s.",
        "",
        "| move | through | turns moved p50 / max | p50 ms | p95 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode, by_op in report["results"].items():
        for op, s in by_op.items():
            lines.append(
                f"| {OPS[op]} | {LABELS[mode]} | {s['moved_p50']:.0f} / {s['moved_max']}"
                f" | {s['p50']:.2f} | {s['p95']:.2f} | {s['max']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=200, help="moves of each kind")
    parser.add_argument("--quick", action="store_true", help="a 200-turn chat, 2,000 memories")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the full report here")
    parser.add_argument(
        "--through",
        default="api",
        help="api (the tree routes' functions), fold (the bare events), or api,fold",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the route moves")
    args = parser.parse_args(argv)
    report = asyncio.run(
        run_bench(
            QUICK if args.quick else FULL,
            args.ops,
            args.seed,
            modes=[m.strip() for m in args.through.split(",") if m.strip()],
            profile=args.profile,
        )
    )
    print(render_markdown(report))
    if "profile" in report:
        print(report["profile"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
