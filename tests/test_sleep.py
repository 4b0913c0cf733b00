"""Sleep consolidation through the store: digests per witness set, the diff event, kept
originals, idempotence, beliefs in the right user's prompt, the narrative wording and its
fallback, replay equality, the CLI, the endpoint and its cross-site guard."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import assert_rebuild_and_verify_agree

from persona.cli import main
from persona.clock import FixedClock, iso
from persona.config import Settings, SleepSettings
from persona.engine import Engine
from persona.errors import PersonaNotFound
from persona.events import ChatStarted
from persona.events.memory import MemoryConsolidated, MemoryWritten, Utterance
from persona.llm.base import GenOptions
from persona.llm.scripted import FailAfter, ScriptedBackend
from persona.pipeline.context import TurnRequest
from persona.sleep import belief_id, due, sleep
from persona.storage.eventlog import NewEvent, count_events
from persona.web.app import create_app

START = datetime(2026, 1, 1, 12, tzinfo=UTC)
PORTO = [
    "I am moving to Porto next month.",
    "The flat in Porto has a tiny balcony.",
    "Packing boxes for Porto took all weekend.",
]
EXTRACTIVE = "\n".join(
    [
        "The user said they are moving to Porto next month.",
        "The user said the flat in Porto has a tiny balcony.",
        "The user said Packing boxes for Porto took all weekend.",
    ]
)


def written(
    persona_id: str, mid: str, text: str, user: str, day: float, score: int = 5
) -> NewEvent:
    """An L1 exchange the user `user` witnessed, `day` days after START (chat clock)."""
    payload = MemoryWritten(
        memory_id=mid,
        persona_id=persona_id,
        content=f"{text}\nHow lovely.",
        said=[
            Utterance(role="user", name="User", text=text),
            Utterance(role="persona", name="Mira", text="How lovely."),
        ],
        importance=score / 10,
        importance_score=score,
        entities=["Porto"] if "Porto" in text else [],
        witnesses=[user],
    )
    return NewEvent(
        payload=payload,
        stream_id=f"persona:{persona_id}",
        actor="test",
        chat_time=iso(START + timedelta(days=day)),
    )


def porto(persona_id: str, user: str, prefix: str, day: float = 0, score: int = 5) -> list[Any]:
    """Three related memories one user witnessed (the first one as important as `score`)."""
    return [
        written(persona_id, f"{prefix}{i}", t, user, day + i, score if i == 0 else 5)
        for i, t in enumerate(PORTO)
    ]


def restated(events: list[Any]) -> list[Any]:
    """The same memories, the first one's words said again with an exclamation mark."""
    first = events[0]
    said = first.payload.said[0].model_copy(update={"text": "I am moving to Porto next month!"})
    payload = first.payload.model_copy(update={"said": [said]})
    return [replace(first, payload=payload), *events[1:]]


