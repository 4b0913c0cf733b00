"""The tree of turns: regenerate, edit, rewind (dry run, undo), branch choice and stop,
through the JSON API and its streams, and the invariant that the persona's whole state
follows the active branches (hypothesis)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.scripted import HoldAfter, ScriptedBackend
from persona.projector import Projector, replay_log
from persona.projector.replay import active_digests, projection_digests, verify
from persona.storage.db import connect
from persona.storage.migrations import migrate
from tests.helpers import aread_sse

TREE_MOVES = ("chat.rewound", "rewind.undone", "branch.selected")


@asynccontextmanager
async def api(db: Path) -> AsyncIterator[tuple[Engine, httpx.AsyncClient]]:
    """An engine on `db` (scripted backend, fixed clock) and an HTTP client of its app."""
    from persona.web.app import create_app

    settings_ = Settings(db_path=db, llm={"provider": "scripted"})
    engine = Engine(settings_, backend=ScriptedBackend(), clock=FixedClock())
    await engine.start()
    transport = httpx.ASGITransport(app=create_app(engine=engine))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield engine, client
    finally:
        await engine.stop()


async def say(client: httpx.AsyncClient, chat: str, message: str) -> dict[str, Any]:
    r = await client.post("/persona/chat", json={"message": message, "session_id": chat})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def tree(client: httpx.AsyncClient, chat: str) -> dict[str, Any]:
    r = await client.get(f"/persona/chats/{chat}/tree")
    assert r.status_code == 200, r.text
    return dict(r.json())


def path(t: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The visible conversation: (message, reply) of the active path, root first."""
    on = sorted((x for x in t["turns"] if x["active"]), key=lambda x: x["depth"])
    return [(x["user_message"], x["reply"]) for x in on]


