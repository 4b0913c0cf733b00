"""Post-reply and speaker rules, each held by a test: memory, affinity, rows, prompt layout."""

from __future__ import annotations

import pytest
from helpers import engine_with, no_room, run_turn

from persona.llm.scripted import ScriptedBackend
from persona.storage import queries

# ---- post-reply --------------------------------------------------------------------


async def test_the_episodic_memory_holds_both_sides_of_the_exchange(engine, backend):
    backend.enqueue("The lighthouse is painted red and white.")
    told = await run_turn(engine, "Describe the lighthouse", chat_id="a")
    assert told["meta"]["memory"]["written"] == f"ep:{told['turn_id']}"
    # Only the persona's reply used the word "painted": the memory still finds it.
    meta = (await run_turn(engine, "was anything painted", chat_id="b"))["meta"]
    top = meta["memory"]["retrieved"][0]
    assert top["memory_id"] == f"ep:{told['turn_id']}" and top["lexical"] == 1.0
    # What was said, without speaker labels (who said it is kept as data, in `said`).
    assert top["content"] == "Describe the lighthouse\nThe lighthouse is painted red and white."


async def test_a_memory_keeps_the_importance_perceived_when_it_was_said(engine):
    sad = await run_turn(engine, "I feel so lonely tonight, my dog Rex died", chat_id="a")
    meta = (await run_turn(engine, "Rex", chat_id="b"))["meta"]
    remembered = next(
        m for m in meta["memory"]["retrieved"] if m["memory_id"] == f"ep:{sad['turn_id']}"
    )
    assert remembered["importance"] == sad["meta"]["importance"] != 0.5


async def test_affinity_starts_at_zero_and_follows_the_reward(engine):
    # A chat's first turn has no reply for its reward to judge: no edge moves yet.
    first = (await run_turn(engine, "tell me more", reward=1.0))["meta"]
    assert first["edges"] == []
    weights = []
    for reward in (0.0, 1.0, 1.0, -1.0):
        meta = (await run_turn(engine, "tell me more", reward=reward))["meta"]
        (edge,) = meta["edges"]
        assert (edge["src"], edge["rel"], edge["dst"]) == (
            "persona:default",
            "talks_with",
            "user:local",
        )
        weights.append(edge["weight"])
    # A neutral first turn leaves a neutral edge; each reward moves it a fifth of the way.
    assert weights == [0.0, 0.2, 0.36, 0.088]


async def test_affinity_is_shared_by_every_chat_with_the_persona(engine):
    for chat in ("a", "b"):  # each chat's first turn judges nothing
        await run_turn(engine, "hi", chat_id=chat)
    await run_turn(engine, "hi", chat_id="a", reward=1.0)
    meta = (await run_turn(engine, "hi", chat_id="b", reward=1.0))["meta"]
    assert meta["edges"][0]["weight"] == 0.36


async def test_the_telemetry_row_is_the_turns_telemetry_and_state(engine):
    await run_turn(engine, "Hello there")
    meta = (await run_turn(engine, "What is the capital of France?", reward=1.0))["meta"]
    rows = await engine.store.read(queries.telemetry_history, "chat-1", 10)
    assert len(rows) == 2
    row = next(r for r in rows if r["turn_id"] == meta["turn_id"])
    t = meta["telemetry"]
    assert (row["c"], row["n"], row["m"], row["s"], row["r"]) == (
        t["C"],
        t["N"],
        t["M"],
        t["S"],
        t["R"],
    )
    assert row["r"] == 0.65
    assert row["dialogue_state"] == meta["dialogue_state"] == "S2_TASK"
    assert row["turn_id"] == meta["turn_id"]


# ---- speaker -----------------------------------------------------------------------


async def test_the_prompt_holds_only_what_gating_selected(tmp_path):
    max_tokens = await no_room(tmp_path, "Tell me about Lisbon")
    async with engine_with(tmp_path) as engine:
        backend = engine.backend
        assert isinstance(backend, ScriptedBackend)
        await run_turn(engine, "My sister Ana moved to Lisbon", chat_id="a")
        await run_turn(engine, "I collect old maps of Lisbon", chat_id="b")
        message = "Tell me about Lisbon"
        meta = (await run_turn(engine, message, chat_id="b", max_tokens=max_tokens))["meta"]
    assert meta["memory"]["retrieved"] and not any(m["used"] for m in meta["memory"]["retrieved"])
    prompt = backend.calls[-1]
    # No room: neither the earlier exchange nor any memory is shown, only identity and note.
    assert [m.role for m in prompt] == ["system", "system", "user"]
    assert "Mira" in prompt[0].content
    assert "Lisbon" not in prompt[1].content


async def test_the_note_names_the_conversation_state(engine, backend):
    await run_turn(engine, "What is the capital of France?")
    note = backend.calls[-1][-2]
    assert note.role == "system"
    # The state and the style it asks for.
    assert "Conversation state: S2_TASK. Style: Precise: answer first, then details." in (
        note.content
    )


async def test_a_crisis_out_of_character_gets_the_safety_note_only(engine, backend):
    await run_turn(engine, "(( honestly I want to kill myself ))")
    note = backend.calls[-1][-2].content
    assert "crisis line" in note
    assert "out of character" not in note


@pytest.mark.parametrize("late", [True, False])
async def test_identity_comes_first_and_the_turn_note_sits_by_the_message(
    engine, backend, monkeypatch, late
):
    monkeypatch.setattr(type(backend), "late_system_ok", late)
    await run_turn(engine, "Tell me about lighthouses")
    await run_turn(engine, "(( are you an AI? ))")
    prompt = backend.calls[-1]
    # The identity never carries the per-turn note: it stays a stable prefix for the cache.
    assert prompt[0].role == "system" and prompt[0].content.startswith("You are Mira.")
    assert "out of character" not in prompt[0].content
    # The earlier exchange follows as it was said, without that turn's note.
    assert [m.role for m in prompt[1:3]] == ["user", "assistant"]
    assert prompt[1].content == "Tell me about lighthouses"
    assert prompt[-1].role == "user" and prompt[-1].content.endswith("(( are you an AI? ))")
    notes = [m for m in prompt if "out of character" in m.content]
    # A late system note where the server allows one, else inside the newest message.
    assert notes == [prompt[-2] if late else prompt[-1]]
    assert [m.role for m in prompt].count("system") == (2 if late else 1)
