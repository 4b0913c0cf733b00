"""Export and import of a chat: JSONL of its events, a Markdown transcript, and an import
that makes a new chat (every id remapped, nothing overwritten) or writes nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import ReplyGate, assert_rebuild_and_verify_agree, engine_with, run_turn

from persona import chat_io
from persona.engine import Engine
from persona.errors import TurnStopped
from persona.events import ChatRewound
from persona.llm.base import GenOptions
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.context import TurnRequest, Variant
from persona.storage import queries
from persona.storage.eventlog import NewEvent

NDJSON = {"content-type": "application/x-ndjson"}
STAMP = "2026-01-01T00:00:00.000000Z"


def engine_of(client: TestClient) -> Engine:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def count(engine: Engine) -> int:
    return int(
        engine.store.sync_read(lambda c: c.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    )


async def export(engine: Engine, chat_id: str) -> str:
    body = await engine.store.read(chat_io.export_jsonl, chat_id, STAMP)
    assert body is not None
    return body


async def import_(engine: Engine, body: str | bytes, user_id: str = "local", **kw: Any) -> str:
    data = body.encode() if isinstance(body, str) else body
    parsed = chat_io.parse_export(data)
    done = await engine.store.transact(lambda tx: chat_io.import_chat(tx, parsed, user_id, **kw))
    return done.chat_id


async def transcript(engine: Engine, chat_id: str) -> list[tuple[str, str, str]]:
    turns = await engine.store.read(chat_io.active_turns, chat_id)
    return [(t.message, t.reply, t.status) for t in turns]


def tree(conn: sqlite3.Connection, chat_id: str) -> list[tuple[Any, ...]]:
    """The chat's tree with turn ids replaced by their order: comparable across chats."""
    rows = conn.execute(
        "SELECT turn_id, parent_turn_id, user_message, reply, status, active FROM turns"
        " WHERE chat_id = ? ORDER BY started_seq",
        (chat_id,),
    ).fetchall()
    order = {r[0]: i for i, r in enumerate(rows)}
    return [(order.get(r[1]), *r[2:]) for r in rows]


def chat_rows(conn: sqlite3.Connection, chat_id: str) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT * FROM events WHERE stream_id = ? ORDER BY seq", (f"chat:{chat_id}",)
        )
    ]


async def branching_chat(engine: Engine, backend: ScriptedBackend, chat_id: str) -> list[str]:
    """Three turns, the second regenerated (a new branch), one more on it, a rewind."""
    backend.enqueue("The lighthouse is old.", "Gulls nest there.", "At dawn, yes.")
    first = await run_turn(engine, "Tell me about the lighthouse keeper Marta.", chat_id)
    second = await run_turn(engine, "Who lives on the cliffs?", chat_id)
    await run_turn(engine, "Do they sing?", chat_id)
    backend.enqueue("Only the wind lives there.", "Then we walk on.")
    pid = engine.default_persona_id
    request = TurnRequest(
        "Who lives on the cliffs?",
        "local",
        chat_id,
        pid,
        0.0,
        GenOptions(max_tokens=200),
        variant=Variant("regenerate", second["turn_id"], first["turn_id"], ""),
    )
    await (await engine.runner.submit(request)).result
    last = await run_turn(engine, "I like lighthouses.", chat_id)
    rewound = ChatRewound(
        chat_id=chat_id, to_turn_id=first["turn_id"], from_turn_id=last["turn_id"]
    )
    await engine.store.append([NewEvent(rewound, f"chat:{chat_id}", "user")])
    backend.enqueue("The keeper waves.")
    await run_turn(engine, "Back at the start: what does Marta do?", chat_id)
    return [first["turn_id"], second["turn_id"], last["turn_id"]]


# ---- the round trip ----------------------------------------------------------------------------


