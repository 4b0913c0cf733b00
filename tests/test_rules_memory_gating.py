"""Memory and gating rules, each held by a test: search, scoring, ranking, budget, packing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from helpers import engine_with, run_turn

from persona.clock import parse_iso
from persona.config import MemorySettings
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.memory import fuse
from persona.storage.queries import MemoryHit


def _retrieved(meta: dict, turn_id: str) -> dict:
    return next(m for m in meta["memory"]["retrieved"] if m["memory_id"] == f"ep:{turn_id}")


def _candidate(meta: dict, cid: str) -> dict:
    return next(c for c in meta["decision_candidates"] if c["id"] == cid)


# ---- memory ------------------------------------------------------------------------


async def test_the_search_uses_every_content_word_in_alphabetical_order(engine):
    zebras = await run_turn(engine, "My neighbour keeps zebras", chat_id="a")
    meta = (
        await run_turn(
            engine, "apples bananas cherries dates figs grapes about zebras", chat_id="b"
        )
    )["meta"]
    assert meta["memory"]["query"] == "apples bananas cherries dates figs grapes zebras"
    # The last word alphabetically still counts: the zebra memory is the relevant one.
    assert _retrieved(meta, zebras["turn_id"])["lexical"] == 1.0


async def test_a_memory_loses_half_its_recency_per_half_life(engine, clock):
    kite = await run_turn(engine, "the red kite flew over the harbour", chat_id="a")
    clock.advance(timedelta(hours=72))
    meta = (await run_turn(engine, "tell me about the red kite", chat_id="b"))["meta"]
    assert _retrieved(meta, kite["turn_id"])["recency"] == pytest.approx(0.5, abs=1e-3)
    clock.advance(timedelta(hours=72))
    meta = (await run_turn(engine, "the kite again", chat_id="c"))["meta"]
    assert _retrieved(meta, kite["turn_id"])["recency"] == pytest.approx(0.25, abs=1e-3)


def _hit(memory_id, lexical, created_at="2026-01-01T12:00:00.000000Z", importance=0.3, **kw):
    return MemoryHit(memory_id, "words", importance, created_at, "c", lexical, **kw)


NOW = parse_iso("2026-01-01T12:00:00.000000Z")


def test_the_default_score_is_lexical_led_weighted_fusion():
    s = MemorySettings()
    assert (s.fusion, s.weight_entity, s.weight_recency, s.weight_importance) == (
        "score",
        0.5,
        0.02,
        0.02,
    )
    hits = [
        _hit("ep:a", 1.0, "2026-01-01T12:00:00.000000Z", importance=0.2),
        _hit("ep:b", 0.8, "2026-01-01T12:00:00.000000Z", importance=0.9, entities='["Ana"]'),
    ]
    a, b = sorted(fuse(hits, NOW, frozenset({"ana"}), s), key=lambda r: r.memory_id)
    best = 1 + 0.5 + 0.02 + 0.02
    assert a.score == pytest.approx((1.0 + 0.02 * 1.0 + 0.02 * 0.2) / best, abs=1e-4)
    # The shared name multiplies the lexical part: 0.8 * 1.5 beats 1.0.
    assert b.score == pytest.approx((0.8 * 1.5 + 0.02 * 1.0 + 0.02 * 0.9) / best, abs=1e-4)
    assert b.score > a.score


def test_the_rrf_fusion_sums_weighted_reciprocal_ranks():
    s = MemorySettings(fusion="rrf", weight_recency=0.25, weight_importance=0.15)
    hits = [
        _hit("ep:a", 1.0, "2025-12-01T12:00:00.000000Z", importance=0.2),
        _hit("ep:b", 0.5, "2026-01-01T11:00:00.000000Z", importance=0.9),
    ]
    a, b = fuse(hits, NOW, frozenset(), s)
    best = (1.0 + 0.25 + 0.15 + 0.5) / 61
    # a: lexical 1st, recency 2nd, importance 2nd; b: lexical 2nd, recency 1st, importance 1st.
    assert a.memory_id == "ep:a"
    assert a.score == pytest.approx((1.0 / 61 + 0.25 / 62 + 0.15 / 62) / best, abs=1e-4)
    assert b.score == pytest.approx((1.0 / 62 + 0.25 / 61 + 0.15 / 61) / best, abs=1e-4)
    assert (a.lexical, b.lexical) == (1.0, 0.5)


def test_a_name_the_message_mentions_lifts_the_memory_that_names_it():
    s = MemorySettings()
    hits = [
        _hit("ep:a", 1.0),
        _hit("ep:b", 0.9, said='[{"role": "other", "name": "Ana", "text": "words"}]'),
        _hit("ep:c", 0.8, entities='["Lisbon"]'),
    ]
    ranked = fuse(hits, NOW, frozenset({"ana", "lisbon"}), s)
    # 0.9 * (1 + 0.5 * 0.5) = 1.125 and 0.8 * 1.25 = 1.0 against 1.0 for ep:a (tie: id).
    assert [r.memory_id for r in ranked] == ["ep:b", "ep:a", "ep:c"]
    assert [r.entity for r in ranked] == [0.5, 0.0, 0.5]
    # Without the entity weight the lexical order stands.
    plain = fuse(hits, NOW, frozenset({"ana", "lisbon"}), s.model_copy(update={"weight_entity": 0}))
    assert [r.memory_id for r in plain] == ["ep:a", "ep:b", "ep:c"]


async def test_relevance_beats_freshness_and_unrelated_news_is_no_candidate(engine, clock):
    old = await run_turn(engine, "My sister Ana moved to Lisbon last spring", chat_id="a")
    clock.advance(timedelta(days=30))
    await run_turn(engine, "I had pasta for lunch", chat_id="b")
    meta = (await run_turn(engine, "Do you know where Ana lives now?", chat_id="c"))["meta"]
    retrieved = meta["memory"]["retrieved"]
    # The exchange and the facts it stated; nothing from the newer, unrelated turn.
    assert retrieved[0]["memory_id"] == f"ep:{old['turn_id']}"
    assert all(old["turn_id"] in m["memory_id"] for m in retrieved)
    assert retrieved[0]["recency"] < 0.01


def test_between_equally_relevant_memories_the_newer_wins():
    old = _hit("ep:a", 1.0, "2025-12-01T12:00:00.000000Z")
    new = _hit("ep:b", 1.0, "2026-01-01T11:00:00.000000Z")
    assert [r.memory_id for r in fuse([old, new], NOW, frozenset(), MemorySettings())] == [
        "ep:b",
        "ep:a",
    ]
    # ... but a little more relevance beats any freshness (0.02 of recency at most).
    better = _hit("ep:a", 1.0, "2025-12-01T12:00:00.000000Z")
    fresher = _hit("ep:b", 0.97, "2026-01-01T12:00:00.000000Z")
    ranked = fuse([better, fresher], NOW, frozenset(), MemorySettings())
    assert [r.memory_id for r in ranked] == ["ep:a", "ep:b"]


def test_ties_are_broken_by_memory_id_so_replays_agree():
    ranked = fuse(
        [_hit("ep:b", 1.0), _hit("ep:c", 1.0), _hit("ep:a", 1.0)],
        NOW,
        frozenset(),
        MemorySettings(),
    )
    assert [r.memory_id for r in ranked] == ["ep:a", "ep:b", "ep:c"]


async def test_the_best_memories_are_kept_up_to_top_k(engine, tmp_path):
    for i in range(8):
        await run_turn(engine, f"note number {i} about gardening", chat_id=f"g{i}")
    meta = (await run_turn(engine, "gardening", chat_id="q"))["meta"]
    assert len(meta["memory"]["retrieved"]) == 6
    scores = [m["score"] for m in meta["memory"]["retrieved"]]
    assert scores == sorted(scores, reverse=True)
    async with engine_with(tmp_path, memory={"top_k": 2}) as small:
        for i in range(4):
            await run_turn(small, f"note number {i} about gardening", chat_id=f"g{i}")
        meta = (await run_turn(small, "gardening", chat_id="q"))["meta"]
    assert len(meta["memory"]["retrieved"]) == 2


async def test_no_word_in_common_means_no_memory_unless_recent_ones_are_asked_for(engine, tmp_path):
    for w in ("alpha", "beta"):
        await run_turn(engine, f"note {w}", chat_id=w)
    meta = (await run_turn(engine, "ok", chat_id="q"))["meta"]
    assert meta["memory"]["query"] is None and meta["memory"]["retrieved"] == []
    async with engine_with(tmp_path, memory={"recent_candidates": 5}) as wide:
        ids = [(await run_turn(wide, f"note {w}", chat_id=w))["turn_id"] for w in ("alpha", "beta")]
        meta = (await run_turn(wide, "ok", chat_id="q"))["meta"]
    retrieved = meta["memory"]["retrieved"]
    assert {m["memory_id"] for m in retrieved} == {f"ep:{i}" for i in ids}
    assert all(m["lexical"] == 0.0 for m in retrieved)


async def test_every_memory_that_mentions_the_words_counts_as_relevant(engine):
    for i in range(4):
        await run_turn(engine, f"kites story {i}", chat_id=f"k{i}")
    meta = (await run_turn(engine, "kites", chat_id="q"))["meta"]
    assert len(meta["memory"]["retrieved"]) == 4
    assert all(m["lexical"] > 0 for m in meta["memory"]["retrieved"])


async def test_a_term_matching_too_many_memories_is_dropped(tmp_path):
    async with engine_with(tmp_path, memory={"max_term_matches": 3}) as engine:
        for i in range(4):
            await run_turn(engine, f"weather report {i}", chat_id=f"w{i}")
        rare = await run_turn(engine, "weather and the albatross", chat_id="x")
        meta = (await run_turn(engine, "weather albatross", chat_id="q"))["meta"]
    # "weather" is in 5 memories (> 3): dropped; "albatross" finds the one that matters.
    assert meta["memory"]["dropped_terms"] == ["weather"]
    assert [m["memory_id"] for m in meta["memory"]["retrieved"]] == [f"ep:{rare['turn_id']}"]


# ---- gating ------------------------------------------------------------------------


async def test_the_reply_and_the_fixed_prompt_are_set_aside_first(engine, backend):
    first = await run_turn(engine, "The lighthouse keeper waved at the ferry")
    message = "Tell me about the old lighthouse"
    # An exchange costs exactly what its two messages add to the prompt.
    exchange = backend.count_tokens(
        "The lighthouse keeper waved at the ferry"
    ) + backend.count_tokens(first["reply"])
    rooms = []
    for max_tokens in (200, 500):
        meta = (await run_turn(engine, message, max_tokens=max_tokens))["meta"]
        b = meta["token_budget"]
        assert b["context"] == backend.context_window() == 2048
        assert b["reply"] == max_tokens
        assert b["message"] == backend.count_tokens(message)
        # The identity and turn note (core) and the message are always in the prompt:
        # what competes gets the window minus them and the reply.
        assert b["core"] > 0
        assert b["available"] == 2048 - max_tokens - (b["core"] + b["message"])
        assert _candidate(meta, first["turn_id"])["tokens"] == exchange
        chosen = sum(c["tokens"] for c in meta["decision_candidates"] if c["selected"])
        assert 0 < chosen <= b["available"]
        rooms.append(b["available"])
    # Asking for a longer reply leaves exactly that much less room for context.
    assert rooms[0] - rooms[1] == 300


async def test_newer_exchanges_have_priority_over_older_ones(engine):
    turns = [(await run_turn(engine, f"part {i} of the story"))["turn_id"] for i in range(4)]
    meta = (await run_turn(engine, "and then?"))["meta"]
    priorities = [_candidate(meta, t)["priority"] for t in reversed(turns)]
    assert priorities == [0.95, 0.91, 0.87, 0.83]


async def test_the_latest_exchange_outranks_a_strong_memory(engine):
    last = await run_turn(engine, "hello there", chat_id="b")
    await run_turn(engine, "My sister Ana moved to Lisbon last spring", chat_id="a")
    meta = (await run_turn(engine, "Do you know where Ana lives now?", chat_id="b"))["meta"]
    memories = [c for c in meta["decision_candidates"] if c["kind"] == "memory"]
    assert max(m["priority"] for m in memories) > 0.8
    assert _candidate(meta, last["turn_id"])["priority"] > max(m["priority"] for m in memories)


async def test_up_to_history_turns_exchanges_compete(engine):
    for i in range(6):
        await run_turn(engine, f"part {i}")
    meta = (await run_turn(engine, "go on"))["meta"]
    history = [c for c in meta["decision_candidates"] if c["kind"] == "history"]
    assert len(history) == 6 and all(c["selected"] for c in history)


async def test_a_memory_the_last_turn_used_gets_a_continuity_bonus(engine):
    zebra = await run_turn(engine, "My neighbour keeps zebras", chat_id="a")
    first = await run_turn(engine, "tell me about zebras", chat_id="b")
    held = f"ep:{zebra['turn_id']}"
    assert held in first["meta"]["state"]["workspace"]
    zoo = await run_turn(engine, "I saw zebras at the zoo", chat_id="c")
    meta = (await run_turn(engine, "zebras again please", chat_id="b"))["meta"]
    salience = meta["competition"]["salience"]
    # The carried memory starts the competition 0.05 above its retrieval score.
    assert salience[held] == pytest.approx(_retrieved(meta, zebra["turn_id"])["score"] + 0.05)
    # A memory the previous turn did not hold starts at its score alone.
    fresh = f"ep:{zoo['turn_id']}"
    assert salience[fresh] == pytest.approx(_retrieved(meta, zoo["turn_id"])["score"])
    # A winner's priority for the token packing is 0.9 x its final activation.
    final = meta["competition"]["trace"][-1]
    assert _candidate(meta, held)["priority"] == pytest.approx(0.9 * final[held], abs=1e-4)


async def test_a_memory_of_an_exchange_still_in_the_history_is_left_out(engine, backend):
    first = await run_turn(engine, "My sister Ana moved to Lisbon last spring")
    meta = (await run_turn(engine, "Is Lisbon nice in spring?"))["meta"]
    memory = _candidate(meta, f"ep:{first['turn_id']}")
    assert memory["selected"] is False and memory["reason"] == "already in recent history"
    assert _candidate(meta, first["turn_id"])["selected"] is True
    note = backend.calls[-1][-2]
    assert note.role == "system" and "Ana moved" not in note.content


async def _two_turns(tmp_path: Path, name: str, max_tokens: int) -> tuple[dict, list[str]]:
    """The second turn's meta and the contents of the prompt it sent."""
    async with engine_with(tmp_path, name=name) as engine:
        await run_turn(engine, "The lighthouse keeper waved at the ferry")
        meta = (await run_turn(engine, "Tell me more", max_tokens=max_tokens))["meta"]
        assert isinstance(engine.backend, ScriptedBackend)
        return meta, [m.content for m in engine.backend.calls[-1]]


