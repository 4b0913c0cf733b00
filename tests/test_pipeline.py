"""The five stages: each decides something real and records it as an event of the turn."""

from __future__ import annotations

from contextlib import closing
from datetime import timedelta

import pytest
from helpers import run_turn

from persona.engine import Engine
from persona.events import Generation, TurnStarted
from persona.llm.scripted import ScriptedBackend, as_json
from persona.storage import queries
from persona.storage.db import connect
from persona.storage.eventlog import NewEvent, read_events

TURN_EVENTS = [
    "turn.started",
    "perception.completed",
    "memory.retrieved",
    "workspace.selected",
    "metacognition.completed",
    "reply.completed",
    "memory.written",
    "edge.asserted",
    "identity.updated",
    "telemetry.recorded",
    "chat_state.recorded",
    "turn.completed",
]


def _events(engine, trace_id):
    with closing(connect(engine.settings.db_path)) as conn:
        return list(read_events(conn, trace_id=trace_id))


async def test_every_stage_decision_is_an_event_of_the_turn(engine):
    result = await run_turn(engine, "Hello! How are you today?")
    trace = result["meta"]["trace_id"]
    events = _events(engine, trace)
    # Accepted (queued) before it ran; the chat begins with its first accepted message.
    # A first turn has no reply for its reward to judge: the relationship does not move.
    first = [t for t in TURN_EVENTS if t != "edge.asserted"]
    assert [e.type for e in events] == ["chat.started", "turn.queued", *first]
    started = events[2]
    assert all(e.trace_id == trace for e in events)
    assert all(e.parent_event_id == started.event_id for e in events[3:])
    actors = {e.type: e.actor for e in events}
    assert actors["perception.completed"] == "perception"
    assert actors["memory.retrieved"] == "memory"
    assert actors["workspace.selected"] == "gating"
    assert actors["metacognition.completed"] == "metacognition"
    assert actors["reply.completed"] == "speaker"
    # Persona-scoped state goes on the persona's stream: its control state every turn,
    # the relationship edge from the second turn.
    streams = {e.type: e.stream_id for e in events}
    assert streams.pop("identity.updated") == "persona:default"
    assert set(streams.values()) == {"chat:chat-1"}
    # (A clear question: confident enough that no belief-revision round runs.)
    second = await run_turn(engine, "What is the capital of France?", reward=1.0, chat_id="chat-1")
    later = _events(engine, second["meta"]["trace_id"])
    assert [e.type for e in later] == ["turn.queued", *TURN_EVENTS]
    streams = {e.type: e.stream_id for e in later}
    assert streams.pop("edge.asserted") == streams.pop("identity.updated") == "persona:default"
    assert set(streams.values()) == {"chat:chat-1"}
    chat_events = [e for e in events if e.stream_id == "chat:chat-1"]
    assert [e.stream_version for e in chat_events] == list(range(1, len(chat_events) + 1))
    reply = next(e for e in events if e.type == "reply.completed")
    assert reply.model == "scripted" and reply.tokens_out and reply.payload.prompt
    # Each stage's latency sits on its own event.
    for e in events[2:7]:
        assert e.latency_ms is not None and e.latency_ms >= 0


async def test_perception_intent_safety_and_ooc(engine, backend):
    meta = (await run_turn(engine, "What is the capital of France?"))["meta"]
    assert set(meta["intent"]) == {
        "smalltalk",
        "meta_conversation",
        "emotional_support",
        "task_oriented",
        "factual_query",
        "creative_roleplay",
        "self_disclosure",
        "safety_risk",
    }
    assert abs(sum(meta["intent"].values()) - 1) < 1e-3
    assert max(meta["intent"], key=meta["intent"].get) == "factual_query"
    assert meta["safety"]["total_risk"] == 0.0 and meta["safety"]["override"] is False

    meta = (await run_turn(engine, "I want to end my life, there is no reason to live"))["meta"]
    assert meta["safety"]["override"] and meta["safety"]["total_risk"] > 0.9
    assert meta["dialogue_state"] == "S6_SAFETY"
    note = backend.calls[-1][-2]
    assert note.role == "system" and "crisis line" in note.content

    meta = (await run_turn(engine, "(( are you an AI? ))"))["meta"]
    # The crisis hold outlasts one out-of-character message: still S6.
    assert meta["ooc"] is True and meta["dialogue_state"] == "S6_SAFETY"
    assert "out of character" in backend.calls[-1][-2].content


async def test_memories_belong_to_the_persona_across_chats(engine, backend):
    await run_turn(engine, "My sister Ana moved to Lisbon last spring", chat_id="a")
    await run_turn(engine, "Let's talk about cooking", chat_id="a")
    meta = (await run_turn(engine, "Do you know where Ana lives now?", chat_id="b"))["meta"]
    retrieved = meta["memory"]["retrieved"]
    top = retrieved[0]
    assert "Lisbon" in top["content"] and top["lexical"] == 1.0 and top["used"]
    assert meta["memory"]["core"] == "core:default"
    prompt = backend.calls[-1]
    assert "old maps" in prompt[0].content  # the core genesis, always
    assert "Lisbon" in prompt[-2].content  # the retrieved memory, in the turn's note