async def test_round_trip_gives_the_same_tree_and_transcript_under_new_ids(
    tmp_path: Path,
) -> None:
    async with engine_with(tmp_path) as engine:
        backend = engine.backend
        assert isinstance(backend, ScriptedBackend)
        old_turns = await branching_chat(engine, backend, "story")
        backend.enqueue("Elsewhere.")
        await run_turn(engine, "A different chat entirely.", "other")
        body = await export(engine, "story")
        before = await engine.store.read(chat_rows, "story")
        new_chat = await import_(engine, body)

        assert new_chat != "story"
        assert await transcript(engine, new_chat) == await transcript(engine, "story")
        assert len(await transcript(engine, "story")) == 2  # the rewind left a short path
        assert await engine.store.read(tree, new_chat) == await engine.store.read(tree, "story")
        assert await engine.store.read(chat_rows, "story") == before  # the original untouched

        # Every event, trace and turn id of the export is new in the import.
        lines = [json.loads(x) for x in body.splitlines()[1:]]
        old_ids = {x["event_id"] for x in lines} | {x["trace_id"] for x in lines} | set(old_turns)
        again = await export(engine, new_chat)
        assert not old_ids & set(re.findall(r"[0-9a-f]{32}", again))
        assert len(again.splitlines()) == len(body.splitlines())
        # The other chat's events were never part of the export.
        assert '"other"' not in body and "A different chat" not in body

        # Memories follow their turns: each imported one is its original under new ids.
        def memories(conn: sqlite3.Connection, cid: str) -> list[tuple[Any, ...]]:
            rows = conn.execute(
                "SELECT memory_id, content, active FROM memory WHERE chat_id = ?"
                " ORDER BY created_at, content",
                (cid,),
            ).fetchall()
            return [(r[0].split(":")[0], r[1], r[2]) for r in rows]

        old_mem = await engine.store.read(memories, "story")
        assert old_mem and await engine.store.read(memories, new_chat) == old_mem
        assert_rebuild_and_verify_agree(engine.settings.db_path, tmp_path / "scratch.db")


async def test_an_export_imported_elsewhere_is_recalled_in_its_new_chat(tmp_path: Path) -> None:
    async with engine_with(tmp_path, name="home") as home:
        assert isinstance(home.backend, ScriptedBackend)
        await branching_chat(home, home.backend, "story")
        body = await export(home, "story")
    async with engine_with(tmp_path, name="away") as away:
        chat_id = await import_(away, body)
        assert await transcript(away, chat_id) == [
            ("Tell me about the lighthouse keeper Marta.", "The lighthouse is old.", "completed"),
            ("Back at the start: what does Marta do?", "The keeper waves.", "completed"),
        ]
        result = await run_turn(away, "What about Marta and the lighthouse keeper?", chat_id)
        retrieved = result["meta"]["memory"]["retrieved"]
        ids = {r["memory_id"] for r in retrieved}
        mine = await away.store.read(
            lambda c: {
                r[0]
                for r in c.execute("SELECT memory_id FROM memory WHERE chat_id = ?", (chat_id,))
            }
        )
        assert ids & mine, retrieved
        assert_rebuild_and_verify_agree(away.settings.db_path, tmp_path / "scratch.db")


async def test_import_for_another_user_remaps_their_ids_not_their_words(tmp_path: Path) -> None:
    async with engine_with(tmp_path) as engine:
        assert isinstance(engine.backend, ScriptedBackend)
        engine.backend.enqueue("Jazz it is.")
        await run_turn(engine, "I like jazz. My sister Ana lives in Porto.", "story", reward=0.8)
        body = await export(engine, "story")
        new_chat = await import_(engine, body, user_id="bob")
        again = [json.loads(x) for x in (await export(engine, new_chat)).splitlines()]
        assert again[0]["user_id"] == "bob"
        text = json.dumps(again[1:])
        # Not an id of user "local" anywhere; the words said are unchanged.
        assert not re.search(r'"local"|user:local|entity:local:', text)
        assert "user:bob" in text and "I like jazz. My sister Ana lives in Porto." in text
        facts = [e["payload"] for e in again[1:] if e["type"] == "fact.recorded"]
        assert facts and all(f["edge_id"].startswith("default|") for f in facts)
        edges = await engine.store.read(
            lambda c: c.execute("SELECT src, dst FROM edge ORDER BY src, dst").fetchall()
        )
        assert {("user:bob", "jazz"), ("entity:bob:Ana", "Porto")} <= {tuple(e) for e in edges}
        chat = await engine.store.read(queries.get_chat, new_chat)
        assert chat is not None and chat["user_id"] == "bob"
        assert_rebuild_and_verify_agree(engine.settings.db_path, tmp_path / "scratch.db")


def test_remap_touches_ids_not_words() -> None:
    long_id = "a" * 32
    remap = chat_io.Remap(
        long={long_id: "b" * 32}, chat=("default", "chat-new"), persona=("p", "q"), user=("u", "v")
    )
    assert remap.value({"chat_id": "default", "message": "default"}) == {
        "chat_id": "chat-new",
        "message": "default",
    }
    assert remap.string(f"ep:{long_id}", "memory_id") == f"ep:{'b' * 32}"
    assert remap.string(f"fa:{long_id}:2", "x") == f"fa:{'b' * 32}:2"
    assert remap.string(f"x{long_id}", "x") == f"x{long_id}"  # not a whole token
    assert remap.string("p|entity:u:Ana|likes|jazz", "edge_id") == "q|entity:v:Ana|likes|jazz"
    assert remap.string("p|user:u|likes|u", "edge_id") == "q|user:v|likes|u"
    assert remap.value({"witnesses": ["u"], "baselines": {"u": {"calm": 0.5}}}) == {
        "witnesses": ["v"],
        "baselines": {"v": {"calm": 0.5}},
    }
    assert remap.value({"text": "u", "user_id": "u", "owner_persona_id": "p"}) == {
        "text": "u",
        "user_id": "v",
        "owner_persona_id": "q",
    }