async def test_an_exchange_that_exactly_fills_the_budget_still_fits(tmp_path):
    probe, _ = await _two_turns(tmp_path, "probe", 200)
    (history,) = [c for c in probe["decision_candidates"] if c["kind"] == "history"]
    b = probe["token_budget"]
    # The reply size that leaves room for exactly the fixed prompt plus that exchange.
    exact = b["context"] - (b["core"] + b["message"]) - history["tokens"]
    meta, prompt = await _two_turns(tmp_path, "exact", exact)
    assert meta["token_budget"]["available"] == history["tokens"]
    (fits,) = [c for c in meta["decision_candidates"] if c["kind"] == "history"]
    assert fits["selected"] and fits["reason"] == "fits"
    assert fits["tokens"] == history["tokens"]
    # The plan holds: the speaker sends the exchange without cutting anything.
    assert "The lighthouse keeper waved at the ferry" in prompt
    # One token more for the reply and the exchange no longer fits.
    meta, prompt = await _two_turns(tmp_path, "short", exact + 1)
    (over,) = [c for c in meta["decision_candidates"] if c["kind"] == "history"]
    assert not over["selected"] and over["reason"] == "over budget"
    assert "The lighthouse keeper waved at the ferry" not in prompt


async def _memory_turn(
    tmp_path: Path, name: str, max_tokens: int, notes_share: float = 1.0
) -> tuple[dict, str]:
    """A question in a new chat whose only candidate is another chat's memory (by default
    with no soft limit for notes: the hard limit alone decides)."""
    async with engine_with(tmp_path, name=name, gating={"notes_share": notes_share}) as engine:
        await run_turn(engine, "My neighbour keeps zebras", chat_id="a")
        meta = (await run_turn(engine, "zebras?", chat_id="b", max_tokens=max_tokens))["meta"]
        assert isinstance(engine.backend, ScriptedBackend)
        return meta, "\n".join(m.content for m in engine.backend.calls[-1])