async def test_recency_blends_with_lexical_relevance(engine, clock):
    await run_turn(engine, "the red kite flew over the harbour", chat_id="a")
    clock.advance(timedelta(days=30))
    await run_turn(engine, "the red kite was repaired today", chat_id="a")
    meta = (await run_turn(engine, "tell me about the red kite", chat_id="b"))["meta"]
    by_age = sorted(meta["memory"]["retrieved"][:2], key=lambda m: -m["recency"])
    assert "repaired" in by_age[0]["content"] and "harbour" in by_age[1]["content"]
    assert by_age[0]["recency"] > 0.9 > 0.01 > by_age[1]["recency"]
    # Recency is a small part of the score: it breaks near-ties, never beats relevance.
    for m in by_age:
        assert m["score"] == pytest.approx(
            (m["lexical"] * (1 + 0.5 * m["entity"]) + 0.02 * m["recency"] + 0.02 * m["importance"])
            / 1.54,
            abs=1e-4,
        )


async def test_gating_packs_into_a_real_token_budget(tmp_path, clock):
    from persona.config import Settings

    settings = Settings(db_path=tmp_path / "g.db", llm={"provider": "scripted"})
    backend = ScriptedBackend(context_window=600)
    engine = Engine(settings, backend=backend, clock=clock)
    await engine.start()
    try:
        for i in range(6):
            await run_turn(engine, f"story part {i}: " + "the ship sailed on " * 12, max_tokens=100)
        meta = (await run_turn(engine, "what about the ship?", max_tokens=100))["meta"]
    finally:
        await engine.stop()
    budget = meta["token_budget"]
    # The prompt as sent plus the reply fit the window; `used` is the prompt's real size.
    assert budget["used"] + budget["reply"] <= budget["context"] == 600
    assert budget["used"] == meta["llm"]["prompt_tokens"] == backend.count_prompt(backend.calls[-1])
    reasons = {c["reason"] for c in meta["decision_candidates"]}
    assert "over budget" in reasons and "fits" in reasons
    history = [c for c in meta["decision_candidates"] if c["kind"] == "history"]
    selected = [c for c in history if c["selected"]]
    # The newest exchanges win the history slots.
    assert selected and max(c["priority"] for c in history) == selected[0]["priority"]


async def test_metacognition_telemetry_and_reward(engine):
    m1 = (await run_turn(engine, "I love sailing small boats", reward=1.0))["meta"]
    m2 = (await run_turn(engine, "I love sailing small boats", reward=1.0))["meta"]
    m3 = (await run_turn(engine, "quantum chromodynamics homework", reward=-1.0))["meta"]
    for meta in (m1, m2, m3):
        assert set(meta["telemetry"]) == {"C", "N", "M", "S", "R"}
        assert all(0.0 <= v <= 1.0 for v in meta["telemetry"].values())
    assert m1["novelty"] == 1.0 and m2["novelty"] == 0.0  # repeated message
    assert m1["telemetry"]["N"] == 0.5 and m2["telemetry"]["N"] > 0.99  # the thread goes on
    assert m2["telemetry"]["C"] == 1.0  # every word is in the previous exchange
    r1, r2, r3 = (m["telemetry"]["R"] for m in (m1, m2, m3))
    assert r2 > r1 == 0.5  # the first turn's reward has no reply to judge: ignored
    # EMA at rate 0.3 from the second turn: 0.3 * 1.0, then 0.7 * 0.3 - 0.3 (R = 0.5 + avg/2).
    assert (r2, r3) == (pytest.approx(0.65), pytest.approx(0.455))  # a negative one pulls down
    assert m1["dialogue_state"] == "S0_NEUTRAL"  # one mild cue ("i love") does not move it


async def test_turns_on_one_chat_are_serialized(engine, backend):
    from persona.llm.base import GenOptions
    from persona.pipeline.context import TurnRequest

    backend.delay_s = 0.01
    handles = [
        await engine.runner.submit(
            TurnRequest(f"message {i}", "local", "c", "default", 0.0, GenOptions())
        )
        for i in range(3)
    ]
    for h in handles:
        await h.result
    with closing(connect(engine.settings.db_path)) as conn:
        events = list(read_events(conn, stream_id="chat:c"))
    order = [(e.type, e.trace_id) for e in events if e.type in ("turn.started", "turn.completed")]
    expected = []
    for h in handles:
        expected += [("turn.started", h.trace_id), ("turn.completed", h.trace_id)]
    assert order == expected
    started = [e.payload for e in events if e.type == "turn.started"]
    assert [p.depth for p in started] == [0, 1, 2]
    # Each turn continues the one before it: a linear path through the tree.
    assert [p.parent_turn_id for p in started] == [None, handles[0].turn_id, handles[1].turn_id]


