"""Metacognition and chat-state rules, each held by a test: C/N/M/S/R, states, carry-over."""

from __future__ import annotations

import pytest
from helpers import engine_with, no_room, run_turn

# ---- telemetry ---------------------------------------------------------------------


async def test_a_message_without_content_words_is_neither_coherent_nor_not(engine):
    await run_turn(engine, "I love sailing small boats")
    meta = (await run_turn(engine, "ok"))["meta"]
    assert meta["telemetry"]["C"] == 0.5


async def test_coherence_counts_only_what_made_it_into_the_prompt(tmp_path):
    message = "I love sailing small boats"
    max_tokens = await no_room(tmp_path, message)
    async with engine_with(tmp_path) as engine:
        await run_turn(engine, message)
        meta = (await run_turn(engine, message, max_tokens=max_tokens))["meta"]
    assert not any(c["selected"] for c in meta["decision_candidates"])
    # Every word was said before, but none of it is in this prompt.
    assert meta["telemetry"]["C"] == 0.0
    assert meta["telemetry"]["M"] == 0.0


async def test_coherence_counts_the_words_of_a_remembered_memory(engine):
    await run_turn(engine, "My sister Ana moved to Lisbon", chat_id="a")
    meta = (await run_turn(engine, "Have you ever seen Lisbon?", chat_id="b"))["meta"]
    assert meta["memory"]["retrieved"][0]["used"]
    assert meta["telemetry"]["C"] == pytest.approx(1 / 3, abs=1e-4)  # lisbon of ever/seen/lisbon


async def test_a_message_repeated_a_few_turns_later_is_not_novel(engine):
    await run_turn(engine, "I love sailing small boats")
    for other in ("quantum homework tonight", "garden tomatoes ripening", "jazz records"):
        await run_turn(engine, other)
    meta = (await run_turn(engine, "I love sailing small boats"))["meta"]
    assert meta["telemetry"]["N"] == 0.0


async def test_novelty_forgets_messages_outside_its_window(tmp_path):
    async with engine_with(tmp_path, metacognition={"novelty_window": 2}) as engine:
        await run_turn(engine, "I love sailing small boats")
        await run_turn(engine, "quantum homework tonight")
        await run_turn(engine, "garden tomatoes ripening")
        meta = (await run_turn(engine, "I love sailing small boats"))["meta"]
    assert meta["telemetry"]["N"] == 1.0


async def test_memory_signal_is_the_mean_score_of_the_memories_used(engine):
    await run_turn(engine, "My sister Ana moved to Lisbon", chat_id="a")
    await run_turn(engine, "Ana bakes bread on Sundays", chat_id="c")
    await run_turn(engine, "hello there", chat_id="b")
    meta = (await run_turn(engine, "Where does Ana live?", chat_id="b"))["meta"]
    retrieved = meta["memory"]["retrieved"]
    used = [m["score"] for m in retrieved if m["used"]]
    assert len(used) == 2 and used[0] != used[1]
    assert any(not m["used"] for m in retrieved)  # the exchange already in the history
    assert meta["telemetry"]["M"] == pytest.approx(sum(used) / len(used), abs=1e-4)


async def test_safety_signal_falls_with_the_risk(engine):
    calm = (await run_turn(engine, "Nice weather today"))["meta"]
    risky = (await run_turn(engine, "I want to end my life"))["meta"]
    assert calm["telemetry"]["S"] == 1.0
    assert risky["telemetry"]["S"] == pytest.approx(1 - risky["safety"]["total_risk"], abs=1e-4)
    assert risky["telemetry"]["S"] < 0.1


async def test_reward_is_an_average_that_follows_each_signal(engine):
    rs, avgs = [], []
    for reward in (1.0, 1.0, -1.0):
        meta = (await run_turn(engine, "tell me more", reward=reward))["meta"]
        rs.append(meta["telemetry"]["R"])
        avgs.append(meta["state"]["reward_avg"])
    # One thumbs-up lifts R from its neutral 0.5 to 0.65; a second adds less; a thumbs-down
    # pulls it back most of the way.
    assert rs == [0.65, 0.755, 0.5285]
    assert avgs == pytest.approx([0.3, 0.51, 0.057])


