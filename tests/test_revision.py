"""Confidence, belief revision, decision candidates and the attention schema: each rule
held by a test with literal values, so moving a constant turns one red."""

from __future__ import annotations

from contextlib import closing

import pytest
from helpers import engine_with, run_turn

from persona.config import MetacognitionSettings
from persona.decision_replay import replay_decisions
from persona.events import ChatState, Perception, Telemetry, Workspace
from persona.events.decisions import BeliefRevised, Budget, Safety
from persona.pipeline import revision
from persona.pipeline.attention import decide_attention, predict
from persona.pipeline.revision import (
    MAX_ROUNDS,
    decide_candidates,
    decide_confidence,
    intent_margin,
)
from persona.storage.db import connect
from persona.storage.eventlog import read_events

INTENTS = (
    "smalltalk",
    "meta_conversation",
    "emotional_support",
    "task_oriented",
    "factual_query",
    "creative_roleplay",
    "self_disclosure",
    "safety_risk",
)


def _perception(
    shares: dict[str, float], risk: float = 0.0, stability: float | None = 1.0
) -> Perception:
    intent = {k: shares.get(k, 0.0) for k in INTENTS}
    top = max(intent, key=lambda k: intent[k])
    return Perception(
        intent=intent,
        top_intent=top,
        intent_smoothed=intent,
        primary_intent=top,
        secondary_intent=None,
        safety=Safety(total_risk=risk, override=risk >= 0.6, escalated=risk >= 0.6),
        ooc=False,
        importance=0.2,
        importance_score=1,
        appraisal=None,
        passes=3,
        stability=stability,
    )


def _telemetry(c: float = 0.0, m: float = 0.0) -> Telemetry:
    return Telemetry(C=c, N=1.0, M=m, S=1.0, R=0.5)


def _workspace(memories: list[str], history: list[str]) -> Workspace:
    return Workspace(
        budget=Budget(context=2048, reply=200, message=5, available=1000),
        candidates=[],
        selected_memories=memories,
        selected_history=history,
    )


# ---- confidence ----------------------------------------------------------------------


def test_the_revision_threshold_defaults_to_0_4():
    assert MetacognitionSettings().revision_threshold == 0.4
    assert MAX_ROUNDS == 2


def test_confidence_is_0_4_margin_0_2_stability_0_4_grounding():
    assert intent_margin({"a": 0.7, "b": 0.2, "c": 0.1}) == 0.5
    p = _perception({"factual_query": 0.7, "smalltalk": 0.2, "task_oriented": 0.1})
    c = decide_confidence(p, _telemetry(c=0.3, m=0.5), 0.4)
    # 0.4 * 0.5 + 0.2 * 1.0 + 0.4 * max(0.3, 0.5)
    assert c.value == pytest.approx(0.6) and c.grounding == 0.5 and not c.low
    unrecorded = decide_confidence(
        _perception({"smalltalk": 1.0}, stability=None), _telemetry(), 0.4
    )
    assert unrecorded.stability == 1.0 and unrecorded.value == pytest.approx(0.6)


def test_below_the_threshold_is_low_and_at_it_is_not():
    p = _perception({"smalltalk": 0.5, "factual_query": 0.5})  # margin 0
    at = decide_confidence(p, _telemetry(c=0.5), 0.4)  # 0.2 + 0.2 = 0.4
    assert at.value == pytest.approx(0.4) and not at.low
    below = decide_confidence(p, _telemetry(c=0.49), 0.4)
    assert below.value == pytest.approx(0.396) and below.low


# ---- decision candidates -------------------------------------------------------------


def _chosen(options):  # type: ignore[no-untyped-def]
    (one,) = [o for o in options if o.chosen]
    return one.name


def test_at_least_three_scored_options_one_chosen():
    options = decide_candidates(_perception({"smalltalk": 1.0}), 0.8, "S1_CASUAL", "NORMAL")
    assert [o.name for o in options] == list(revision.OPTIONS)
    assert all(0.0 <= o.score <= 1.0 and o.reason for o in options)
    assert _chosen(options) == "answer_in_state"
    # (1 - 0) * (0.5 + 0.5 * 0.8)
    assert options[0].score == pytest.approx(0.9)


