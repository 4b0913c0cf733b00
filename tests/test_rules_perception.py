"""Perception rules, each held by a test: cues, structure bonuses, risk, importance, blend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import run_turn

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend, as_json


@asynccontextmanager
async def engine_with(tmp_path: Path, **sections: Any) -> AsyncIterator[Engine]:
    """An engine on a fresh temp DB with some settings sections changed."""
    settings = Settings(db_path=tmp_path / "rules.db", llm={"provider": "scripted"}, **sections)
    engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock())
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.mark.parametrize(
    ("message", "top"),
    [
        # A greeting question is small talk, not a factual question.
        ("How are you doing today?", "smalltalk"),
        # Loneliness outweighs the plain "I feel" of a disclosure.
        ("I feel so lonely tonight", "emotional_support"),
        # Asking for pretence is roleplay, though it is phrased as a request.
        ("Can you pretend to be a pirate captain", "creative_roleplay"),
        # "help me" is a request even when the user also says how they feel.
        ("Help me, I feel stuck", "task_oriented"),
        # Giving one's name is a disclosure, more than the greeting around it.
        ("Hello, my name is Sam", "self_disclosure"),
        # Asking what the persona is, is about the conversation, not a fact question.
        ("Be honest, are you an AI?", "meta_conversation"),
        ("Could you summarize this article for me", "task_oriented"),
        ("What is the capital of France?", "factual_query"),
    ],
)
async def test_the_strongest_cue_decides_the_intent(engine, message, top):
    meta = (await run_turn(engine, message))["meta"]
    assert meta["top_intent"] == top


@pytest.mark.parametrize(
    ("message", "top"),
    [
        # No cue words: the *action* markup alone makes it roleplay.
        ("*waves and sits down by the fire*", "creative_roleplay"),
        # No cue words: the leading "((" alone makes it talk about the conversation.
        ("(( sorry, my cat walked over the keyboard ))", "meta_conversation"),
        # No cue words: a question word at the start makes it a question, "?" or not.
        ("which train goes to porto tomorrow", "factual_query"),
        # No cue words: a trailing "?" makes it a question without a question word.
        ("Porto tomorrow, the train at nine?", "factual_query"),
    ],
)
async def test_structure_alone_decides_the_intent(engine, message, top):
    meta = (await run_turn(engine, message))["meta"]
    assert meta["top_intent"] == top
    others = [v for k, v in meta["intent"].items() if k != top]
    assert meta["intent"][top] > max(others)


@pytest.mark.parametrize("message", ["yo there", "yo there old pal"])
async def test_a_short_cueless_opener_leans_to_smalltalk(engine, message):
    intent = (await run_turn(engine, message))["meta"]["intent"]
    others = [v for k, v in intent.items() if k != "smalltalk"]
    assert len(set(others)) == 1  # no evidence for any other reading
    assert intent["smalltalk"] > 2 * others[0]


async def test_a_short_message_with_a_real_cue_gets_no_smalltalk_lean(engine):
    intent = (await run_turn(engine, "I'm so sad"))["meta"]["intent"]
    assert max(intent, key=intent.get) == "emotional_support"
    # Small talk has no cue here, so it is exactly as likely as the other cue-less readings.
    assert intent["smalltalk"] == intent["task_oriented"] == intent["factual_query"]


async def test_one_strong_cue_is_decisive_without_zeroing_the_rest(engine):
    intent = (await run_turn(engine, "What is the capital of France?"))["meta"]["intent"]
    assert 0.85 < intent["factual_query"] < 0.97
    assert all(v >= 0.005 for k, v in intent.items() if k != "factual_query")


async def test_a_stated_wish_to_die_reads_as_safety_risk_above_sadness(engine):
    meta = (await run_turn(engine, "I'm sad and lonely and I want to die"))["meta"]
    assert meta["top_intent"] == "safety_risk"
    assert meta["dialogue_state"] == "crisis"


async def test_wanting_to_kill_oneself_is_a_crisis(engine, backend):
    meta = (await run_turn(engine, "Sometimes I want to kill myself"))["meta"]
    assert meta["safety"]["override"] is True
    assert "crisis line" in backend.calls[-1][-2].content


@pytest.mark.parametrize(
    "message", ["I bought a weapon for hunting season", "Poison ivy ruined my hike"]
)
async def test_a_single_mild_risk_word_is_noted_but_does_not_override(engine, backend, message):
    meta = (await run_turn(engine, message))["meta"]
    assert 0 < meta["safety"]["total_risk"] < 0.6
    assert meta["safety"]["override"] is False
    assert "crisis line" not in backend.calls[-1][-2].content


async def test_two_moderate_risk_cues_add_up_to_a_crisis(engine, backend):
    weapon = (await run_turn(engine, "He has a weapon", chat_id="w"))["meta"]["safety"]
    bomb = (await run_turn(engine, "He talks about a bomb", chat_id="b"))["meta"]["safety"]
    both = (await run_turn(engine, "He has a weapon and talks about a bomb"))["meta"]
    assert not weapon["override"] and not bomb["override"]
    # Noisy-or: the risk that neither cue is real is the product of each one's doubt.
    expected = 1 - (1 - weapon["total_risk"]) * (1 - bomb["total_risk"])
    assert both["safety"]["total_risk"] == pytest.approx(expected, abs=1e-4)
    assert both["safety"]["override"] is True
    assert both["dialogue_state"] == "crisis"
    assert "crisis line" in backend.calls[-1][-2].content


async def test_risk_exactly_at_the_threshold_overrides(tmp_path):
    async with engine_with(tmp_path, perception={"safety_override_threshold": 0.5}) as engine:
        meta = (await run_turn(engine, "Poison ivy ruined my hike"))["meta"]
    assert meta["safety"]["total_risk"] == 0.5
    assert meta["safety"]["override"] is True


def _importance(meta: dict, n_words: int) -> float:
    intent, risk = meta["intent"], meta["safety"]["total_risk"]
    personal = intent["self_disclosure"] + intent["emotional_support"]
    length = min(n_words / 40, 1.0)
    return round(min(1.0, 0.2 + 0.3 * length + 0.4 * personal + 0.3 * risk), 4)


@pytest.mark.parametrize(
    ("message", "n_words"),
    [
        ("ok", 1),
        ("I feel so lonely tonight", 5),
        ("My name is Sam and I live in Porto", 9),
        ("I'm sad and lonely and depressed, I feel hopeless, I might overdose", 12),
        (" ".join(["the harbour lights came on one by one"] * 6), 48),
    ],
)
async def test_importance_grows_with_length_personal_share_and_risk(engine, message, n_words):
    meta = (await run_turn(engine, message))["meta"]
    assert meta["importance"] == _importance(meta, n_words)


async def test_what_matters_is_remembered_as_more_important(engine):
    greeting = (await run_turn(engine, "ok"))["meta"]["importance"]
    lonely = (await run_turn(engine, "I feel so lonely tonight"))["meta"]["importance"]
    crisis = (await run_turn(engine, "I'm sad and lonely and I want to die"))["meta"]
    assert 0.2 < greeting < lonely < crisis["importance"]


async def test_a_half_sure_classifier_does_not_overrule_a_strong_cue(tmp_path):
    async with engine_with(tmp_path, perception={"use_classifier": True}) as engine:
        backend = engine.backend
        assert isinstance(backend, ScriptedBackend)
        backend.enqueue_structured(
            as_json({"primary_intent": "creative_roleplay", "confidence": 0.6})
        )
        meta = (await run_turn(engine, "What is the capital of France?"))["meta"]
        backend.enqueue_structured(
            as_json({"primary_intent": "creative_roleplay", "confidence": 1.0})
        )
        sure = (await run_turn(engine, "What is the capital of France?"))["meta"]
    assert sum(meta["intent"].values()) == pytest.approx(1.0, abs=1e-3)
    assert meta["top_intent"] == "factual_query"
    assert meta["dialogue_state"] == "inquiry"
    assert 0.3 <= meta["intent"]["creative_roleplay"] < 0.35
    # A sure classifier moves half the mass: enough to win against one strong cue.
    assert sum(sure["intent"].values()) == pytest.approx(1.0, abs=1e-3)
    assert sure["top_intent"] == "creative_roleplay"
    assert 0.5 <= sure["intent"]["creative_roleplay"] < 0.52