def rows(engine: Engine, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return engine.store.sync_read(lambda c: [tuple(r) for r in c.execute(sql, args).fetchall()])


def witnesses(engine: Engine, memory_id: str) -> list[str]:
    sql = "SELECT user_id FROM memory_witness WHERE memory_id = ? ORDER BY user_id"
    return [r[0] for r in rows(engine, sql, memory_id)]


def diffs(engine: Engine) -> list[MemoryConsolidated]:
    from persona.storage.eventlog import read_events

    found = engine.store.sync_read(lambda c: list(read_events(c)))
    return [e.payload for e in found if isinstance(e.payload, MemoryConsolidated)]


async def turn_as(engine: Engine, user: str, message: str, chat_id: str) -> None:
    pid = await engine.runner.resolve(chat_id, None, user, engine.default_persona_id)
    request = TurnRequest(message, user, chat_id, pid, 0.0, GenOptions(max_tokens=60))
    await (await engine.runner.submit(request)).result


SLEEP = SleepSettings()


# ---- digests, the diff, the originals -------------------------------------------------------


async def test_sleep_writes_one_digest_per_witness_set_and_one_diff(engine: Engine) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a") + porto(pid, "bea", "b"))

    report = await sleep(engine.store, pid, "command", SLEEP)

    assert (report.digests, report.consolidated, report.notes) == (2, 6, 6)
    digests = rows(
        engine,
        "SELECT memory_id, content, importance_score, entities, shared FROM memory"
        " WHERE tier = 'L2' AND kind = 'digest' ORDER BY memory_id",
    )
    assert len(digests) == 2
    # Two users' memories never share a digest: each digest is its witness's only.
    by_witness = {tuple(witnesses(engine, d[0])): d for d in digests}
    assert sorted(by_witness) == [("ana",), ("bea",)]
    for d in digests:
        assert d[1] == EXTRACTIVE
        assert (d[2], json.loads(d[3]), d[4]) == (5, ["Porto"], 0)
    [diff] = diffs(engine)
    assert diff.trigger == "command" and diff.method == "extractive"
    assert {tuple(v) for v in diff.digests.values()} == {("a0", "a1", "a2"), ("b0", "b1", "b2")}
    # The originals stay L1, live and retrievable, and say which digest holds them.
    originals = rows(
        engine,
        "SELECT memory_id, tier, consolidated_into, tombstone, invalid_at FROM memory"
        " WHERE tier = 'L1' ORDER BY memory_id",
    )
    assert [(r[0], r[1], r[3], r[4]) for r in originals] == [
        (m, "L1", 0, None) for m in ("a0", "a1", "a2", "b0", "b1", "b2")
    ]
    assert {r[2] for r in originals if r[0].startswith("a")} == {by_witness[("ana",)][0]}


async def test_a_digest_is_dated_by_the_newest_note_it_covers(engine: Engine) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a"))
    await sleep(engine.store, pid, "command", SLEEP)
    [(created, valid_from)] = rows(
        engine, "SELECT created_at, valid_from FROM memory WHERE tier = 'L2'"
    )
    assert created == iso(START + timedelta(days=2))
    assert valid_from == iso(START)


async def test_a_small_group_waits_for_a_later_sleep(engine: Engine) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a")[:2])
    before = await engine.store.read(count_events)

    report = await sleep(engine.store, pid, "command", SLEEP)
    assert (report.digests, report.event_id) == (0, None)
    assert await engine.store.read(count_events) == before
    # min_group comes from the settings.
    report = await sleep(engine.store, pid, "command", SleepSettings(min_group=2))
    assert report.digests == 1


async def test_a_second_sleep_writes_nothing(engine: Engine) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a", score=9))
    first = await sleep(engine.store, pid, "command", SLEEP)
    assert first.event_id is not None
    before = await engine.store.read(count_events)

    again = await sleep(engine.store, pid, "inactivity", SLEEP)

    assert (again.digests, again.beliefs, again.event_id) == (0, 0, None)
    assert await engine.store.read(count_events) == before
    # New memories are consolidated on their own, the old ones left where they are.
    await engine.store.append(porto(pid, "ana", "n", day=40))
    third = await sleep(engine.store, pid, "command", SLEEP)
    assert (third.digests, third.consolidated) == (1, 3)


async def test_tombstoned_memories_are_not_consolidated(engine: Engine) -> None:
    from persona.events.memory import MemoryDeleted

    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a"))
    gone = MemoryDeleted(memory_id="a1", persona_id=pid)
    await engine.store.append([NewEvent(payload=gone, stream_id=f"persona:{pid}", actor="test")])
    assert (await sleep(engine.store, pid, "command", SLEEP)).digests == 0


async def test_an_unknown_persona_is_refused(engine: Engine) -> None:
    with pytest.raises(PersonaNotFound):
        await sleep(engine.store, "nobody", "command", SLEEP)


# ---- beliefs ------------------------------------------------------------------------------


async def test_beliefs_land_in_l3_for_their_witness_only(
    engine: Engine, backend: ScriptedBackend
) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a", score=9))

    report = await sleep(engine.store, pid, "command", SLEEP)

    assert report.beliefs == 1
    [(bid, content, score)] = rows(
        engine,
        "SELECT memory_id, content, importance_score FROM memory WHERE tier = 'L3'"
        " AND kind = 'belief'",
    )
    assert (content, score) == ("The user said they are moving to Porto next month.", 9)
    assert witnesses(engine, bid) == ["ana"]
    assert diffs(engine)[0].beliefs == [bid]
    # Always in context for the user who was there; never for anyone else.
    await turn_as(engine, "ana", "What is new?", "chat-ana")
    assert content in backend.calls[-1][0].content
    await turn_as(engine, "bea", "What is new?", "chat-bea")
    assert content not in backend.calls[-1][0].content


async def test_an_unimportant_group_proposes_no_belief(engine: Engine) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a", score=7))
    assert (await sleep(engine.store, pid, "command", SLEEP)).beliefs == 0


async def test_a_belief_restated_supersedes_the_old_wording(engine: Engine) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a", score=9))
    await sleep(engine.store, pid, "command", SLEEP)
    [(old,)] = rows(engine, "SELECT memory_id FROM memory WHERE kind = 'belief'")
    later = restated(porto(pid, "ana", "n", day=40, score=9))
    await engine.store.append(later)

    report = await sleep(engine.store, pid, "command", SLEEP)

    assert (report.beliefs, report.superseded) == (1, 1)
    assert diffs(engine)[-1].superseded == [old]
    live = rows(engine, "SELECT content FROM memory WHERE kind = 'belief' AND invalid_at IS NULL")
    assert live == [("The user said they are moving to Porto next month!",)]
    # The old one is kept, marked invalid, not deleted.
    assert rows(engine, "SELECT tombstone FROM memory WHERE memory_id = ?", old) == [(0,)]


async def test_another_users_similar_belief_is_not_superseded(engine: Engine) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a", score=9))
    await sleep(engine.store, pid, "command", SLEEP)
    await engine.store.append(restated(porto(pid, "bea", "b", day=40, score=9)))
    report = await sleep(engine.store, pid, "command", SLEEP)
    assert (report.beliefs, report.superseded) == (1, 0)


# ---- the narrative method -----------------------------------------------------------------

NARRATED = "They moved to Porto next month, into a flat with a tiny balcony, after packing."


async def test_the_narrative_method_words_the_digest_with_the_model(
    engine: Engine, backend: ScriptedBackend
) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a"))
    backend.enqueue(NARRATED)
    calls = len(backend.calls)

    report = await sleep(engine.store, pid, "asked", SleepSettings(method="narrative"), backend)

    assert (report.narrated, report.fallbacks, report.method) == (1, 0, "narrative")
    assert rows(engine, "SELECT content FROM memory WHERE tier = 'L2'") == [(NARRATED,)]
    assert backend.calls[calls][-1].content == EXTRACTIVE  # the model was shown the notes
    assert diffs(engine)[0].method == "narrative"


async def test_the_narrative_method_words_a_belief_too_and_keeps_its_id(
    engine: Engine, backend: ScriptedBackend
) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a", score=9))
    # The digest first, then the belief (one line, at most 200 characters).
    backend.enqueue(NARRATED, "Ana is moving to Porto next month.")
    calls = len(backend.calls)

    report = await sleep(engine.store, pid, "asked", SleepSettings(method="narrative"), backend)

    assert (report.beliefs, report.narrated, report.fallbacks) == (1, 2, 0)
    [(bid, content)] = rows(engine, "SELECT memory_id, content FROM memory WHERE kind = 'belief'")
    assert content == "Ana is moving to Porto next month."
    line = "The user said they are moving to Porto next month."
    assert backend.calls[calls + 1][-1].content == line  # the model was shown the note
    assert bid == belief_id(["ana"], False, line)  # the id stays the extractive line's


@pytest.mark.parametrize(
    "reply",
    [FailAfter("They moved", "model crashed"), "   ", "x" * 700],
    ids=["llm-error", "empty", "oversized"],
)
async def test_the_narrative_method_falls_back_to_the_extractive_text(
    engine: Engine, backend: ScriptedBackend, reply: Any
) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a"))
    backend.enqueue(reply)
    settings = SleepSettings(method="narrative")

    report = await sleep(engine.store, pid, "asked", settings, backend)

    assert (report.digests, report.narrated, report.fallbacks) == (1, 0, 1)
    assert rows(engine, "SELECT content FROM memory WHERE tier = 'L2'") == [(EXTRACTIVE,)]


async def test_extractive_asks_no_model(engine: Engine, backend: ScriptedBackend) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a"))
    calls = len(backend.calls)
    await sleep(engine.store, pid, "command", SLEEP, backend)
    assert len(backend.calls) == calls


# ---- replay, triggers ---------------------------------------------------------------------


async def test_projections_after_a_sleep_equal_a_replay(engine: Engine, tmp_path: Path) -> None:
    pid = engine.default_persona_id
    await engine.store.append(porto(pid, "ana", "a", score=9) + porto(pid, "bea", "b"))
    await sleep(engine.store, pid, "command", SLEEP)
    assert_rebuild_and_verify_agree(engine.settings.db_path, tmp_path / "scratch.db")


async def test_due_says_which_trigger(engine: Engine, clock: FixedClock) -> None:
    pid = engine.default_persona_id
    settings = SleepSettings(pressure_l1=3, idle_after_h=6)
    await engine.store.append(porto(pid, "ana", "a")[:2])
    last = START + timedelta(days=1)

    def check(now: datetime) -> str | None:
        return engine.store.sync_read(due, pid, now, settings)

    # Fewer than min_group waiting: nothing to do, however idle.
    assert check(last + timedelta(days=30)) is None
    await engine.store.append(porto(pid, "ana", "a")[2:])
    last = START + timedelta(days=2)
    assert check(last + timedelta(hours=5.9)) is None
    assert check(last + timedelta(hours=6)) == "inactivity"
    # A chat's activity counts as much as a memory, in wall time: chats started later keep
    # it awake, whatever their own clocks say (a flashback to 1999, a story in 2031).
    clock.current = chat_at = last + timedelta(days=1)
    for chat_id, story in (
        ("c9", "1999-12-31T23:00:00.000000Z"),
        ("c10", "2031-05-01T09:00:00.000000Z"),
    ):
        started = ChatStarted(chat_id=chat_id, persona_id=pid, user_id="ana", title="")
        await engine.store.append(
            [NewEvent(payload=started, stream_id=f"chat:{chat_id}", actor="test", chat_time=story)]
        )
    assert check(last + timedelta(hours=6)) is None
    assert check(chat_at + timedelta(hours=5.9)) is None
    assert check(chat_at + timedelta(hours=6, minutes=1)) == "inactivity"
    await engine.store.append(porto(pid, "ana", "p", day=3))
    assert check(last) == "pressure"  # 6 waiting > 3, idle or not
    await sleep(engine.store, pid, "pressure", settings)
    assert check(START + timedelta(days=60)) is None  # all consolidated


# ---- the CLI and the endpoint -------------------------------------------------------------


def _seeded(tmp_path: Path) -> Settings:
    settings = Settings(db_path=tmp_path / "cli.db", llm={"provider": "scripted"})

    async def seed() -> None:
        engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock())
        await engine.start()
        try:
            await engine.store.append(porto(engine.default_persona_id, "ana", "a"))
        finally:
            await engine.stop()

    asyncio.run(seed())
    return settings