def events(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def replay_active(db: Path, scratch: Path) -> dict[str, str]:
    """Digests of a fresh database that replayed only the events of the turns on the active
    paths (and what belongs to no turn), tree moves left out."""
    out = connect(scratch)
    try:
        migrate(out, rebuild=Projector().rebuild)
        out.execute("ATTACH DATABASE ? AS live", (str(db),))
        out.execute("BEGIN IMMEDIATE")
        out.execute(
            "INSERT INTO main.events SELECT * FROM live.events e"
            f" WHERE e.type NOT IN ({','.join('?' * len(TREE_MOVES))})"
            " AND (e.type = 'chat.started' OR e.trace_id IS NULL"
            "  OR e.trace_id NOT IN (SELECT trace_id FROM live.turns)"
            "  OR e.trace_id IN (SELECT trace_id FROM live.turns WHERE active = 1))"
            " ORDER BY seq",
            TREE_MOVES,
        )
        out.execute("COMMIT")
        out.execute("DETACH DATABASE live")
        out.execute("BEGIN IMMEDIATE")
        replay_log(out)
        out.execute("COMMIT")
        return active_digests(out)
    finally:
        out.close()


def assert_state_follows_branches(db: Path, scratch_dir: Path) -> None:
    """The invariant: what the projections hold of the active paths equals a fresh replay
    of only those paths' events; a replay of the whole log gives the live projections."""
    conn = connect(db)
    try:
        live = active_digests(conn)
        fts = {k: v for k, v in projection_digests(conn).items() if k.endswith("_fts")}
    finally:
        conn.close()
    assert set(fts.values()) == {"consistent"}
    fresh = replay_active(db, scratch_dir / "active.db")
    assert {k: v for k, v in live.items() if v != fresh[k]} == {}
    whole, replayed = verify(db, scratch_dir / "verify.db")
    assert whole == replayed


# ---- regenerate, edit, branch choice --------------------------------------------------------


@pytest.mark.asyncio
async def test_regenerate_an_earlier_reply_starts_a_branch_and_the_old_one_stays(
    tmp_path: Path,
) -> None:
    async with api(tmp_path / "p.db") as (_engine, client):
        first = await say(client, "c1", "hello there")
        await say(client, "c1", "second message")
        third = await say(client, "c1", "third message")
        r = await client.post(f"/persona/chats/c1/turns/{first['turn_id']}/regenerate")
        assert r.status_code == 200, r.text
        again = r.json()
        t = await tree(client, "c1")
        # The visible conversation is the new branch: the regenerated first turn alone.
        assert path(t) == [("hello there", again["reply"])]
        assert t["leaf_turn_id"] == again["turn_id"]
        new = next(x for x in t["turns"] if x["turn_id"] == again["turn_id"])
        assert new["origin"] == "regenerate" and new["variant_of"] == first["turn_id"]
        assert new["siblings"] == [first["turn_id"], again["turn_id"]]
        assert new["sibling_index"] == 2
        # Choosing the first sibling again leads to the newest leaf below it.
        r = await client.post("/persona/chats/c1/branch", json={"turn_id": first["turn_id"]})
        assert r.status_code == 200, r.text
        assert r.json()["leaf_turn_id"] == third["turn_id"]
        t = await tree(client, "c1")
        assert [m for m, _ in path(t)] == ["hello there", "second message", "third message"]
    assert_state_follows_branches(tmp_path / "p.db", tmp_path)


@pytest.mark.asyncio
async def test_edit_answers_the_new_message_and_the_facts_follow_the_branch(
    tmp_path: Path,
) -> None:
    async with api(tmp_path / "p.db") as (engine, client):
        said = await say(client, "c1", "I live in Lisbon.")
        r = await client.post(
            f"/persona/chats/c1/turns/{said['turn_id']}/edit", json={"message": "I live in Porto."}
        )
        assert r.status_code == 200, r.text
        edited = r.json()

        async def current() -> set[str]:
            def read(conn: sqlite3.Connection) -> set[str]:
                return {
                    r[0]
                    for r in conn.execute(
                        "SELECT dst FROM edge WHERE rel = 'lives_in' AND invalid_at IS NULL"
                    )
                }

            return set(await engine.store.read(read))

        # The edit's fact is the persona's; the abandoned turn's fact is gone with it.
        assert await current() == {"Porto"}
        t = await tree(client, "c1")
        assert path(t) == [("I live in Porto.", edited["reply"])]
        r = await client.post("/persona/chats/c1/branch", json={"turn_id": said["turn_id"]})
        assert r.status_code == 200
        assert await current() == {"Lisbon"}
    assert_state_follows_branches(tmp_path / "p.db", tmp_path)


@pytest.mark.asyncio
async def test_retrieval_ignores_memories_of_an_abandoned_branch(tmp_path: Path) -> None:
    async with api(tmp_path / "p.db") as (_engine, client):
        await say(client, "c1", "hello")
        noted = await say(client, "c1", "My boat is called Albatross and it is teal.")
        await client.post("/persona/chats/c1/rewind", json={"turn_id": noted["turn_id"]})
        # Rewind to before the boat: the memory of it is not recalled, nor listed.
        first = (await tree(client, "c1"))["turns"][0]["turn_id"]
        r = await client.post("/persona/chats/c1/rewind", json={"turn_id": first})
        assert r.status_code == 200, r.text
        asked = await say(client, "c1", "What is my boat called, Albatross?")
        recalled = [m["content"] for m in asked["meta"]["memory"]["retrieved"]]
        assert not any("Albatross and it is teal" in c for c in recalled), recalled
        listed = (await client.get("/persona/memories", params={"q": "Albatross"})).json()
        assert all("it is teal" not in m["content"] for m in listed["items"])
        # Back on the branch that said it: recalled again.
        await client.post("/persona/chats/c1/branch", json={"turn_id": noted["turn_id"]})
        asked = await say(client, "c1", "What is my boat called, Albatross?")
        recalled = [m["content"] for m in asked["meta"]["memory"]["retrieved"]]
        assert any("Albatross and it is teal" in c for c in recalled), recalled
    assert_state_follows_branches(tmp_path / "p.db", tmp_path)


# ---- rewind, dry run, undo ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rewind_dry_run_shows_the_impact_and_writes_nothing_then_undo(
    tmp_path: Path,
) -> None:
    db = tmp_path / "p.db"
    async with api(db) as (_engine, client):
        first = await say(client, "c1", "hello")
        await say(client, "c1", "I like jazz.")
        last = await say(client, "c1", "My sister is Ana.")
        before = events(db)
        r = await client.post(
            "/persona/chats/c1/rewind", json={"turn_id": first["turn_id"], "dry_run": True}
        )
        assert r.status_code == 200, r.text
        impact = r.json()["impact"]
        assert r.json()["event_id"] is None and r.json()["dry_run"] is True
        assert [t["user_message"] for t in impact["turns_leaving"]] == [
            "I like jazz.",
            "My sister is Ana.",
        ]
        assert any("jazz" in m["content"] for m in impact["memories_leaving"])
        assert any(e["after"] is None and "jazz" in e["edge_id"] for e in impact["edges"])
        assert events(db) == before  # a dry run writes nothing
        assert (await tree(client, "c1"))["leaf_turn_id"] == last["turn_id"]

        r = await client.post("/persona/chats/c1/rewind", json={"turn_id": first["turn_id"]})
        assert r.status_code == 200 and r.json()["event_id"] is not None
        t = await tree(client, "c1")
        assert [m for m, _ in path(t)] == ["hello"] and t["can_undo_rewind"] is True
        r = await client.post("/persona/chats/c1/rewind/undo")
        assert r.status_code == 200, r.text
        t = await tree(client, "c1")
        assert t["leaf_turn_id"] == last["turn_id"] and t["can_undo_rewind"] is False
        # Nothing left to undo.
        r = await client.post("/persona/chats/c1/rewind/undo")
        assert r.status_code == 409
    assert_state_follows_branches(db, tmp_path)


