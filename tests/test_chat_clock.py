"""Each chat's own clock: chat time = wall time + the chat's offset, moved by chat.clock_set.

It starts at the chat's creation (or an in-story time), runs with wall time, is set or
skipped through the API and the drawer's form, and every event written for the chat (the
persona-scoped writes of its turns included) carries it; memory recency counts on it.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import assert_rebuild_and_verify_agree

from persona.clock import FixedClock, iso, parse_iso
from persona.config import Settings
from persona.decision_replay import replay_decisions
from persona.engine import Engine
from persona.events.chats import ChatRenamed
from persona.events.clock import ChatClockSet
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.memory import recency
from persona.storage.eventlog import NewEvent
from persona.storage.sleep_queries import pressure
from persona.web.app import create_app

FORM = {"content-type": "application/x-www-form-urlencoded"}
XSS = "<script>alert(1)</script>"


def engine_of(client: TestClient) -> Engine:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def rows(client: TestClient, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    got = engine_of(client).store.sync_read(lambda c: c.execute(sql, args).fetchall())
    return [tuple(r) for r in got]


def event_count(client: TestClient) -> int:
    return int(rows(client, "SELECT COUNT(*) FROM events")[0][0])


def clock_events(client: TestClient) -> list[dict[str, Any]]:
    found = rows(
        client, "SELECT payload, chat_time FROM events WHERE type = 'chat.clock_set' ORDER BY seq"
    )
    return [{**json.loads(p), "event_chat_time": t} for p, t in found]


def offset_of(client: TestClient, chat_id: str) -> float:
    return float(rows(client, "SELECT clock_offset_s FROM chats WHERE chat_id = ?", chat_id)[0][0])


def talk(client: TestClient, message: str, session_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if session_id:
        body["session_id"] = session_id
    answer = client.post("/persona/chat", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    result["trace_id"] = result["meta"]["trace_id"]
    return result


def trace_times(client: TestClient, trace_id: str) -> list[tuple[str, str, str, str]]:
    """(type, stream, wall_time, chat_time) of every event of a turn."""
    got = rows(
        client,
        "SELECT type, stream_id, wall_time, chat_time FROM events WHERE trace_id = ? ORDER BY seq",
        trace_id,
    )
    return [(r[0], r[1], r[2], r[3]) for r in got]


def started_at(client: TestClient, trace_id: str) -> tuple[datetime, datetime]:
    """(wall time, chat time) of a turn's turn.started."""
    for kind, _, wall, chat in trace_times(client, trace_id):
        if kind == "turn.started":
            return parse_iso(wall), parse_iso(chat)
    raise AssertionError("no turn.started")