async def test_a_memory_that_exactly_fills_the_budget_is_sent_whole(tmp_path):
    probe, _ = await _memory_turn(tmp_path, "probe", 200)
    (memory,) = [c for c in probe["decision_candidates"] if c["kind"] == "memory"]
    # The only other candidate, the goal note, stays under the activation floor.
    assert all(not c["selected"] for c in probe["decision_candidates"] if c["kind"] != "memory")
    b = probe["token_budget"]
    # The memory's cost includes the note's heading, which only a first memory brings.
    exact = b["context"] - (b["core"] + b["message"]) - memory["tokens"]
    meta, prompt = await _memory_turn(tmp_path, "exact", exact)
    (fits,) = [c for c in meta["decision_candidates"] if c["kind"] == "memory"]
    assert fits["selected"] and fits["reason"] == "fits"
    assert "neighbour keeps zebras" in prompt
    meta, prompt = await _memory_turn(tmp_path, "short", exact + 1)
    (over,) = [c for c in meta["decision_candidates"] if c["kind"] == "memory"]
    assert not over["selected"] and over["reason"] == "over budget"
    assert "neighbour keeps zebras" not in prompt


async def test_notes_have_a_soft_limit_within_the_room(tmp_path):
    from persona.config import GatingSettings

    share = GatingSettings().notes_share
    assert share == 0.5  # by default the notes may take half the room
    probe, _ = await _memory_turn(tmp_path, "probe", 200)
    (memory,) = [c for c in probe["decision_candidates"] if c["kind"] == "memory"]
    b = probe["token_budget"]
    # A reply size that leaves the memory exactly twice its cost: fits the 0.5 share.
    room = 2 * memory["tokens"]
    max_tokens = b["context"] - (b["core"] + b["message"]) - room
    meta, prompt = await _memory_turn(tmp_path, "half", max_tokens, notes_share=share)
    (fits,) = [c for c in meta["decision_candidates"] if c["kind"] == "memory"]
    assert fits["selected"] and "neighbour keeps zebras" in prompt
    # One token less of room: the memory still fits the window, not the notes' share.
    meta, prompt = await _memory_turn(tmp_path, "over", max_tokens + 1, notes_share=share)
    (over,) = [c for c in meta["decision_candidates"] if c["kind"] == "memory"]
    assert meta["token_budget"]["available"] >= over["tokens"]
    assert not over["selected"] and over["reason"] == "over the notes' soft limit"
    assert "neighbour keeps zebras" not in prompt