# ---- refused files write nothing ---------------------------------------------------------------


def _mangle(body: str, case: str) -> bytes:
    lines = body.splitlines()
    header, events = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    if case == "empty":
        return b""
    if case == "not utf-8":
        return body.encode() + b"\xff\n"
    if case == "bad json line":
        lines[3] = lines[3][:-1]
    elif case == "unknown type":
        events[2]["type"] = "turn.vanished"
    elif case == "bad payload":
        events[2]["payload"].pop("chat_id")
    elif case == "wrong header":
        header["format"] = "something-else"
    elif case == "newer version":
        header["version"] = 2
    elif case == "count mismatch":
        header["events"] += 1
    elif case == "two chats":
        events[2]["payload"]["chat_id"] = "elsewhere"
        assert events[2]["type"] == "turn.started"
    elif case == "foreign turn":
        mine = next(e for e in events if e["stream"] == "persona" and "turn_id" in e["payload"])
        mine["payload"]["turn_id"] = "f" * 32
    elif case == "memory id without its turn":
        written = next(e for e in events if e["type"] == "memory.written")
        written["payload"]["memory_id"] = "mem-1"
    elif case == "foreign trace":
        mine = next(e for e in events if e["stream"] == "persona")
        mine["trace_id"] = "f" * 32
    elif case == "second chat.started":
        events.insert(1, {**events[0], "event_id": "e" * 32})
        header["events"] += 1
    elif case == "duplicate event id":
        events[3]["event_id"] = events[2]["event_id"]
    elif case == "unknown field":
        events[1]["colour"] = "blue"
    elif case == "no header":
        return ("\n".join(lines[1:]) + "\n").encode()
    if case != "bad json line":
        lines = [json.dumps(header), *(json.dumps(e) for e in events)]
    return ("\n".join(lines) + "\n").encode()


REFUSALS = {
    "empty": (400, "empty"),
    "not utf-8": (400, "not UTF-8"),
    "bad json line": (400, "line 4: not valid JSON"),
    "unknown type": (422, "line 4: unknown event type 'turn.vanished'"),
    "bad payload": (422, "line 4: bad"),
    "wrong header": (422, "line 1: not a persona-chat export"),
    "newer version": (422, "line 1: export version 2"),
    "count mismatch": (422, "announces"),
    "two chats": (422, "line 4: not an event of chat 'tale'"),
    "foreign turn": (422, f"names turn '{'f' * 32}', not one of this chat"),
    "foreign trace": (422, "a persona event outside the chat's turns"),
    "memory id without its turn": (422, "memory id 'mem-1' names no turn"),
    "second chat.started": (422, "line 3: a second chat.started"),
    "duplicate event id": (422, "line 5: event id"),
    "unknown field": (422, "line 3: bad event: colour"),
    "no header": (422, "line 1: not a persona-chat export"),
}


@pytest.fixture
def exported(client: TestClient) -> str:
    for message in ("The orchard in spring.", "I like pears.", "And the old well?"):
        assert client.post(
            "/persona/chat", json={"message": message, "session_id": "tale"}
        ).is_success
    answer = client.get("/persona/chats/tale/export")
    assert answer.status_code == 200, answer.text
    return answer.text


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_malformed_file_is_refused_with_its_line_and_writes_nothing(
    client: TestClient, exported: str, case: str
) -> None:
    before = count(engine_of(client))
    answer = client.post("/persona/chats/import", content=_mangle(exported, case), headers=NDJSON)
    status, words = REFUSALS[case]
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"], answer.json()
    if case not in ("empty", "not utf-8", "count mismatch"):
        line = answer.json()["detail"][0]["line"]
        assert answer.json()["error"].startswith(f"line {line}: ")
    assert count(engine_of(client)) == before