def move(client: TestClient, chat_id: str, **body: Any) -> dict[str, Any]:
    answer = client.post(f"/persona/chats/{chat_id}/clock", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


@contextmanager
def client_on(tmp_path: Path, name: str) -> Iterator[TestClient]:
    settings = Settings(db_path=tmp_path / f"{name}.db", llm={"provider": "scripted"})
    app = create_app(engine=Engine(settings, backend=ScriptedBackend(), clock=FixedClock()))
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client


# ---- start, set, skip -------------------------------------------------------------------------


def test_the_clock_starts_at_the_wall_time_of_creation_and_runs_with_it(
    client: TestClient, clock: FixedClock
) -> None:
    chat = client.post("/persona/chats", json={}).json()
    [(wall, chat_time)] = rows(
        client, "SELECT wall_time, chat_time FROM events WHERE type = 'chat.started'"
    )
    assert chat_time == wall == chat["created_at"]
    assert clock_events(client) == []  # nothing to record: offset 0

    clock.advance(timedelta(hours=5))
    now = client.get(f"/persona/chats/{chat['chat_id']}/clock").json()
    assert now == {
        "chat_id": chat["chat_id"],
        "chat_time": iso(clock.current - clock.step),  # the read it made
        "offset_s": 0.0,
    }
    assert parse_iso(now["chat_time"]) - parse_iso(wall) >= timedelta(hours=5)


def test_skip_and_set_move_the_clock_through_recorded_events(client: TestClient) -> None:
    sid = client.post("/persona/chats", json={}).json()["chat_id"]

    skipped = move(client, sid, skip="8h")
    [event] = clock_events(client)
    assert event["how"] == "skip" and event["skip_s"] == 8 * 3600
    assert parse_iso(event["chat_time"]) - parse_iso(event["previous"]) == timedelta(hours=8)
    assert skipped["chat_time"] == event["chat_time"] == event["event_chat_time"]
    assert skipped["offset_s"] == event["offset_s"] == offset_of(client, sid) == 8 * 3600

    back = move(client, sid, skip="-1h30m")
    assert parse_iso(back["chat_time"]) - parse_iso(skipped["chat_time"]) < timedelta(hours=-1)
    assert offset_of(client, sid) == back["offset_s"] == pytest.approx(6.5 * 3600, abs=10)

    moved = move(client, sid, set="2031-05-01 09:00")
    assert moved["chat_time"] == "2031-05-01T09:00:00.000000Z"
    event = clock_events(client)[-1]
    assert event["how"] == "set" and event["skip_s"] is None
    assert event["previous"][:10] != "2031-05-01" and event["offset_s"] == offset_of(client, sid)
    # An offset on the input is honoured; chat time is kept in UTC.
    assert move(client, sid, set="2031-05-01T09:00+02:00")["chat_time"].startswith(
        "2031-05-01T07:00:00"
    )
    # Setting an earlier time is an in-story flashback: allowed, the clock runs on from it.
    assert move(client, sid, set="1999-12-31T23:00")["chat_time"].startswith("1999-12-31T23:00")
    assert len(clock_events(client)) == 5
    # Moving the clock is not activity: the rail's order does not change.
    assert rows(client, "SELECT updated_at FROM chats WHERE chat_id = ?", sid)[0][0][:4] == "2026"


def test_a_new_chat_can_start_at_an_in_story_time(client: TestClient) -> None:
    chat = client.post("/persona/chats", json={"chat_time": "1850-03-01T08:00"}).json()
    sid = chat["chat_id"]
    assert chat["created_at"][:4] == "2026"  # the list's bookkeeping is wall time
    [event] = clock_events(client)
    assert event["how"] == "start" and event["chat_time"] == "1850-03-01T08:00:00.000000Z"
    assert event["previous"][:4] == "2026"  # the wall time it started at
    # One transaction: chat.started and its clock are consecutive events.
    kinds = rows(client, "SELECT type FROM events WHERE stream_id = ? ORDER BY seq", f"chat:{sid}")
    assert [k[0] for k in kinds] == ["chat.started", "chat.clock_set"]

    reply = talk(client, "Good morning, the carriage is late.", sid)
    _, chat_time = started_at(client, reply["trace_id"])
    assert chat_time.year == 1850 and chat_time >= datetime(1850, 3, 1, 8, tzinfo=UTC)
    assert client.get(f"/persona/chats/{sid}/clock").json()["chat_time"][:4] == "1850"


# ---- what a turn writes ---------------------------------------------------------------------


def test_the_next_turn_and_all_it_writes_carry_the_moved_chat_time(client: TestClient) -> None:
    sid = talk(client, "My sister Ana lives in Lisbon.")["session_id"]
    moved = move(client, sid, set="2031-05-01T09:00")
    offset = timedelta(seconds=moved["offset_s"])

    reply = talk(client, "Ana sent a postcard from the harbour.", sid)
    times = trace_times(client, reply["trace_id"])
    # Every event of the turn, those on the persona's stream (memories) included, is at
    # wall time + the chat's offset.
    assert {stream.split(":")[0] for _, stream, _, _ in times} == {"chat", "persona"}
    for kind, _, wall, chat_time in times:
        assert parse_iso(chat_time) == parse_iso(wall) + offset, kind
    wall, chat_time = started_at(client, reply["trace_id"])
    assert chat_time.date().isoformat() == "2031-05-01"
    # The turn's `now` is its chat time: the memories it wrote are created then.
    created = rows(
        client, "SELECT created_at, valid_from FROM memory WHERE turn_id = ?", reply["turn_id"]
    )
    assert created and all(c[0][:10] == "2031-05-01" for c in created)
    assert all(c[1] is None or c[1][:10] == "2031-05-01" for c in created)
    # The first turn's memories keep the time they were written at.
    first = rows(
        client,
        "SELECT created_at FROM memory WHERE chat_id = ? AND turn_id != ?",
        sid,
        reply["turn_id"],
    )
    assert first and all(c[0][:4] == "2026" for c in first)


def test_the_clock_advances_with_wall_time_between_turns(
    client: TestClient, clock: FixedClock
) -> None:
    sid = talk(client, "The tide is out this morning.")["session_id"]
    move(client, sid, skip="2d")
    one = talk(client, "We walked to the lighthouse.", sid)
    clock.advance(timedelta(hours=3))
    two = talk(client, "Now the tide is back in.", sid)
    wall1, chat1 = started_at(client, one["trace_id"])
    wall2, chat2 = started_at(client, two["trace_id"])
    assert chat2 - chat1 == wall2 - wall1 >= timedelta(hours=3)
    assert chat1 - wall1 == chat2 - wall2 == timedelta(days=2)


def test_another_chat_keeps_its_own_clock(client: TestClient) -> None:
    moved = talk(client, "Chapter one of the voyage.")["session_id"]
    other = talk(client, "An unrelated question about tea.")["session_id"]
    move(client, moved, set="2031-05-01T09:00")
    reply = talk(client, "More tea, please.", other)
    wall, chat_time = started_at(client, reply["trace_id"])
    assert chat_time == wall
    assert offset_of(client, other) == 0.0


def test_the_chat_list_follows_wall_time_whatever_the_chats_clocks_say(
    client: TestClient,
) -> None:
    future = talk(client, "The year is 2031 in this story.")["session_id"]
    move(client, future, set="2031-05-01T09:00")
    talk(client, "And the robots are polite.", future)
    past = talk(client, "Tell me about the winter of 1850.")["session_id"]
    move(client, past, set="1850-03-01T08:00")
    talk(client, "The carriage is late.", past)

    def order() -> list[str]:
        return [c["chat_id"] for c in client.get("/persona/chats").json()["items"]]

    # The flashback chat was talked to last (wall time): it leads, its 1850 clock aside.
    assert order() == [past, future]
    listed = {c["chat_id"]: c for c in client.get("/persona/chats").json()["items"]}
    assert listed[past]["updated_at"][:4] == listed[future]["updated_at"][:4] == "2026"
    talk(client, "Back to the robots.", future)
    assert order() == [future, past]
    # The persona's idleness (when a sleep is due) is wall time too: the 2031 chat's
    # memories do not date its last activity years ahead.
    engine = engine_of(client)
    figures = engine.store.sync_read(pressure, engine.default_persona_id)
    assert figures.last_activity == listed_updated(client, future)


def listed_updated(client: TestClient, chat_id: str) -> str:
    [chat] = [c for c in client.get("/persona/chats").json()["items"] if c["chat_id"] == chat_id]
    return str(chat["updated_at"])


# ---- recency counts on the chat clock ---------------------------------------------------------


def recency_of_first_memory(tmp_path: Path, name: str, skip: str | None) -> tuple[float, float]:
    """Recency the second turn gives the first turn's exchange, and the expected value."""
    with client_on(tmp_path, name) as c:
        first = talk(c, "My sister Ana lives in Lisbon near the river.")
        sid = first["session_id"]
        if skip is not None:
            move(c, sid, skip=skip)
        second = talk(c, "Where does Ana live?", sid)
        [(payload,)] = rows(
            c,
            "SELECT payload FROM events WHERE trace_id = ? AND type = 'memory.retrieved'",
            second["trace_id"],
        )
        results = json.loads(payload)["results"]
        [hit] = [r for r in results if r["kind"] == "exchange" and "Lisbon" in r["content"]]
        _, now = started_at(c, second["trace_id"])
        half_life = engine_of(c).settings.memory.recency_half_life_h
        return hit["recency"], round(recency(hit["created_at"], now, half_life), 4)


def test_memory_recency_uses_the_chat_clock(tmp_path: Path) -> None:
    plain, plain_expected = recency_of_first_memory(tmp_path, "plain", None)
    skipped, skipped_expected = recency_of_first_memory(tmp_path, "skipped", "30d")
    assert plain == plain_expected and skipped == skipped_expected
    # Thirty days on the chat clock: ten half-lives of 72 h, almost forgotten.
    assert plain > 0.99 and skipped == pytest.approx(2**-10, abs=1e-4)


# ---- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"set": "tomorrow"},
        {"set": "2031-05-01"},
        {"set": "2031-13-01T09:00"},
        {"set": "0000-01-01T00:00"},
        {"set": "2031-05-01T09:00", "skip": "8h"},
        {"set": 2031},
        {"skip": "8x"},
        {"skip": "30m1h"},
        {"skip": True},
        {"skip": -1e13},
        {"skip": None},
        {"set": None, "skip": "8h"},
        {"set": " 2031-05-01T09:00"},
        {"set": "2031-02-29T09:00"},
        {"skip": XSS},
        {"skip": "8h", "extra": 1},
        {"skip": "8h", "user_id": "no spaces allowed"},
    ],
)
def test_nonsense_is_refused_with_422_and_writes_nothing(
    client: TestClient, body: dict[str, Any]
) -> None:
    sid = talk(client, "The orchard in spring.")["session_id"]
    before = event_count(client)
    answer = client.post(f"/persona/chats/{sid}/clock", json=body)
    assert answer.status_code == 422, answer.text
    assert "error" in answer.json()
    assert event_count(client) == before and offset_of(client, sid) == 0.0