def test_the_cli_sleeps_then_has_nothing_new_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _seeded(tmp_path)
    monkeypatch.setenv("PERSONA_DB_PATH", str(settings.db_path))

    assert main(["sleep", "--quiet"]) == 0
    assert "1 digest(s), 0 belief(s) from 3 L1 memories" in capsys.readouterr().out
    assert main(["sleep", "--quiet", "--method", "extractive"]) == 0
    assert "nothing new to consolidate" in capsys.readouterr().out
    assert main(["verify", "--quiet"]) == 0
    assert main(["sleep", "--quiet", "--persona", "nobody"]) == 2
    assert "unknown persona_id 'nobody'" in capsys.readouterr().err


def _client(tmp_path: Path) -> TestClient:
    settings = Settings(db_path=tmp_path / "web.db", llm={"provider": "scripted"})
    engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock())
    return TestClient(create_app(engine=engine), base_url="http://localhost")


def test_the_endpoint_sleeps_when_asked(tmp_path: Path) -> None:
    with _client(tmp_path) as client:
        engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
        engine.store.sync_append(porto(engine.default_persona_id, "ana", "a"))

        response = client.post("/persona/sleep", json={})

        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["trigger"], body["digests"], body["consolidated"]) == ("asked", 1, 3)
        assert diffs(engine)[0].trigger == "asked"
        again = client.post("/persona/sleep", json={"persona_id": engine.default_persona_id})
        assert (again.json()["digests"], again.json()["event_id"]) == (0, None)
        assert client.post("/persona/sleep", json={"persona_id": "nobody"}).status_code == 404
        assert client.post("/persona/sleep", json={"persona": "x"}).status_code == 422


def test_a_cross_site_sleep_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    with _client(tmp_path) as client:
        engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
        engine.store.sync_append(porto(engine.default_persona_id, "ana", "a"))
        before = engine.store.sync_read(count_events)
        for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
            response = client.post(
                "/persona/sleep", content="{}", headers={"content-type": "text/plain", **headers}
            )
            assert response.status_code == 403
            assert response.json()["error"].startswith("cross-site request refused")
        assert engine.store.sync_read(count_events) == before