@pytest.mark.asyncio
async def test_rewind_to_the_root_empties_the_conversation(tmp_path: Path) -> None:
    async with api(tmp_path / "p.db") as (_engine, client):
        await say(client, "c1", "hello")
        r = await client.post("/persona/chats/c1/rewind", json={"turn_id": None})
        assert r.status_code == 200 and r.json()["leaf_turn_id"] is None
        assert path(await tree(client, "c1")) == []
        chat = (await client.get("/persona/chats/c1")).json()
        assert chat["turn_count"] == 0 and chat["snippet"] == ""
        again = await say(client, "c1", "a new start")
        t = await tree(client, "c1")
        assert path(t) == [("a new start", again["reply"])]
        assert next(x for x in t["turns"] if x["active"])["sibling_index"] == 2
    assert_state_follows_branches(tmp_path / "p.db", tmp_path)


# ---- stop -----------------------------------------------------------------------------------


async def stop_streaming(engine: Engine, client: httpx.AsyncClient, chat: str) -> httpx.Response:
    """Send a message whose reply streams "partial words" and then hangs; stop it once
    every word has streamed. Returns the message's own (failed) response."""
    assert isinstance(engine.backend, ScriptedBackend)
    engine.backend.enqueue(HoldAfter("partial words"))
    streamed = ""
    with engine.broadcaster.subscribe(chat) as sub:
        sent = asyncio.create_task(
            client.post("/persona/chat", json={"message": "tell me more", "session_id": chat})
        )
        while streamed != "partial words":
            event = await asyncio.wait_for(sub.get(), 10)
            if event.kind == "delta":
                streamed += event.data["text"]
        r = await client.post(f"/persona/chats/{chat}/stop")
        assert r.status_code == 200, r.text
        return await asyncio.wait_for(sent, 10)


@pytest.mark.asyncio
async def test_stop_keeps_the_partial_reply_truncated_and_it_can_be_regenerated(
    tmp_path: Path,
) -> None:
    db = tmp_path / "p.db"
    async with api(db) as (engine, client):
        await say(client, "c1", "hello")
        answer = await stop_streaming(engine, client, "c1")
        assert answer.status_code == 502 and "stopped" in answer.json()["error"]
        t = await tree(client, "c1")
        stopped = next(x for x in t["turns"] if x["status"] == "stopped")
        assert stopped["truncated"] is True and stopped["reply"] == "partial words"
        assert t["leaf_turn_id"] == stopped["turn_id"]

        # No memory and no state from a stopped reply.
        def written(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(
                    "SELECT COUNT(*) FROM memory WHERE turn_id = ?", (stopped["turn_id"],)
                ).fetchone()[0]
            )

        assert await engine.store.read(written) == 0
        r = await client.post("/persona/chats/c1/stop")
        assert r.status_code == 409  # nothing streams now
        r = await client.post(f"/persona/chats/c1/turns/{stopped['turn_id']}/regenerate")
        assert r.status_code == 200
        t = await tree(client, "c1")
        assert path(t)[-1] == ("tell me more", r.json()["reply"])
        # The next message continues from the leaf; a stopped leaf is continued too.
        await say(client, "c1", "and then?")
    assert_state_follows_branches(db, tmp_path)