def test_a_skip_past_the_year_9999_conflicts_and_a_zero_skip_writes_nothing(
    client: TestClient,
) -> None:
    sid = talk(client, "The orchard in spring.")["session_id"]
    before = event_count(client)
    far = client.post(f"/persona/chats/{sid}/clock", json={"skip": "1000000w"})
    assert far.status_code == 409 and "9999" in far.json()["error"]
    for zero in (0, "0h", "0"):
        assert move(client, sid, skip=zero)["offset_s"] == 0.0
    assert event_count(client) == before and offset_of(client, sid) == 0.0
    # A well-formed time whose UTC instant is outside the years conflicts the same way,
    # when set and when a new chat starts at it.
    for edge in ("0001-01-01T00:00:00+11:05", "9999-12-31T23:59-01:00"):
        moved = client.post(f"/persona/chats/{sid}/clock", json={"set": edge})
        assert moved.status_code == 409 and "9999" in moved.json()["error"], moved.text
        started = client.post("/persona/chats", json={"chat_time": edge})
        assert started.status_code == 409 and "9999" in started.json()["error"], started.text
    assert event_count(client) == before
    assert move(client, sid, set="0001-01-01T00:00:00-11:05")["chat_time"].startswith("0001")
    # Leap days are dates; spaces between the parts of a skip are fine.
    assert move(client, sid, set="2024-02-29T12:00")["chat_time"].startswith("2024-02-29T12:00")
    assert move(client, sid, skip="1h 30m")["chat_time"].startswith("2024-02-29T13:30")