async def test_restart_keeps_every_chat_and_memory(settings, clock):
    first = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await first.start()
    await run_turn(first, "My cat is called Pixel", chat_id="a")
    await run_turn(first, "Pixel likes boxes", chat_id="b")
    await first.stop()

    second = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await second.start()
    try:
        chats = await second.store.read(queries.list_chats)
        assert {c["chat_id"] for c in chats} == {"a", "b"}
        # The core, two exchanges, and the fact "My cat is called Pixel" stated.
        assert await second.store.read(queries.count_memories, "default") == 4
        meta = (await run_turn(second, "What is my cat called?", chat_id="c"))["meta"]
        assert any("Pixel" in m["content"] for m in meta["memory"]["retrieved"])
        personas = await second.store.read(queries.list_personas)
        assert len(personas) == 1  # the default persona is created once, not per start
    finally:
        await second.stop()


async def test_a_turn_cut_off_by_a_dead_process_is_marked_failed_on_start(settings, clock):
    first = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await first.start()
    await run_turn(first, "hello", chat_id="a")
    # Simulate a crash right after the turn began: only its first event reached the log.
    await first.store.append(
        [
            NewEvent(
                payload=TurnStarted(
                    turn_id="dead",
                    chat_id="a",
                    persona_id="default",
                    user_id="local",
                    parent_turn_id=None,
                    depth=1,
                    message="lost?",
                    gen=Generation(temperature=0.7, max_tokens=100),
                    backend="scripted",
                    config_hash="x",
                ),
                stream_id="chat:a",
                actor="runner",
                trace_id="t" * 32,
            )
        ]
    )
    first.store.close()

    second = Engine(settings, backend=ScriptedBackend(), clock=clock)
    await second.start()
    try:
        turn = await second.store.read(queries.get_turn, "dead")
        assert turn["status"] == "failed" and "interrupted" in turn["error"]
        chat = await second.store.read(queries.get_chat, "a")
        history = await second.store.read(queries.active_path, chat["head_turn_id"], 10)
        assert [h.user_message for h in history] == ["hello"]
    finally:
        await second.stop()


async def test_classifier_failure_falls_back_and_is_recorded(tmp_path, clock):
    from persona.config import Settings

    backend = ScriptedBackend()
    settings = Settings(
        db_path=tmp_path / "c.db",
        llm={"provider": "scripted"},
        perception={"use_classifier": True},
    )
    engine = Engine(settings, backend=backend, clock=clock)
    await engine.start()
    try:
        backend.enqueue_structured("not json", "{still not json")
        meta = (await run_turn(engine, "What is the capital of France?"))["meta"]
        assert max(meta["intent"], key=meta["intent"].get) == "factual_query"  # cue fallback
        failures = await engine.store.read(queries.classifier_failures)
        assert len(failures) == 1
        assert failures[0]["stage"] == "perception" and failures[0]["attempts"] == 2
        assert failures[0]["trace_id"] == meta["trace_id"]

        backend.enqueue_structured(
            as_json({"primary_intent": "creative_roleplay", "confidence": 1.0})
        )
        meta = (await run_turn(engine, "What is the capital of France?"))["meta"]
        assert meta["intent"]["creative_roleplay"] > 0.5  # the classifier's answer counts
        assert len(await engine.store.read(queries.classifier_failures)) == 1
    finally:
        await engine.stop()


async def test_prompt_keeps_a_stable_prefix_for_the_cache(engine, backend):
    await run_turn(engine, "I grew up near the sea")
    await run_turn(engine, "Tell me about lighthouses")
    first, second = backend.calls[-2], backend.calls[-1]
    assert first[0] == second[0]  # identity unchanged
    assert [m.role for m in second] == ["system", "user", "assistant", "system", "user"]
    assert second[1].content == "I grew up near the sea"  # history before the note
    assert second[1:2] == first[-1:]  # the earlier message is now a stable prefix
    assert second[-1].content == "Tell me about lighthouses"


async def test_strict_servers_get_one_leading_system_message(engine, backend, monkeypatch):
    monkeypatch.setattr(type(backend), "late_system_ok", False)
    await run_turn(engine, "I grew up near the sea")
    await run_turn(engine, "I want to end my life")
    first, prompt = backend.calls[-2], backend.calls[-1]
    assert [m.role for m in prompt] == ["system", "user", "assistant", "user"]
    assert "Mira" in prompt[0].content and prompt[0] == first[0]
    # The turn's note travels with the newest user message: the prefix stays stable.
    assert "crisis line" in prompt[-1].content and prompt[-1].content.endswith("end my life")
    assert prompt[1].content == "I grew up near the sea"
