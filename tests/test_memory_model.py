"""The memory model: tiers, who said what, witnesses, facts and edges, tombstones, pins,
accesses, and the upcast of memories written as transcripts."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from helpers import run_turn

from persona.events import (
    FactRecorded,
    MemoryDeleted,
    MemoryPinned,
    MemoryWritten,
    Utterance,
)
from persona.events.memory import _memory_written_v1_to_v2
from persona.pipeline.notes import said_note
from persona.projector.replay import rebuild, verify
from persona.storage.db import connect
from persona.storage.eventlog import NewEvent, read_events


def _rows(engine, sql, *args):  # type: ignore[no-untyped-def]
    with closing(connect(engine.settings.db_path)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args).fetchall()]


def _events(engine, kind):  # type: ignore[no-untyped-def]
    with closing(connect(engine.settings.db_path)) as conn:
        return [e.payload for e in read_events(conn) if isinstance(e.payload, kind)]


# ---- what a turn writes -----------------------------------------------------------------


async def test_an_exchange_is_stored_as_who_said_what_with_its_witness(engine):
    result = await run_turn(engine, "My sister Ana moved to Lisbon", user_id="sam")
    written = next(p for p in _events(engine, MemoryWritten) if p.kind == "exchange")
    assert written.tier == "L1" and written.memory_id == f"ep:{result['turn_id']}"
    assert written.content == f"My sister Ana moved to Lisbon\n{result['reply']}"
    assert [(u.role, u.name) for u in written.said] == [("user", "User"), ("persona", "Mira")]
    assert written.witnesses == ["sam"] and not written.shared
    assert written.entities == ["Ana", "Lisbon"]
    assert written.importance_score == result["meta"]["perception"]["importance"]
    (row,) = _rows(
        engine, "SELECT user_id FROM memory_witness WHERE memory_id = ?", written.memory_id
    )
    assert row["user_id"] == "sam"


def test_a_transcript_memory_is_upcast_to_who_said_what():
    v1 = {
        "memory_id": "ep:t1",
        "persona_id": "p",
        "kind": "episodic",
        "content": "User said: I have a dog\nMira replied: Lovely!",
        "importance": 0.5,
    }
    up = MemoryWritten.model_validate(_memory_written_v1_to_v2(v1))
    assert (up.tier, up.kind, up.content) == ("L1", "exchange", "I have a dog\nLovely!")
    assert up.said == [
        Utterance(role="user", name="User", text="I have a dog"),
        Utterance(role="persona", name="Mira", text="Lovely!"),
    ]
    core = _memory_written_v1_to_v2({**v1, "kind": "core", "content": "genesis"})
    assert (core["tier"], core["kind"], core["content"]) == ("L3", "core", "genesis")


def test_the_prompt_note_comes_from_who_said_what():
    said = [
        Utterance(role="user", name="User", text="I have a dog called Biscuit."),
        Utterance(role="persona", name="Mira", text="Biscuit is a great name!"),
    ]
    assert said_note(said) == "The user said they have a dog called Biscuit."
    other = [Utterance(role="other", name="Ana", text="I started painting. It calms me.")]
    assert said_note(other) == "Ana said: I started painting. It calms me."


# ---- who may recall it ------------------------------------------------------------------


async def test_a_memory_is_recalled_only_where_its_witness_is(engine):
    told = await run_turn(
        engine, "My locker code is 4471 at the harbour gym", user_id="ann", chat_id="a"
    )
    other = await run_turn(
        engine, "what is the harbour gym locker code?", user_id="bob", chat_id="b"
    )
    assert other["meta"]["memory"]["retrieved"] == []
    mine = await run_turn(
        engine, "what is the harbour gym locker code?", user_id="ann", chat_id="c"
    )
    assert [m["memory_id"] for m in mine["meta"]["memory"]["retrieved"]] == [
        f"ep:{told['turn_id']}"
    ]


async def test_a_shared_memory_is_recalled_with_anyone(engine):
    lore = MemoryWritten(
        memory_id="lore:1",
        persona_id="default",
        tier="L1",
        kind="utterance",
        content="The lighthouse on the hill was built in 1888.",
        importance=0.5,
        shared=True,
    )
    await engine.store.append([NewEvent(payload=lore, stream_id="persona:default", actor="user")])
    meta = (await run_turn(engine, "when was the lighthouse built?", user_id="zoe"))["meta"]
    assert [m["memory_id"] for m in meta["memory"]["retrieved"]] == ["lore:1"]


# ---- tombstones, pins, accesses ---------------------------------------------------------


async def test_a_deleted_memory_is_never_recalled_even_after_a_rebuild(engine, tmp_path):
    told = await run_turn(engine, "I keep a spare key under the blue flowerpot", chat_id="a")
    memory_id = f"ep:{told['turn_id']}"
    gone = MemoryDeleted(memory_id=memory_id, persona_id="default", reason="private")
    await engine.store.append([NewEvent(payload=gone, stream_id="persona:default", actor="user")])
    meta = (await run_turn(engine, "where is the spare key?", chat_id="b"))["meta"]
    assert memory_id not in {m["memory_id"] for m in meta["memory"]["retrieved"]}
    with closing(connect(engine.settings.db_path)) as conn:
        rebuild(conn)
    (row,) = _rows(engine, "SELECT tombstone FROM memory WHERE memory_id = ?", memory_id)
    assert row["tombstone"] == 1
    meta = (await run_turn(engine, "the spare key, where?", chat_id="c"))["meta"]
    assert memory_id not in {m["memory_id"] for m in meta["memory"]["retrieved"]}
    live, replayed = verify(engine.settings.db_path, tmp_path / "scratch.db")
    assert live == replayed


async def test_a_pinned_memory_is_always_in_the_identity_and_unpinning_ends_it(engine, backend):
    told = await run_turn(engine, "I am allergic to peanuts", chat_id="a")
    memory_id = f"ep:{told['turn_id']}"
    pin = MemoryPinned(memory_id=memory_id, persona_id="default", pinned=True)
    await engine.store.append([NewEvent(payload=pin, stream_id="persona:default", actor="user")])
    meta = (await run_turn(engine, "hello", chat_id="b"))["meta"]
    system = backend.calls[-1][0].content
    assert "You always keep in mind:\n- The user said they are allergic to peanuts." in system
    assert meta["memory"]["pinned"] == [memory_id]
    # Pinned (L3) memories are in context already: never also a retrieved candidate.
    meta = (await run_turn(engine, "peanuts", chat_id="b"))["meta"]
    assert memory_id not in {m["memory_id"] for m in meta["memory"]["retrieved"]}
    unpin = MemoryPinned(memory_id=memory_id, persona_id="default", pinned=False)
    await engine.store.append([NewEvent(payload=unpin, stream_id="persona:default", actor="user")])
    await run_turn(engine, "hello again", chat_id="b")
    assert "allergic" not in backend.calls[-1][0].content


async def test_using_a_memory_records_its_access(engine, backend):
    backend.enqueue("Lovely.", "Forty.", "Still forty.")
    told = await run_turn(engine, "The orchard has forty pear trees", chat_id="a")
    memory_id = f"ep:{told['turn_id']}"
    # Asked twice in one chat: the first question's own memory is in the history there,
    # so the orchard memory is the one used both times.
    for question in ("how many pear trees in the orchard?", "and the orchard pear trees?"):
        meta = (await run_turn(engine, question, chat_id="b"))["meta"]
    assert memory_id in meta["state"]["workspace"]
    (row,) = _rows(
        engine, "SELECT access_count, last_accessed FROM memory WHERE memory_id = ?", memory_id
    )
    assert row["access_count"] == 2 and row["last_accessed"] is not None


# ---- facts and edges --------------------------------------------------------------------


def _edges(engine):  # type: ignore[no-untyped-def]
    rows = _rows(engine, "SELECT rel, dst, invalid_at FROM edge WHERE src = 'user:local'")
    return {(r["rel"], r["dst"]): r["invalid_at"] is None for r in rows}


async def test_a_fact_becomes_a_fact_memory_and_an_edge(engine):
    result = await run_turn(engine, "I love jazz. My name is Sam.")
    facts = _events(engine, FactRecorded)
    assert [(f.rel, f.dst) for f in facts] == [("likes", "jazz"), ("name_is", "Sam")]
    assert facts[0].memory_id == f"fa:{result['turn_id']}:0"
    kinds = [p.kind for p in _events(engine, MemoryWritten) if p.turn_id == result["turn_id"]]
    assert kinds == ["exchange", "fact", "fact"]
    assert _edges(engine) == {("likes", "jazz"): True, ("name_is", "Sam"): True}


async def test_a_contradiction_retires_only_the_edge_with_its_subject_and_relation(engine):
    await run_turn(engine, "I live in Lisbon. I love jazz. I love blues.")
    await run_turn(engine, "I moved to Porto.")
    edges = _edges(engine)
    assert edges[("lives_in", "Lisbon")] is False and edges[("lives_in", "Porto")] is True
    assert edges[("likes", "jazz")] is True and edges[("likes", "blues")] is True
    await run_turn(engine, "I don't like jazz anymore.")
    edges = _edges(engine)
    assert edges[("likes", "jazz")] is False and edges[("not_likes", "jazz")] is True
    assert edges[("likes", "blues")] is True  # another object of a many-valued relation
    # Retired, never deleted: the old rows are all still there.
    assert len(edges) == 5


async def test_a_question_states_no_fact(engine):
    await run_turn(engine, "Do you like jazz?")
    assert _events(engine, FactRecorded) == []


# ---- the workspace competition ----------------------------------------------------------


async def test_only_k_contenders_win_the_workspace(tmp_path):
    from helpers import engine_with

    lines = (
        "I flew kites at the beach",
        "kites need wind and strong string",
        "my uncle builds kites from paper",
        "kites were invented long ago in China",
    )
    async with engine_with(tmp_path, gating={"workspace_k": 2}) as engine:
        engine.backend.enqueue(*(["Nice."] * 5))
        for i, line in enumerate(lines):
            await run_turn(engine, line, chat_id=f"k{i}")
        meta = (await run_turn(engine, "kites", chat_id="q"))["meta"]
    memories = [c for c in meta["decision_candidates"] if c["kind"] == "memory"]
    assert len(memories) == 4
    assert sum(c["selected"] for c in memories) == 2
    assert meta["competition"]["k"] == 2 and len(meta["competition"]["winners"]) == 2
    lost = [c for c in memories if not c["selected"]]
    assert {c["reason"] for c in lost} == {"lost the workspace competition"}


async def test_a_fact_about_the_user_competes_and_reaches_the_prompt(engine, backend):
    await run_turn(engine, "I live in Porto.", chat_id="a")
    meta = (await run_turn(engine, "Is Porto nice in winter?", chat_id="b"))["meta"]
    edge = next(c for c in meta["decision_candidates"] if c["kind"] == "edge")
    assert edge["id"] == "default|user:local|lives_in|porto" and edge["selected"]
    assert edge["text"] == "The user lives in Porto."
    # Salience 0.2 + 0.6 x (the message names the whole object).
    assert meta["competition"]["salience"][edge["id"]] == 0.8
    assert "- The user lives in Porto." in backend.calls[-1][-2].content


async def test_a_strong_emotion_competes_as_a_note(engine):
    meta = (await run_turn(engine, "I am so sad and lonely tonight"))["meta"]
    emotion = next(c for c in meta["decision_candidates"] if c["kind"] == "emotion")
    strength = max(meta["perception"]["appraisal"]["emotions"].values())
    assert strength >= 0.3
    assert meta["competition"]["salience"][emotion["id"]] == round(strength, 4)
    assert emotion["text"].startswith("The user seems to feel ")


async def test_near_duplicates_inhibit_each_other(engine, backend):
    backend.enqueue("Nice.", "Nice.", "Nice.")
    await run_turn(engine, "my red kite flies high over the harbour", chat_id="a")
    await run_turn(engine, "my red kite flies high over the harbour today", chat_id="b")
    meta = (await run_turn(engine, "red kite harbour", chat_id="c"))["meta"]
    assert meta["competition"]["inhibitions"] > 0
    first, last = meta["competition"]["trace"][0], meta["competition"]["trace"][-1]
    weaker = min(first, key=lambda k: (first[k], k))
    assert last[weaker] < first[weaker]  # pushed down by its stronger twin


# ---- when the persona sleeps ------------------------------------------------------------


async def _garden_talk(engine) -> None:  # type: ignore[no-untyped-def]
    engine.backend.enqueue(*(["Lovely."] * 4))
    for line in (
        "My garden has tomatoes this summer",
        "The tomatoes in my garden are ripening",
        "I water the garden tomatoes every morning",
        "Garden tomatoes taste better than shop ones",
    ):
        await run_turn(engine, line, chat_id="g")


async def test_context_pressure_triggers_a_sleep(tmp_path):
    from helpers import engine_with

    async with engine_with(tmp_path, sleep={"pressure_l1": 3, "check_every_s": 0}) as engine:
        await _garden_talk(engine)
        report = await engine.maybe_sleep("default")
        assert report is not None and report.trigger == "pressure" and report.digests >= 1
        assert await engine.maybe_sleep("default") is None  # nothing new to consolidate


async def test_an_idle_spell_triggers_one_sleep(tmp_path):
    from datetime import timedelta

    from helpers import engine_with

    async with engine_with(tmp_path, sleep={"check_every_s": 0}) as engine:
        await _garden_talk(engine)
        assert await engine.maybe_sleep("default") is None  # not idle yet
        engine.store.clock.advance(timedelta(hours=6))
        report = await engine.maybe_sleep("default")
        assert report is not None and report.trigger == "inactivity"
        # The same idle spell: no second sleep, even though a note may be left ungrouped.
        assert await engine.maybe_sleep("default") is None


async def test_the_running_server_checks_for_a_due_sleep_on_its_own(tmp_path):
    import asyncio

    from helpers import engine_with

    from persona.events import MemoryConsolidated

    async with engine_with(tmp_path, sleep={"pressure_l1": 3, "check_every_s": 0.05}) as engine:
        await _garden_talk(engine)
        for _ in range(400):  # a hang guard, not a time bound: it stops at the first sleep
            if _events(engine, MemoryConsolidated):
                break
            await asyncio.sleep(0.05)
        (diff,) = _events(engine, MemoryConsolidated)
    assert diff.trigger == "pressure" and diff.digests


async def test_a_users_memory_is_found_behind_many_better_matches_of_others(tmp_path):
    from helpers import engine_with

    async with engine_with(tmp_path, memory={"fts_candidates": 1}) as engine:
        mine = await run_turn(engine, "my kite is green", user_id="bob", chat_id="b")
        for i in range(6):  # better matches (the word twice), none of them Bob's
            await run_turn(engine, f"kite kite day {i}", user_id="ann", chat_id=f"a{i}")
        meta = (await run_turn(engine, "kite", user_id="bob", chat_id="q"))["meta"]
    # The first look (4 x 1 rows) holds only Ann's; the wider one finds Bob's.
    assert [m["memory_id"] for m in meta["memory"]["retrieved"]] == [f"ep:{mine['turn_id']}"]


# ---- optional dense vectors -------------------------------------------------------------


async def test_dense_vectors_join_retrieval_and_replay_bit_for_bit(tmp_path):
    from helpers import engine_with

    from persona.decision_replay import replay_decisions
    from persona.events import MemoryEmbedded

    async with engine_with(tmp_path, memory={"embedding_model": "hash-64"}) as engine:
        engine.backend.enqueue("Nice.", "Nice.", "Nice.")
        told = await run_turn(engine, "my green kite flew over the harbour", chat_id="a")
        await engine.embed_pending("default")  # what the after-turn task does
        vectors = _events(engine, MemoryEmbedded)
        assert [v.memory_id for v in vectors] == [f"ep:{told['turn_id']}"]
        assert await engine.embed_pending("default") == 0  # nothing left to embed
        meta = (await run_turn(engine, "the kite over the harbour", chat_id="b"))["meta"]
        top = meta["memory"]["retrieved"][0]
        assert top["memory_id"] == f"ep:{told['turn_id']}"
        assert 0.0 < top["dense"] <= 1.0
        # The dense part joins the score: (lexical·(1 + 0.5·names) + 1.0·dense + ...) / 2.54.
        expected = (
            top["lexical"] * (1 + 0.5 * top["entity"])
            + top["dense"]
            + 0.02 * top["recency"]
            + 0.02 * top["importance"]
        ) / 2.54
        assert top["score"] == pytest.approx(expected, abs=2e-4)
        report = await replay_decisions(engine.settings.db_path, engine.settings)
    assert report.ok, [d.render() for d in report.differences]


async def test_a_failed_embedding_leaves_retrieval_lexical_and_the_turn_whole(tmp_path):
    from helpers import engine_with

    from persona.llm.base import LLMError

    async with engine_with(tmp_path, memory={"embedding_model": "hash-64"}) as engine:
        told = await run_turn(engine, "my green kite flew over the harbour", chat_id="a")

        async def broken(texts, model):  # type: ignore[no-untyped-def]
            raise LLMError("embedding server down")

        engine.backend.embed = broken  # type: ignore[method-assign]
        assert await engine.embed_pending("default") == 0
        result = await run_turn(engine, "the kite over the harbour", chat_id="b")
    retrieved = result["meta"]["memory"]["retrieved"]
    assert retrieved[0]["memory_id"] == f"ep:{told['turn_id']}" and retrieved[0]["dense"] is None
    assert result["reply"]


# ---- the write path is off the streaming path -------------------------------------------


async def test_memory_writes_come_after_the_reply_never_before_its_first_token(engine, backend):
    await run_turn(engine, "The orchard has forty pear trees", chat_id="a")
    inner = backend._stream
    seen_at_first_token: list[str] = []

    async def watched(messages, options, usage):  # type: ignore[no-untyped-def]
        first = True
        async for piece in inner(messages, options, usage):
            if first:  # what the log holds when the first token goes out
                seen_at_first_token.extend(
                    r["type"] for r in _rows(engine, "SELECT type FROM events ORDER BY seq")
                )
                first = False
            yield piece

    backend._stream = watched  # type: ignore[method-assign]
    before = len(_rows(engine, "SELECT type FROM events"))
    result = await run_turn(engine, "I live in Porto. How many pear trees?", chat_id="b")
    new_at_first_token = seen_at_first_token[before:]
    # The decisions before the reply are logged by then; the reply itself is not.
    assert "workspace.selected" in new_at_first_token
    assert "reply.completed" not in new_at_first_token
    assert "memory.written" not in new_at_first_token
    assert "fact.recorded" not in new_at_first_token
    assert "memory.accessed" not in new_at_first_token
    with closing(connect(engine.settings.db_path)) as conn:
        types = [e.type for e in read_events(conn, trace_id=result["trace_id"])]
    reply = types.index("reply.completed")
    for kind in ("memory.accessed", "memory.written", "fact.recorded"):
        assert types.index(kind) > reply
    assert types[-1] == "turn.completed"


async def test_a_japanese_memory_is_found_by_its_bigrams(engine, backend):
    backend.enqueue("いいですね。", "うん。", "そうですね。")
    told = await run_turn(engine, "先週、上野の美術館でモネの絵を見ました。", chat_id="a")
    await run_turn(engine, "今日は雨です。", chat_id="b")
    meta = (await run_turn(engine, "美術館の絵はどうだった？", chat_id="c"))["meta"]
    retrieved = meta["memory"]["retrieved"]
    assert retrieved and retrieved[0]["memory_id"] == f"ep:{told['turn_id']}"
    assert all("雨" not in m["content"] for m in retrieved)
    (row,) = _rows(engine, "SELECT cjk FROM memory WHERE memory_id = ?", f"ep:{told['turn_id']}")
    assert "美術" in row["cjk"].split() and "術館" in row["cjk"].split()


# ---- found in review ----------------------------------------------------------------------


async def test_a_fact_told_to_one_persona_never_touches_anothers_edges(engine, tmp_path):
    from pathlib import Path

    from persona.events import PersonaCreated

    other = PersonaCreated(persona_id="other", name="Oto", description="", genesis="", traits={})
    await engine.store.append([NewEvent(payload=other, stream_id="persona:other", actor="test")])
    await run_turn(engine, "I live in Lisbon.", chat_id="a")
    await run_turn(engine, "I moved to Porto.", chat_id="b", persona_id="other")
    rows = _rows(engine, "SELECT persona_id, dst, invalid_at FROM edge WHERE rel = 'lives_in'")
    assert {(r["persona_id"], r["dst"], r["invalid_at"] is None) for r in rows} == {
        ("default", "Lisbon", True),
        ("other", "Porto", True),
    }
    assert Path(tmp_path).exists()


async def test_deleting_an_exchange_deletes_its_facts_and_retires_their_edges(engine, backend):
    told = await run_turn(engine, "I live in Lisbon.", chat_id="a")
    gone = MemoryDeleted(memory_id=f"ep:{told['turn_id']}", persona_id="default")
    await engine.store.append([NewEvent(payload=gone, stream_id="persona:default", actor="user")])
    (fact,) = _rows(engine, "SELECT tombstone FROM memory WHERE kind = 'fact'")
    assert fact["tombstone"] == 1
    assert _edges(engine) == {("lives_in", "Lisbon"): False}
    meta = (await run_turn(engine, "Where do I live, Lisbon?", chat_id="b"))["meta"]
    assert not [c for c in meta["decision_candidates"] if c["kind"] == "edge"]
    assert "Lisbon." not in backend.calls[-1][-2].content.replace("Lisbon?", "")


async def test_a_chat_belongs_to_its_user(engine):
    from persona.errors import ChatConflict

    await run_turn(engine, "My secret code is zebra42.", chat_id="a", user_id="alice")
    with pytest.raises(ChatConflict, match="another user"):
        await run_turn(engine, "what is the code?", chat_id="a", user_id="bob")


async def test_a_pressure_sleep_is_not_repeated_when_nothing_new_came(tmp_path):
    from helpers import engine_with

    async with engine_with(tmp_path, sleep={"pressure_l1": 1, "check_every_s": 0}) as engine:
        engine.backend.enqueue(*(["Lovely."] * 6))
        for line in ("quantum chess rules", "sourdough starter care", "tidal pools at dawn"):
            await run_turn(engine, line, chat_id="g")  # three notes that never group
        first = await engine.maybe_sleep("default")
        assert first is not None and first.digests == 0
        assert await engine.maybe_sleep("default") is None  # the same ungroupable notes
        await run_turn(engine, "more quantum chess rules", chat_id="g")
        assert await engine.maybe_sleep("default") is not None  # something new came


async def test_pinned_memories_come_before_beliefs(engine):
    from persona.storage.queries import pinned_memories

    belief = MemoryWritten(
        memory_id="bl_1",
        persona_id="default",
        tier="L3",
        kind="belief",
        content="An old belief.",
        importance=0.9,
        witnesses=["local"],
    )
    await engine.store.append([NewEvent(payload=belief, stream_id="persona:default", actor="t")])
    told = await run_turn(engine, "I am allergic to peanuts", chat_id="a")
    pin = MemoryPinned(memory_id=f"ep:{told['turn_id']}", persona_id="default", pinned=True)
    await engine.store.append([NewEvent(payload=pin, stream_id="persona:default", actor="user")])
    first = await engine.store.read(pinned_memories, "default", "local", 1)
    assert [m.memory_id for m in first] == [f"ep:{told['turn_id']}"]