def test_a_new_chat_with_a_bad_start_time_is_refused(client: TestClient) -> None:
    answer = client.post("/persona/chats", json={"chat_time": "the year of the comet"})
    assert answer.status_code == 422
    assert event_count(client) == 1  # persona.created only


def test_unknown_chat_is_404_and_another_users_is_409(client: TestClient) -> None:
    assert client.get("/persona/chats/nope/clock").status_code == 404
    assert client.post("/persona/chats/nope/clock", json={"skip": "1h"}).status_code == 404
    sid = client.post("/persona/chats", json={"user_id": "alice"}).json()["chat_id"]
    before = event_count(client)
    answer = client.post(f"/persona/chats/{sid}/clock", json={"skip": "1h"})
    assert answer.status_code == 409 and "another user" in answer.json()["error"]
    assert client.get(f"/persona/chats/{sid}/clock").status_code == 409
    assert event_count(client) == before
    assert move(client, sid, skip="1h", user_id="alice")["offset_s"] == 3600
    assert client.get(f"/persona/chats/{sid}/clock", params={"user_id": "alice"}).status_code == 200


def test_the_clock_stays_in_years_1_to_9999(client: TestClient, clock: FixedClock) -> None:
    sid = talk(client, "Once upon a time.")["session_id"]
    assert move(client, sid, set="0001-01-01T00:00")["chat_time"] == "0001-01-01T00:00:00.000000Z"
    reply = talk(client, "Long ago indeed.", sid)
    assert trace_times(client, reply["trace_id"])[0][3].startswith("0001-01-01T00:00:")
    move(client, sid, set="9999-12-31T23:59:59")
    clock.advance(timedelta(hours=1))
    reply = talk(client, "The end of time.", sid)
    # Past the last instant the clock stops there instead of breaking every write.
    assert {t[3] for t in trace_times(client, reply["trace_id"])} == {"9999-12-31T23:59:59.999999Z"}
    assert client.post(f"/persona/chats/{sid}/clock", json={"skip": "1s"}).status_code == 409