def test_a_task_message_takes_the_short_task_answer():
    p = _perception({"factual_query": 0.92, "smalltalk": 0.08})
    options = decide_candidates(p, 0.6, "S2_TASK", "NORMAL")
    assert _chosen(options) == "short_task_answer"
    assert options[1].score == pytest.approx(0.92)
    # OVERLOADED adds 0.2 to the short answer (capped at 1).
    # answer 0.5 + 0.5 * 0.3 = 0.65 beats 0.55; with OVERLOADED 0.75 beats it.
    low = _perception({"factual_query": 0.55, "smalltalk": 0.45})
    assert _chosen(decide_candidates(low, 0.3, "S0_NEUTRAL", "NORMAL")) == "answer_in_state"
    assert _chosen(decide_candidates(low, 0.3, "S0_NEUTRAL", "OVERLOADED")) == "short_task_answer"


def test_low_confidence_asks_back():
    p = _perception({"smalltalk": 0.4, "emotional_support": 0.35})
    # answer 0.5 + 0.5 * 0.1 = 0.55; clarify 0.8 * 0.9 = 0.72
    options = decide_candidates(p, 0.1, "S0_NEUTRAL", "NORMAL")
    assert _chosen(options) == "clarify" and options[2].score == pytest.approx(0.72)
    # REFLECTIVE adds 0.1 to the question: 0.8 * 0.6 = 0.48 < 0.8 answer, + 0.1 still less
    assert _chosen(decide_candidates(p, 0.4, "S4_META", "REFLECTIVE")) == "answer_in_state"


def test_the_safety_redirect_is_chosen_exactly_when_the_prompt_turns_safe():
    crisis = _perception({"safety_risk": 0.9}, risk=0.9)
    assert _chosen(decide_candidates(crisis, 0.9, "S6_SAFETY", "SAFETY_LOCK")) == (
        "safety_redirect"
    )
    # The S6 hold after a crisis: a benign message still gets the safe template.
    held = _perception({"smalltalk": 1.0})
    assert _chosen(decide_candidates(held, 0.9, "S6_SAFETY", "SAFETY_LOCK")) == "safety_redirect"
    # Risk just under the override: high, but the prompt is not the safe one: not chosen.
    worry = _perception({"emotional_support": 1.0}, risk=0.59)
    options = decide_candidates(worry, 0.1, "S3_EMOTIONAL", "NORMAL")
    assert _chosen(options) != "safety_redirect" and options[3].score == 0.59


async def test_chosen_option_and_safety_override_never_disagree(engine):
    messages = ["hi there", "I want to kill myself", "ok", "What is 2+2?", "thanks", "hm"]
    for message in messages:
        meta = (await run_turn(engine, message))["meta"]
        options = meta["decision_options"]
        assert len(options) >= 3 and sum(o["chosen"] for o in options) == 1
        chosen = next(o["name"] for o in options if o["chosen"])
        safe = meta["safety"]["override"] or meta["dialogue_state"] == "S6_SAFETY"
        assert (chosen == "safety_redirect") == safe, (message, chosen)
        assert meta["meta_v1"]["decision_options"] == options
        assert meta["confidence"] == meta["confidence_detail"]["value"]


# ---- belief revision -----------------------------------------------------------------


def _events(engine, trace_id):  # type: ignore[no-untyped-def]
    with closing(connect(engine.settings.db_path)) as conn:
        return list(read_events(conn, trace_id=trace_id))


async def test_revision_runs_at_most_two_rounds_each_an_event_and_replays(tmp_path):
    # Threshold 1.0: every turn is uncertain, so the rounds stop only at the limit (or
    # when a round changed nothing).
    async with engine_with(
        tmp_path, metacognition={"revision_threshold": 1.0}, memory={"recent_candidates": 20}
    ) as engine:
        await run_turn(engine, "I love sailing small boats on the lake")
        await run_turn(engine, "The lake was cold and the wind strong")
        result = await run_turn(engine, "what about the lake?")
        events = _events(engine, result["trace_id"])
        rounds = [e.payload for e in events if isinstance(e.payload, BeliefRevised)]
        types = [e.type for e in events]
        report = await replay_decisions(engine.settings.db_path, engine.settings)
    assert 1 <= len(rounds) <= MAX_ROUNDS
    assert [r.round for r in rounds] == list(range(1, len(rounds) + 1))
    first = rounds[0]
    assert first.reason.startswith("confidence ") and "< threshold 1.0" in first.reason
    assert "wind" in first.terms_added and "lake" not in first.terms_added  # new words only
    assert first.fts_candidates == 100 and first.recent_candidates == 40  # (1 + round) x
    # Each round: memory, gating and metacognition again, then belief.revised.
    n = len(rounds)
    assert types.count("memory.retrieved") == types.count("workspace.selected") == 1 + n
    assert types.count("metacognition.completed") == 1 + n
    assert types.index("belief.revised") > types.index("metacognition.completed")
    # The turn's meta is the last round's.
    last = [e.payload for e in events if isinstance(e.payload, Workspace)][-1]
    assert result["meta"]["meta_v1"]["memory"]["query"] is not None
    assert [c["id"] for c in result["meta"]["decision_candidates"]] == [
        c.id for c in last.candidates
    ]
    assert [r["round"] for r in result["meta"]["revisions"]] == [r.round for r in rounds]
    # The widened search found nothing new: no second round.
    assert n == 1 and not first.changed and first.new_candidates == 0
    assert report.ok, [d.render() for d in report.differences]