@pytest.mark.asyncio
async def test_a_variant_is_refused_while_a_reply_streams(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    async with api(db) as (engine, client):
        first = await say(client, "c1", "hello")
        assert isinstance(engine.backend, ScriptedBackend)
        engine.backend.enqueue(HoldAfter("slow"))
        with engine.broadcaster.subscribe("c1") as sub:
            sent = asyncio.create_task(
                client.post("/persona/chat", json={"message": "go on", "session_id": "c1"})
            )
            while (await asyncio.wait_for(sub.get(), 10)).kind != "delta":
                pass
            before = events(db)
            for url, body in [
                (f"/persona/chats/c1/turns/{first['turn_id']}/regenerate", None),
                (f"/persona/chats/c1/turns/{first['turn_id']}/edit", {"message": "hi"}),
                ("/persona/chats/c1/rewind", {"turn_id": first["turn_id"]}),
                ("/persona/chats/c1/branch", {"turn_id": first["turn_id"]}),
            ]:
                r = await client.post(url, json=body)
                assert r.status_code == 409, (url, r.text)
            assert events(db) == before
            await client.post("/persona/chats/c1/stop")
            await asyncio.wait_for(sent, 10)


# ---- streams and live tabs --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_regenerate_and_edit_stream_start_delta_done_and_every_tab_hears_moves(
    tmp_path: Path,
) -> None:
    async with api(tmp_path / "p.db") as (engine, client):
        first = await say(client, "c1", "hello")
        with engine.broadcaster.subscribe("c1") as tab:
            for url, body in [
                (f"/persona/chats/c1/turns/{first['turn_id']}/regenerate/stream", None),
                (f"/persona/chats/c1/turns/{first['turn_id']}/edit/stream", {"message": "hey"}),
            ]:
                async with client.stream("POST", url, json=body) as r:
                    assert r.status_code == 200
                    kinds = [k async for k, _ in aread_sse(r)]
                assert kinds[0] == "start" and "delta" in kinds and kinds[-1] == "done"
            await client.post("/persona/chats/c1/rewind", json={"turn_id": None})
            seen = []
            while len(seen) < 3:
                event = await asyncio.wait_for(tab.get(), 10)
                if event.kind == "tree":
                    seen.append(event.data["op"])
        assert seen == ["regenerated", "edited", "rewound"]


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unknown_ids_and_other_chats_turns_write_nothing(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    async with api(db) as (_engine, client):
        one = await say(client, "c1", "hello")
        await say(client, "c2", "hi")
        before = events(db)
        cases = [
            ("/persona/chats/nope/rewind", {"turn_id": None}, 404),
            ("/persona/chats/c1/rewind", {"turn_id": "nope"}, 404),
            ("/persona/chats/c2/rewind", {"turn_id": one["turn_id"]}, 409),
            ("/persona/chats/c2/branch", {"turn_id": one["turn_id"]}, 409),
            ("/persona/chats/c1/branch", {"turn_id": "nope"}, 404),
            ("/persona/chats/c1/turns/nope/regenerate", None, 404),
            (f"/persona/chats/c2/turns/{one['turn_id']}/regenerate", None, 409),
            (f"/persona/chats/nope/turns/{one['turn_id']}/edit", {"message": "x"}, 404),
            (f"/persona/chats/c1/turns/{one['turn_id']}/edit", {"message": ""}, 422),
            (f"/persona/chats/c1/turns/{one['turn_id']}/edit", {"message": "a\x07"}, 422),
            (f"/persona/chats/c1/turns/{one['turn_id']}/edit", {"message": " \n "}, 422),
            ("/persona/chats/c1/rewind", {"turn_id": "../x"}, 422),
            ("/persona/chats/c1/rewind", {"turn": None}, 422),
            ("/persona/chats/nope/stop", None, 404),
            ("/persona/chats/c1/stop", None, 409),
            ("/persona/chats/c1/rewind/undo", None, 409),
        ]
        for url, body, status in cases:
            r = await client.post(url, json=body)
            assert r.status_code == status, (url, body, r.text)
            assert "error" in r.json() or "detail" in r.json()
        assert (await client.get("/persona/chats/nope/tree")).status_code == 404
        # An edited message is checked as /persona/chat checks one, in the same words.
        for message, why in [("a\x07", "control character U+0007 at position 1"), (" ", "blank")]:
            for url in ("/persona/chat", f"/persona/chats/c1/turns/{one['turn_id']}/edit"):
                r = await client.post(
                    url,
                    json={"message": message, "session_id": "c1"}
                    if url == "/persona/chat"
                    else {"message": message},
                )
                assert r.status_code == 422 and why in r.text, (url, r.text)
        assert events(db) == before


# ---- the invariant ------------------------------------------------------------------------------

MESSAGES = [
    "I live in Lisbon.",
    "I moved to Porto.",
    "I like jazz.",
    "I don't like jazz anymore.",
    "My sister is Ana.",
    "Thank you, that was lovely!",
    "Tell me about your day.",
    "What do you remember about me?",
]

op = st.one_of(
    st.tuples(st.just("say"), st.integers(0, 1), st.sampled_from(MESSAGES)),
    st.tuples(st.just("regenerate"), st.integers(0, 1), st.integers(0, 30)),
    st.tuples(st.just("edit"), st.integers(0, 1), st.integers(0, 30), st.sampled_from(MESSAGES)),
    st.tuples(st.just("rewind"), st.integers(0, 1), st.integers(-1, 30)),
    st.tuples(st.just("undo"), st.integers(0, 1)),
    st.tuples(st.just("select"), st.integers(0, 1), st.integers(0, 30)),
    st.tuples(st.just("stop"), st.integers(0, 1)),
)


async def run_ops(ops: list[tuple[Any, ...]], db: Path) -> None:
    async with api(db) as (engine, client):
        for step in ops:
            kind, chat = step[0], f"c{step[1]}"
            known = await client.get(f"/persona/chats/{chat}/tree")
            ended = (
                [
                    t["turn_id"]
                    for t in known.json()["turns"]
                    if t["status"] in ("completed", "stopped")
                ]
                if known.status_code == 200
                else []
            )
            picks = kind in ("regenerate", "edit", "rewind", "select")
            pick = ended[step[2] % len(ended)] if ended and picks else None
            if kind == "say":
                await say(client, chat, step[2])
            elif kind == "stop":
                await stop_streaming(engine, client, chat)
            elif kind == "undo" and ended:
                await client.post(f"/persona/chats/{chat}/rewind/undo")
            elif pick is None:
                continue
            elif kind == "regenerate":
                r = await client.post(f"/persona/chats/{chat}/turns/{pick}/regenerate")
                assert r.status_code == 200, r.text
            elif kind == "edit":
                r = await client.post(
                    f"/persona/chats/{chat}/turns/{pick}/edit", json={"message": step[3]}
                )
                assert r.status_code == 200, r.text
            elif kind == "rewind":
                target = None if step[2] < 0 else pick
                r = await client.post(f"/persona/chats/{chat}/rewind", json={"turn_id": target})
                assert r.status_code == 200, r.text
            elif kind == "select":
                r = await client.post(f"/persona/chats/{chat}/branch", json={"turn_id": pick})
                assert r.status_code == 200, r.text


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(ops=st.lists(op, min_size=3, max_size=14))
def test_state_follows_the_active_branches_after_any_sequence(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "p.db"
        asyncio.run(run_ops(ops, db))
        assert_state_follows_branches(db, Path(tmp))
        conn = sqlite3.connect(db)
        try:
            # Every chat's path runs from its leaf to its root, all of it flagged active.
            for chat_id, leaf in conn.execute("SELECT chat_id, head_turn_id FROM chats"):
                flagged = {r[0] for r in conn.execute(
                    "SELECT turn_id FROM turns WHERE chat_id = ? AND active = 1", (chat_id,)
                )}  # fmt: skip
                walked, at = set(), leaf
                while at is not None:
                    walked.add(at)
                    at = conn.execute(
                        "SELECT parent_turn_id FROM turns WHERE turn_id = ?", (at,)
                    ).fetchone()[0]
                assert flagged == walked
        finally:
            conn.close()
    json.dumps(ops)  # the sequence is plain data (hypothesis prints it on failure)