# ---- the drawer -------------------------------------------------------------------------------


def test_the_drawer_shows_the_clock_and_its_form_moves_it(client: TestClient) -> None:
    sid = talk(client, "The orchard in spring.")["session_id"]
    page = client.get(f"/chats/{sid}").text
    assert f'hx-get="/chats/{sid}/clock"' in page
    assert f'action="/chats/{sid}/clock"' in page and 'name="skip"' in page

    answer = client.post(
        f"/chats/{sid}/clock", content="skip=2d", headers=FORM, follow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"] == f"/chats/{sid}"
    assert clock_events(client)[-1]["skip_s"] == 2 * 86400
    answer = client.post(
        f"/chats/{sid}/clock",
        content="set=2031-05-01T09%3A00",
        headers=FORM,
        follow_redirects=False,
    )
    assert answer.status_code == 303
    shown = client.get(f"/chats/{sid}/clock").text
    assert 'data-testid="chat-time"' in shown and "2031-05-01 09:00" in shown
    # A chat not started yet has no clock to show (and nothing to move).
    assert "first message" in client.get("/chats/chat-notyet/clock").text

    before = event_count(client)
    bad = client.post(f"/chats/{sid}/clock", data={"skip": XSS}, headers=FORM)
    assert bad.status_code == 422
    assert XSS not in bad.text and html.escape(XSS, quote=False)[:20] in bad.text
    assert event_count(client) == before


# ---- the log holds it ---------------------------------------------------------------------------


def test_rebuild_and_verify_agree_after_clock_moves(client: TestClient, tmp_path: Path) -> None:
    sid = talk(client, "My sister Ana lives in Lisbon.")["session_id"]
    move(client, sid, skip="30d")
    talk(client, "Ana visited us last week.", sid)
    move(client, sid, set="1999-12-31T23:00")
    talk(client, "Where does Ana live?", sid)
    client.post("/persona/chats", json={"chat_time": "1850-03-01T08:00"})
    offsets = rows(client, "SELECT chat_id, clock_offset_s FROM chats ORDER BY chat_id")
    settings = engine_of(client).settings
    assert_rebuild_and_verify_agree(settings.db_path, tmp_path / "scratch.db")
    assert rows(client, "SELECT chat_id, clock_offset_s FROM chats ORDER BY chat_id") == offsets
    # `verify --replay` reruns each turn at its turn.started's chat time: the same decisions
    # (memory recency after the 30-day skip included).
    report = asyncio.run(replay_decisions(settings.db_path, settings))
    assert report.ok, [d.render() for d in report.differences]
    assert report.turns == 3


def test_a_clock_move_applies_to_the_events_after_it_in_one_batch(client: TestClient) -> None:
    sid = client.post("/persona/chats", json={}).json()["chat_id"]
    store = engine_of(client).store
    stream = f"chat:{sid}"
    ahead = ChatClockSet(
        chat_id=sid, chat_time="x", previous="x", offset_s=3600.0, how="skip", skip_s=3600.0
    )
    renamed = ChatRenamed(chat_id=sid, title="Later", previous="New chat")
    stored = store.sync_append([NewEvent(ahead, stream, "user"), NewEvent(renamed, stream, "user")])
    for event in stored:
        assert event.chat_time is not None
        assert parse_iso(event.chat_time) - parse_iso(event.wall_time) == timedelta(hours=1)
