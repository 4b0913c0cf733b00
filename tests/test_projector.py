"""Projections are pure folds: rebuild and verify reproduce them byte for byte."""

from __future__ import annotations

import pytest
from helpers import run_turn

from persona import cli
from persona.projector.replay import combined, projection_digests, rebuild, verify
from persona.storage import queries
from persona.storage.eventlog import count_events


async def _conversation(engine):
    for i, msg in enumerate(
        [
            "Hi, I'm Sam and I collect old maps",
            "My sister Ana lives in Lisbon",
            "What do you remember about my maps?",
            "I feel a bit lonely tonight",
        ]
    ):
        await run_turn(engine, msg, reward=0.5 if i % 2 else -0.25)
    await run_turn(engine, "A second chat about Lisbon", chat_id="chat-2")


async def test_fold_builds_every_projection(db, engine):
    await _conversation(engine)
    conn = db(engine.settings.db_path)
    counts = {
        t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in (
            "persona",
            "chats",
            "turns",
            "messages",
            "memory",
            "edge",
            "telemetry",
            "chat_state",
        )
    }
    assert counts == {
        "persona": 1,
        "chats": 2,
        "turns": 5,
        "messages": 10,
        # The core, five exchanges, and three facts (name_is Sam, has_sibling Ana, and
        # Ana lives_in Lisbon).
        "memory": 9,
        # The affinity edge and the three fact edges.
        "edge": 4,
        "telemetry": 5,
        "chat_state": 5,
    }
    edge = dict(conn.execute("SELECT * FROM edge WHERE rel = 'talks_with'").fetchone())
    # Five turns, two of them a chat's first (a reward with no reply to judge): three moves.
    assert edge["evidence"] == 3 and edge["src"] == "persona:default"
    turn = conn.execute("SELECT * FROM turns ORDER BY started_seq LIMIT 1").fetchone()
    assert turn["status"] == "completed" and turn["parent_turn_id"] is None
    # Memory rows keep the turn that wrote them.
    written = conn.execute(
        "SELECT turn_id FROM memory WHERE memory_id = ?", (f"ep:{turn['turn_id']}",)
    )
    assert written.fetchone()[0] == turn["turn_id"]
    # The chat's head is its newest completed turn; the path runs back to the first.
    head = conn.execute("SELECT head_turn_id FROM chats WHERE chat_id = 'chat-1'").fetchone()[0]
    assert [t.depth for t in queries.active_path(conn, head, 10)] == [0, 1, 2, 3]
    # The FTS index follows the memory table: its words, and the words around it (the two
    # memories before it in its chat).
    hits = conn.execute(
        "SELECT COUNT(*) FROM memory_fts WHERE memory_fts MATCH 'content:lisbon'"
    ).fetchone()
    # Two exchanges and the two facts stated in "My sister Ana lives in Lisbon".
    assert hits[0] == 4
    rows = conn.execute(
        "SELECT content, context FROM memory WHERE tier = 'L1' ORDER BY rowid"
    ).fetchall()
    assert rows[0]["context"] == ""
    assert rows[2]["context"] == f"{rows[0]['content']}\n{rows[1]['content']}"
    assert rows[3]["context"] == f"{rows[1]['content']}\n{rows[2]['content']}"


async def test_verify_after_a_multi_turn_conversation(db, engine, tmp_path):
    await _conversation(engine)
    live, replayed = verify(engine.settings.db_path, tmp_path / "scratch.db")
    assert live == replayed
    assert set(live) >= {"persona", "memory", "edge", "telemetry", "turns", "messages"}


async def test_rebuild_restores_the_same_bytes(db, engine):
    await _conversation(engine)
    conn = db(engine.settings.db_path)
    before = projection_digests(conn)
    n = count_events(conn)
    seen = []
    assert rebuild(conn, seen.append) == n
    assert len(seen) == n
    assert projection_digests(conn) == before


async def test_cli_verify_reports_both_digests_and_detects_drift(db, engine, monkeypatch, capsys):
    await _conversation(engine)
    monkeypatch.setenv("PERSONA_DB_PATH", str(engine.settings.db_path))
    assert cli.main(["verify", "--quiet"]) == 0
    out = capsys.readouterr().out
    conn = db(engine.settings.db_path)
    digest = combined(projection_digests(conn))
    assert f"live digest:     {digest}" in out and f"replayed digest: {digest}" in out

    conn.execute("UPDATE persona SET name = 'Tampered'")  # projections are not the truth
    assert cli.main(["verify", "--quiet"]) == 1
    assert "DIFF persona" in capsys.readouterr().out

    assert cli.main(["rebuild", "--quiet"]) == 0
    assert conn.execute("SELECT name FROM persona").fetchone()[0] == "Mira"
    assert cli.main(["verify", "--quiet"]) == 0


@pytest.mark.parametrize("table", ["memory", "telemetry", "chat_state"])
async def test_dropping_a_projection_row_is_caught(db, engine, tmp_path, table):
    await run_turn(engine, "remember the blue lighthouse")
    conn = db(engine.settings.db_path)
    conn.execute(f"DELETE FROM {table} WHERE rowid = (SELECT MAX(rowid) FROM {table})")
    live, replayed = verify(engine.settings.db_path, tmp_path / "scratch.db")
    assert live[table] != replayed[table]