# ---- dialogue state ----------------------------------------------------------------


async def test_a_risk_above_the_threshold_is_a_crisis_whatever_the_intent(engine):
    meta = (
        await run_turn(
            engine, "I'm sad and lonely and depressed, I feel hopeless, I might overdose"
        )
    )["meta"]
    assert meta["top_intent"] == "emotional_support"
    assert meta["dialogue_state"] == "crisis"


async def test_a_crisis_out_of_character_is_still_a_crisis(engine):
    meta = (await run_turn(engine, "(( honestly I want to kill myself ))"))["meta"]
    assert meta["ooc"] is True
    assert meta["dialogue_state"] == "crisis"


@pytest.mark.parametrize("farewell", ["Bye!", "Goodbye now", "Goodnight!", "see you later"])
async def test_a_farewell_closes_the_conversation(engine, farewell):
    await run_turn(engine, "What is the capital of France?")
    meta = (await run_turn(engine, farewell))["meta"]
    assert meta["dialogue_state"] == "closing"


async def test_a_farewell_closes_even_the_first_turn(engine):
    assert (await run_turn(engine, "bye"))["meta"]["dialogue_state"] == "closing"


@pytest.mark.parametrize(
    ("message", "state"),
    [("How are you doing today?", "opening"), ("Who are you?", "opening")],
)
async def test_smalltalk_or_meta_on_the_first_turn_is_an_opening(engine, message, state):
    meta = (await run_turn(engine, message))["meta"]
    assert meta["depth"] == 0 and meta["dialogue_state"] == state


async def test_other_intents_on_the_first_turn_keep_their_own_state(engine):
    meta = (await run_turn(engine, "What is the capital of France?"))["meta"]
    assert meta["dialogue_state"] == "inquiry"


@pytest.mark.parametrize(
    ("message", "state"),
    [
        ("How are you doing today?", "smalltalk"),
        ("Who are you?", "meta"),
        ("I feel so lonely tonight", "support"),
        ("Could you summarize this article for me", "task"),
        ("What is the capital of France?", "inquiry"),
        ("Can you pretend to be a pirate captain", "roleplay"),
        ("My name is Sam and I live in Porto", "sharing"),
        ("I'm sad and lonely and I want to die", "crisis"),
    ],
)
async def test_after_the_first_turn_the_state_follows_the_intent(engine, message, state):
    await run_turn(engine, "hello")
    meta = (await run_turn(engine, message))["meta"]
    assert meta["depth"] == 1 and meta["dialogue_state"] == state


# ---- chat state --------------------------------------------------------------------


async def test_the_state_counts_turns_and_dwell_in_a_state(engine):
    states = []
    for message in (
        "How are you doing today?",
        "How are you doing today?",
        "Nice weather today",
        "What is the capital of France?",
    ):
        states.append((await run_turn(engine, message))["meta"]["state"])
    assert [s["turns"] for s in states] == [1, 2, 3, 4]
    assert [s["dialogue_state"] for s in states] == ["opening", "smalltalk", "smalltalk", "inquiry"]
    assert [s["dwell"] for s in states] == [1, 1, 2, 1]


async def test_the_intent_mix_is_smoothed_half_and_half(engine):
    first = (await run_turn(engine, "I feel so lonely tonight"))["meta"]
    assert first["state"]["intents"] == first["intent"]
    second = (await run_turn(engine, "What is the capital of France?"))["meta"]
    expected = {
        k: pytest.approx((first["intent"][k] + second["intent"][k]) / 2, abs=1e-6)
        for k in first["intent"]
    }
    assert second["state"]["intents"] == expected