def test_a_file_over_the_cap_is_refused_413_and_writes_nothing(
    client: TestClient, exported: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = count(engine_of(client))
    monkeypatch.setattr(chat_io, "MAX_IMPORT_BYTES", len(exported.encode()) - 1)
    answer = client.post("/persona/chats/import", content=exported.encode(), headers=NDJSON)
    assert answer.status_code == 413 and "over" in answer.json()["error"]
    monkeypatch.setattr(chat_io, "MAX_IMPORT_BYTES", len(exported.encode()))
    assert client.post("/persona/chats/import", content=exported, headers=NDJSON).status_code == 201
    assert count(engine_of(client)) > before


def test_an_unknown_persona_is_refused_and_writes_nothing(
    client: TestClient, exported: str
) -> None:
    before = count(engine_of(client))
    moved = exported.replace('"default"', '"ghost"')
    answer = client.post("/persona/chats/import", content=moved, headers=NDJSON)
    assert answer.status_code == 409 and "persona_id" in answer.json()["error"]
    answer = client.post(
        "/persona/chats/import?persona_id=nobody", content=exported, headers=NDJSON
    )
    assert answer.status_code == 404
    answer = client.post(
        "/persona/chats/import", content=exported, headers={"content-type": "text/plain"}
    )
    assert answer.status_code == 415
    assert count(engine_of(client)) == before
    # Named explicitly, an existing persona takes the chat in.
    answer = client.post("/persona/chats/import?persona_id=default", content=moved, headers=NDJSON)
    assert answer.status_code == 201, answer.text


# ---- the HTTP API ------------------------------------------------------------------------------


def test_export_and_import_over_http(client: TestClient, exported: str) -> None:
    answer = client.get("/persona/chats/tale/export")
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    assert answer.headers["content-disposition"] == 'attachment; filename="tale.jsonl"'
    header = json.loads(exported.splitlines()[0])
    assert header["format"] == "persona-chat" and header["version"] == 1
    assert header["events"] == len(exported.splitlines()) - 1
    made = client.post("/persona/chats/import", content=exported, headers=NDJSON)
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["turns"] == 3 and body["events"] == header["events"]
    md_old = client.get("/persona/chats/tale/export.md").text
    md_new = client.get(f"/persona/chats/{body['chat_id']}/export.md").text
    # The same transcript; only the line saying when it was exported differs.
    assert md_new.splitlines()[3:] == md_old.splitlines()[3:] and "I like pears." in md_new
    listed = client.get("/persona/chats").json()["items"]
    assert body["chat_id"] in [c["chat_id"] for c in listed]


def test_unknown_or_foreign_chats_are_refused(client: TestClient, exported: str) -> None:
    for path in ("/persona/chats/nope/export", "/persona/chats/nope/export.md"):
        assert client.get(path).status_code == 404
    for path in ("/persona/chats/tale/export", "/persona/chats/tale/export.md"):
        answer = client.get(path, params={"user_id": "mallory"})
        assert answer.status_code == 409 and "another user" in answer.json()["error"]


def test_the_import_endpoints_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    imp = paths["/persona/chats/import"]["post"]
    assert "application/x-ndjson" in imp["requestBody"]["content"]
    assert {"201", "404", "409", "413", "415", "422"} <= set(imp["responses"])
    assert (
        "application/x-ndjson"
        in paths["/persona/chats/{chat_id}/export"]["get"]["responses"]["200"]["content"]
    )
    assert (
        "text/markdown"
        in paths["/persona/chats/{chat_id}/export.md"]["get"]["responses"]["200"]["content"]
    )


async def test_markdown_marks_a_stopped_reply_truncated(tmp_path: Path) -> None:
    async with engine_with(tmp_path) as engine:
        assert isinstance(engine.backend, ScriptedBackend)
        engine.backend.enqueue("A calm sea.", "never shown")
        await run_turn(engine, "How is the sea?", "sea")
        gate = ReplyGate(engine.backend)
        pid = engine.default_persona_id
        request = TurnRequest("And tomorrow?", "local", "sea", pid, 0.0, GenOptions(max_tokens=50))
        handle = await engine.runner.submit(request)
        await asyncio.to_thread(gate.reached.wait, 30)
        engine.runner.stop("sea")
        with contextlib.suppress(TurnStopped):
            await handle.result
        gate.open()
        md = await engine.store.read(chat_io.transcript_markdown, "sea", STAMP)
        assert md is not None
        assert md.startswith("# How is the sea?\n")
        assert "**User:**\n\nHow is the sea?\n" in md and "A calm sea." in md
        assert "**User:**\n\nAnd tomorrow?\n" in md
        assert md.count("*(truncated)*") == 1
        body = await export(engine, "sea")
        new_chat = await import_(engine, body)
        assert await transcript(engine, new_chat) == await transcript(engine, "sea")
        assert (await transcript(engine, new_chat))[-1][2] == "stopped"