async def test_no_round_when_a_wider_search_cannot_find_anything_new(tmp_path):
    # A first turn: no previous exchange to add terms from, and every memory of the
    # persona is a candidate already (fewer than recent_candidates 20).
    async with engine_with(tmp_path, metacognition={"revision_threshold": 1.0}) as engine:
        result = await run_turn(engine, "I love sailing small boats on the lake")
        types = [e.type for e in _events(engine, result["trace_id"])]
    assert result["meta"]["confidence_detail"]["low"]
    assert "belief.revised" not in types


async def test_no_revision_at_or_above_the_threshold(tmp_path):
    async with engine_with(tmp_path, metacognition={"revision_threshold": 0.0}) as engine:
        await run_turn(engine, "I love sailing small boats on the lake")
        result = await run_turn(engine, "and then?")
        types = [e.type for e in _events(engine, result["trace_id"])]
    assert "belief.revised" not in types and types.count("memory.retrieved") == 1


async def test_a_doctored_revision_round_is_reported(tmp_path):
    async with engine_with(
        tmp_path, metacognition={"revision_threshold": 1.0}, memory={"recent_candidates": 20}
    ) as engine:
        await run_turn(engine, "I love sailing small boats on the lake")
        await run_turn(engine, "The lake was cold and the wind strong")
        settings = engine.settings
    # Replayed with revision off, the logged rounds are left over: reported.
    off = settings.model_copy(
        update={
            "metacognition": settings.metacognition.model_copy(update={"revision_threshold": 0.0})
        }
    )
    report = await replay_decisions(settings.db_path, off)
    assert not report.ok


# ---- attention schema ----------------------------------------------------------------


def test_the_next_prediction_keeps_memories_and_the_history_that_stays():
    ws = _workspace(["ep:a", "ep:b"], ["t3", "t2", "t1"])  # newest first
    assert predict("t4", ws, 3) == ["ep:a", "ep:b", "t2", "t3", "t4"]
    assert predict("t4", ws, 0) == ["ep:a", "ep:b"]


def test_attention_rate_is_hits_over_predicted_and_runs_over_the_path():
    parent = ChatState(
        turns=2, attention_predicted=("ep:a", "t1", "t2", "t9"), attention_hits=3, attention_total=4
    )
    d = decide_attention(parent, "t3", _workspace(["ep:a"], ["t2", "t1"]), 12)
    assert d.hits == 3 and d.rate == 0.75
    assert d.running_rate == pytest.approx(6 / 8)
    assert d.next_predicted == ["ep:a", "t1", "t2", "t3"]
    fresh = decide_attention(ChatState(), "t1", _workspace([], []), 12)
    assert fresh.rate is None and fresh.running_rate is None and fresh.next_predicted == ["t1"]


async def test_attention_is_carried_in_the_chat_state(engine):
    first = (await run_turn(engine, "I love sailing small boats"))["meta"]
    assert first["state"]["attention_predicted"] == [first["turn_id"]]
    second = (await run_turn(engine, "tell me more about boats"))["meta"]
    assert second["attention"]["predicted"] == [first["turn_id"]]
    assert second["attention"]["hits"] == 1 and second["attention_rate"] == 1.0
    assert second["state"]["attention_total"] == 1 and second["state"]["attention_hits"] == 1


async def test_a_round_that_changes_something_opens_a_second_and_never_a_third(tmp_path):
    memory = {"fts_candidates": 1}
    async with engine_with(
        tmp_path, metacognition={"revision_threshold": 1.0}, memory=memory
    ) as engine:
        for message in ("boats on the lake", "wind over the hills", "rain in the city"):
            await run_turn(engine, message)
        result = await run_turn(engine, "snow on the lake")
        rounds = [
            e.payload
            for e in _events(engine, result["trace_id"])
            if isinstance(e.payload, BeliefRevised)
        ]
        report = await replay_decisions(engine.settings.db_path, engine.settings)
    assert [r.round for r in rounds] == [1, 2]
    assert rounds[0].changed and rounds[0].new_candidates > 0
    assert [r.fts_candidates for r in rounds] == [2, 3]
    assert report.ok, [d.render() for d in report.differences]
