"""Metacognition and chat-state rules, each held by a test: C/N/M/S/R, states, carry-over."""

from __future__ import annotations

import itertools

import pytest
from helpers import engine_with, no_room, run_turn

from persona.config import (
    DialogueSettings,
    FailureSettings,
    GlobalStateSettings,
    SubjectivitySettings,
)
from persona.events import Budget, ChatState, Telemetry
from persona.events.state import DIALOGUE_STATES
from persona.llm.base import GenOptions
from persona.pipeline.dialogue import (
    CAREFUL_HINT,
    STATE_INTENTS,
    STYLES,
    applied_generation,
    is_careful,
    next_state,
)
from persona.pipeline.layout import PromptParts, layout
from persona.pipeline.metacognition import (
    GLOBAL_STATES,
    SUBJECTIVITY_MODES,
    decide_failure,
    decide_global,
    decide_subjectivity,
    message_share,
    refers_back,
    subjectivity_score,
)
from persona.pipeline.prompts import PromptSet
from persona.pipeline.state import degenerate_after, smooth_telemetry
from persona.storage import queries
from persona.storage.queries import PersonaRow

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
    assert meta["novelty"] == 0.0


async def test_novelty_forgets_messages_outside_its_window(tmp_path):
    async with engine_with(tmp_path, metacognition={"novelty_window": 2}) as engine:
        await run_turn(engine, "I love sailing small boats")
        await run_turn(engine, "quantum homework tonight")
        await run_turn(engine, "garden tomatoes ripening")
        meta = (await run_turn(engine, "I love sailing small boats"))["meta"]
    assert meta["novelty"] == 1.0


async def test_memory_signal_is_the_mean_score_of_the_memories_used(engine):
    await run_turn(engine, "My sister Ana moved to Lisbon", chat_id="a")
    await run_turn(engine, "Ana bakes bread on Sundays", chat_id="c")
    await run_turn(engine, "hello there, Ana", chat_id="b")
    meta = (await run_turn(engine, "Where does Ana live?", chat_id="b"))["meta"]
    retrieved = meta["memory"]["retrieved"]
    used = [m["score"] for m in retrieved if m["used"]]
    assert len(used) == 2 and used[0] != used[1]
    assert any(not m["used"] for m in retrieved)  # the exchange already in the history
    assert meta["telemetry"]["M"] == pytest.approx(sum(used) / len(used), abs=1e-4)


async def test_narrativity_is_neutral_first_then_follows_the_thread(engine):
    first = (await run_turn(engine, "I love sailing small boats"))["meta"]
    same = (await run_turn(engine, "I love sailing small boats"))["meta"]
    assert first["telemetry"]["N"] == 0.5  # no thread yet
    # Topic continuity 1 (the same words); the intents are nearly the chat's smoothed ones.
    assert same["telemetry"]["N"] > 0.99


async def test_narrativity_is_the_mean_of_topic_and_intent_continuity(engine):
    from persona.pipeline.metacognition import intent_continuity

    await run_turn(engine, "I love sailing small boats")
    before = (await run_turn(engine, "What is the capital of France?"))["meta"]
    after = (await run_turn(engine, "I am so sad and lonely tonight"))["meta"]
    topic = 1.0 - after["novelty"]
    assert topic == 0.0  # no word of it was said before
    intents = intent_continuity(before["state"]["intents"], after["intent"])
    assert 0.0 < intents < 1.0
    assert after["telemetry"]["N"] == pytest.approx((topic + intents) / 2, abs=1e-4)


def test_intent_continuity_is_a_cosine():
    from persona.pipeline.metacognition import intent_continuity

    assert intent_continuity({"a": 1.0}, {"a": 0.5}) == pytest.approx(1.0)
    assert intent_continuity({"a": 1.0}, {"b": 1.0}) == 0.0
    assert intent_continuity({"a": 1.0, "b": 1.0}, {"a": 1.0}) == pytest.approx(2**-0.5)
    assert intent_continuity({}, {"a": 1.0}) == 0.0


async def test_self_modeling_is_the_mean_of_attention_success_and_stability_budget(engine):
    first = (await run_turn(engine, "Nice weather today"))["meta"]
    # No prediction checked yet (0.5) and a full stability budget (1.0).
    assert first["attention_rate"] is None
    assert first["telemetry"]["S"] == 0.75
    second = (await run_turn(engine, "Nice weather again"))["meta"]
    budget = first["identity"]["budget"]  # the state the second turn began from
    assert second["attention_rate"] is not None
    assert second["telemetry"]["S"] == pytest.approx(
        (second["attention_rate"] + budget) / 2, abs=1e-4
    )


async def test_a_shock_spends_the_budget_and_lowers_self_modeling(engine):
    await run_turn(engine, "Nice weather today")
    shock = (await run_turn(engine, "I want to end my life"))["meta"]  # an override: a shock
    meta = (await run_turn(engine, "Nice weather again"))["meta"]
    assert shock["identity"]["budget"] < 1.0
    assert meta["telemetry"]["S"] == pytest.approx(
        (meta["attention_rate"] + shock["identity"]["budget"]) / 2, abs=1e-4
    )
    assert meta["telemetry"]["S"] < (meta["attention_rate"] + 1.0) / 2


async def test_the_safety_risk_feeds_the_collapse_risk(engine):
    calm = (await run_turn(engine, "Nice weather today"))["meta"]
    risky = (await run_turn(engine, "I want to end my life"))["meta"]
    assert calm["collapse_level"] == 0
    # One lost turn (a third of a run, 0.4 / 3) and a fifth of the safety risk.
    failure = risky["failure"]
    assert failure["lost_streak"] == 1
    expected = 0.4 / 3 + 0.2 * risky["safety"]["total_risk"]
    assert failure["collapse_risk"] == pytest.approx(expected, abs=1e-4)
    assert risky["identity_health"] == pytest.approx(1 - failure["collapse_risk"], abs=1e-4)


async def test_reward_is_an_average_that_follows_each_signal(engine):
    rs, avgs = [], []
    for reward in (1.0, 1.0, -1.0):
        meta = (await run_turn(engine, "tell me more", reward=reward))["meta"]
        rs.append(meta["telemetry"]["R"])
        avgs.append(meta["state"]["reward_avg"])
    # The first turn has no reply to judge: R stays at its neutral 0.5. A thumbs-up then
    # lifts it to 0.65; a thumbs-down pulls it below neutral.
    assert rs == [0.5, 0.65, 0.455]
    assert avgs == pytest.approx([0.0, 0.3, -0.09])


# ---- dialogue state: the machine's rules, one threshold per test ------------------------
#
# `next_state` is pure: these tests feed it intent vectors directly, so each threshold is
# held exactly (move it and the test on its edge goes red) whatever perception scores.

D = DialogueSettings()
TASK = {"task_oriented": 0.5, "factual_query": 0.1, "smalltalk": 0.4}


def vec(**scores: float) -> dict[str, float]:
    """An intent vector: the scores given (the rest count as 0)."""
    return dict(scores)


def at(state: str | None, dwell: int = 5, **more) -> ChatState:
    """A parent snapshot in `state` for `dwell` turns."""
    return ChatState(turns=dwell, dialogue_state=state, dwell=dwell if state else 0, **more)


def go(parent, raw, smoothed=None, risk=0.0, override=False, ooc=False, s=D):
    return next_state(parent, raw, raw if smoothed is None else smoothed, risk, override, ooc, s)


def test_the_seven_state_names():
    assert DIALOGUE_STATES == (
        "S0_NEUTRAL", "S1_CASUAL", "S2_TASK", "S3_EMOTIONAL", "S4_META", "S5_CREATIVE",
        "S6_SAFETY",
    )  # fmt: skip
    assert set(STATE_INTENTS) | {"S0_NEUTRAL", "S6_SAFETY"} == set(DIALOGUE_STATES)


def test_a_state_enters_at_its_enter_threshold_and_not_below():
    state, _, why = go(at(None), vec(smalltalk=0.45, factual_query=0.3))
    assert state == "S1_CASUAL" and why == ["entered S1_CASUAL: smoothed 0.45 >= enter 0.45"]
    assert go(at(None), vec(smalltalk=0.44, factual_query=0.3))[0] == "S0_NEUTRAL"


def test_task_and_factual_intents_add_up_for_the_task_state():
    assert go(at(None), vec(task_oriented=0.25, factual_query=0.25, smalltalk=0.3))[0] == "S2_TASK"


def test_a_state_holds_down_to_its_exit_threshold():
    smoothed = vec(task_oriented=0.25, smalltalk=0.6)
    raw = vec(smalltalk=0.6, task_oriented=0.4)  # not dominant
    assert go(at("S2_TASK"), raw, smoothed)[0] == "S2_TASK"
    state, _, why = go(at("S2_TASK"), raw, vec(task_oriented=0.24, smalltalk=0.6))
    assert state == "S1_CASUAL"
    assert why[0] == "left S2_TASK: smoothed 0.24 < exit 0.25"


def test_leaving_with_no_state_at_enter_goes_neutral():
    assert go(at("S2_TASK"), vec(task_oriented=0.2, smalltalk=0.4))[0] == "S0_NEUTRAL"


def test_a_state_holds_for_its_minimum_dwell():
    raw = vec(smalltalk=0.6, emotional_support=0.4)  # not dominant: margin 0.2
    assert go(at("S2_TASK", dwell=1), raw)[:1] == ("S2_TASK",)
    assert go(at("S2_TASK", dwell=2), raw)[0] == "S1_CASUAL"


def test_a_dominant_message_enters_at_once_even_inside_the_dwell():
    raw = vec(emotional_support=0.70, smalltalk=0.30)
    state, _, why = go(at("S2_TASK", dwell=1), raw)
    assert state == "S3_EMOTIONAL" and why[0].startswith("entered S3_EMOTIONAL: dominant shift")
    # Just under the score, or just under the lead: the dwell holds.
    assert go(at("S2_TASK", dwell=1), vec(emotional_support=0.69, smalltalk=0.29))[0] == "S2_TASK"
    assert go(at("S2_TASK", dwell=1), vec(emotional_support=0.70, smalltalk=0.31))[0] == "S2_TASK"


def test_a_dominant_message_does_not_return_to_the_state_just_left():
    raw = vec(emotional_support=0.9, smalltalk=0.1)
    parent = at("S2_TASK", dwell=3, left_state="S3_EMOTIONAL")
    state, _, why = go(parent, raw, vec(emotional_support=0.3, task_oriented=0.5))
    assert state == "S2_TASK" and "oscillation" in why[0]
    later = at("S2_TASK", dwell=4, left_state="S3_EMOTIONAL")
    assert go(later, raw, vec(emotional_support=0.3, task_oriented=0.5))[0] == "S3_EMOTIONAL"


def test_the_safety_override_forces_s6_from_anywhere():
    dominant = vec(creative_roleplay=1.0)
    for parent in (at(None), at("S2_TASK", dwell=1), at("S4_META"), at("S6_SAFETY")):
        for ooc in (False, True):
            state, hold, why = go(parent, dominant, risk=0.7, override=True, ooc=ooc)
            assert (state, hold) == ("S6_SAFETY", D.safety_dwell)
            assert why == ["safety override: risk 0.70 (escalated)"]


def test_s6_holds_for_its_dwell_then_leaves_only_when_the_risk_is_low():
    benign = vec(task_oriented=0.95)  # dominant: still no way out of the hold
    parent = at("S6_SAFETY", dwell=1, safety_hold=D.safety_dwell)
    held = []
    for _ in range(D.safety_dwell):
        state, hold, _ = go(parent, benign)
        held.append(state)
        parent = ChatState(turns=1, dialogue_state=state, dwell=parent.dwell + 1, safety_hold=hold)
    assert held == ["S6_SAFETY"] * D.safety_dwell and parent.safety_hold == 0
    assert go(parent, benign, risk=0.35)[0] == "S6_SAFETY"  # risk at the exit: held
    state, _, why = go(parent, benign, risk=0.34)
    assert state == "S2_TASK" and why[0] == "left S6_SAFETY: hold over and risk 0.34 < 0.35"


def test_an_out_of_character_message_enters_meta_at_once():
    assert go(at("S2_TASK", dwell=1), vec(task_oriented=0.9), ooc=True)[0] == "S4_META"


def test_settings_move_the_thresholds():
    s = DialogueSettings(enter=0.3, min_dwell=1, safety_dwell=0)
    assert go(at(None), vec(smalltalk=0.3, factual_query=0.2), s=s)[0] == "S1_CASUAL"
    raw = vec(smalltalk=0.6, emotional_support=0.4)
    assert go(at("S2_TASK", dwell=1), raw, s=s)[0] == "S1_CASUAL"
    assert go(at("S6_SAFETY", dwell=1), vec(smalltalk=0.9), s=s)[0] == "S1_CASUAL"


# ---- dialogue state through the pipeline ----------------------------------------------


@pytest.mark.parametrize(
    ("message", "state"),
    [
        ("How are you doing today? Nice weather", "S1_CASUAL"),
        ("What is the capital of France?", "S2_TASK"),
        ("I feel so lonely tonight", "S3_EMOTIONAL"),
        ("Let us talk about how this conversation works", "S4_META"),
        ("Write me a story about a dragon", "S5_CREATIVE"),
        ("I want to end my life", "S6_SAFETY"),
    ],
)
async def test_a_clear_single_message_enters_its_state_on_the_first_turn(engine, message, state):
    meta = (await run_turn(engine, message))["meta"]
    assert meta["depth"] == 0 and meta["dialogue_state"] == state
    assert meta["dialogue"]["previous"] is None and meta["dialogue"]["reasons"]
    assert meta["state"]["dialogue_state"] == state


async def test_an_out_of_character_message_is_meta_and_a_crisis_in_it_is_safety(engine):
    assert (await run_turn(engine, "(( can we slow down? ))"))["meta"][
        "dialogue_state"
    ] == "S4_META"
    meta = (await run_turn(engine, "(( honestly I want to kill myself ))"))["meta"]
    assert meta["ooc"] is True and meta["dialogue_state"] == "S6_SAFETY"


async def test_override_and_the_safety_state_agree(engine):
    for message in ("I'm sad and lonely and I want to die", "hello", "I might overdose tonight"):
        meta = (await run_turn(engine, message))["meta"]
        if meta["safety"]["override"]:
            assert meta["dialogue_state"] == "S6_SAFETY"


async def test_alternating_two_topics_does_not_flap(engine):
    topics = ("Could you summarize this article for me", "I feel so lonely tonight")
    states = [(await run_turn(engine, topics[i % 2]))["meta"]["dialogue_state"] for i in range(10)]
    switches = sum(a != b for a, b in itertools.pairwise(states))
    assert switches <= 2, states


async def test_one_benign_turn_after_a_crisis_stays_in_safety_until_the_hold_ends(engine):
    states = [(await run_turn(engine, "I want to end my life"))["meta"]["dialogue_state"]]
    for _ in range(D.safety_dwell + 1):
        states.append((await run_turn(engine, "What is the capital of France?"))["meta"])
    assert states[0] == "S6_SAFETY"
    assert [m["dialogue_state"] for m in states[1:]] == ["S6_SAFETY"] * D.safety_dwell + ["S2_TASK"]
    assert [m["state"]["safety_hold"] for m in states[1:]] == [2, 1, 0, 0]


async def test_each_state_sets_the_generation_and_the_request_still_wins(engine):
    meta = (await run_turn(engine, "What is the capital of France?", max_tokens=300))["meta"]
    gen = meta["dialogue"]["generation"]
    assert (gen["temperature"], gen["max_tokens"]) == (STYLES["S2_TASK"].temperature, 300)
    events = await engine.store.read(queries.trace_events, meta["trace_id"])
    prompt = next(e.payload for e in events if e.type == "reply.completed").prompt
    assert f"Conversation state: S2_TASK. Style: {STYLES['S2_TASK'].hint}." in prompt[-2].content
    casual = applied_generation("S1_CASUAL", GenOptions(max_tokens=300), frozenset(), False, D)
    assert (casual.temperature, casual.max_tokens) == (0.8, 200)  # the state's cap
    asked = frozenset({"temperature", "max_tokens"})
    kept = applied_generation(
        "S1_CASUAL", GenOptions(temperature=1.3, max_tokens=300), asked, True, D
    )
    assert (kept.temperature, kept.max_tokens, kept.explicit) == (1.3, 300, sorted(asked))


async def test_an_old_snapshot_reads_its_state_names_as_the_new_ones(tmp_path):
    assert ChatState(dialogue_state="smalltalk", left_state="inquiry").dialogue_state == "S1_CASUAL"
    crisis = ChatState.model_validate({"turns": 2, "dialogue_state": "crisis", "dwell": 1})
    assert (crisis.dialogue_state, crisis.safety_hold) == ("S6_SAFETY", 3)
    assert ChatState(dialogue_state="opening").dialogue_state == "S1_CASUAL"
    assert ChatState(dialogue_state="no-such-name").dialogue_state == "S0_NEUTRAL"


# ---- reward -------------------------------------------------------------------------


async def test_reward_on_the_first_turn_is_ignored_and_says_why(engine):
    meta = (await run_turn(engine, "hello there", reward=-1.0))["meta"]
    assert meta["reward"] == {
        "signal": -1.0,
        "applied": False,
        "reason": "ignored: the chat's first turn has no earlier reply to judge",
        "avg": 0.0,
    }
    assert meta["telemetry"]["R"] == 0.5 and meta["state"]["reward_avg"] == 0.0
    second = (await run_turn(engine, "hello again", reward=-1.0))["meta"]
    assert second["reward"]["applied"] is True and second["state"]["reward_avg"] == -0.3


async def test_a_negative_reward_average_makes_replies_careful_and_shorter(engine):
    engine.backend.enqueue(*[" ".join(["word"] * 400)] * 4)
    metas = [
        (await run_turn(engine, "What is the capital of France?", reward=r))["meta"]
        for r in (0.0, -1.0, 0.0, 0.0)
    ]
    carefuls = [m["dialogue"]["generation"]["careful"] for m in metas]
    # -0.3 and -0.21 are at or below careful_reward (-0.2); -0.147 is above it.
    assert [m["reward"]["avg"] for m in metas] == pytest.approx([0.0, -0.3, -0.21, -0.147])
    assert carefuls == [False, True, True, False]
    gen = metas[1]["dialogue"]["generation"]
    assert gen["max_tokens"] == round(200 * D.careful_tokens) == 120
    # The backend got the smaller cap: the careful reply is cut shorter than the first.
    tokens = [m["llm"]["completion_tokens"] for m in metas]
    assert tokens[1] <= 121 < 200 <= tokens[0]
    assert CAREFUL_HINT in gen["style_hint"]
    events = await engine.store.read(queries.trace_events, metas[1]["trace_id"])
    prompt = next(e.payload for e in events if e.type == "reply.completed").prompt
    assert CAREFUL_HINT in prompt[-2].content


# ---- chat state --------------------------------------------------------------------


async def test_the_state_counts_turns_and_dwell_in_a_state(engine):
    states = []
    for message in (
        "How are you doing today? Nice weather",
        "How are you doing today? Nice weather",
        "hello",
        "What is the capital of France?",
    ):
        states.append((await run_turn(engine, message))["meta"]["state"])
    assert [s["turns"] for s in states] == [1, 2, 3, 4]
    assert [s["dialogue_state"] for s in states] == ["S1_CASUAL"] * 3 + ["S2_TASK"]
    assert [s["dwell"] for s in states] == [1, 2, 3, 1]


async def test_the_intent_mix_is_smoothed_half_and_half(engine):
    first = (await run_turn(engine, "I feel so lonely tonight"))["meta"]
    assert first["state"]["intents"] == first["intent"]
    second = (await run_turn(engine, "What is the capital of France?"))["meta"]
    expected = {
        k: pytest.approx((first["intent"][k] + second["intent"][k]) / 2, abs=1e-6)
        for k in first["intent"]
    }
    assert second["state"]["intents"] == expected


def test_careful_starts_at_the_reward_threshold():
    assert is_careful(-0.2, D) and not is_careful(-0.1999, D)


# ---- global state, subjectivity mode, failure detection ---------------------------------
#
# The deciders are pure: these tests feed them parent snapshots and signals directly, each
# threshold on its edge (move it and the test goes red).

G, SUB, F = GlobalStateSettings(), SubjectivitySettings(), FailureSettings()


def tel(c=0.5, n=0.5, m=0.5, s=1.0, r=0.5) -> Telemetry:
    return Telemetry(C=c, N=n, M=m, S=s, R=r)


def glob(parent, dialogue_state="S0_NEUTRAL", share=0.0, squeezed=False, coherence=0.5, s=G):
    return decide_global(parent, dialogue_state, share, squeezed, coherence, s).state


def in_global(state: str, dwell: int = 5, turns: int = 5, **more) -> ChatState:
    return ChatState(turns=turns, global_state=state, global_dwell=dwell, **more)


def test_the_global_state_and_mode_names():
    assert set(GLOBAL_STATES) == {"NORMAL", "OVERLOADED", "REFLECTIVE", "SAFETY_LOCK", "SILENT"}
    assert SUBJECTIVITY_MODES == ("S0_REACTIVE", "S1_REFLECTIVE", "S2_AUTONOMOUS", "S3_SAFE")


def test_safety_lock_holds_exactly_while_s6_holds():
    assert glob(in_global("NORMAL"), "S6_SAFETY") == "SAFETY_LOCK"
    # It wins over an overload, and leaves the turn S6 ends (S6 has its own hold).
    assert glob(in_global("OVERLOADED", dwell=1), "S6_SAFETY", share=0.9) == "SAFETY_LOCK"
    left = decide_global(in_global("SAFETY_LOCK"), "S2_TASK", 0.0, False, 0.5, G)
    assert left.state == "NORMAL" and left.reasons[0].startswith("left SAFETY_LOCK")


def test_silent_comes_only_from_the_operator_field():
    assert glob(in_global("NORMAL", operator_state="SILENT"), "S6_SAFETY") == "SILENT"
    assert glob(in_global("NORMAL"), "S4_META", share=1.0) != "SILENT"


def test_overloaded_enters_at_the_message_share_and_leaves_below_its_exit():
    assert glob(in_global("NORMAL"), share=0.5) == "OVERLOADED"
    assert glob(in_global("NORMAL"), share=0.5 - 0.0001) == "NORMAL"
    # Once in, it holds down to the exit threshold (hysteresis), then lets go.
    assert glob(in_global("OVERLOADED"), share=0.3) == "OVERLOADED"
    assert glob(in_global("OVERLOADED"), share=0.3 - 0.0001) == "NORMAL"


def test_overloaded_holds_its_minimum_dwell():
    assert glob(in_global("OVERLOADED", dwell=2 - 1)) == "OVERLOADED"
    assert glob(in_global("OVERLOADED", dwell=2)) == "NORMAL"


def test_overloaded_when_no_relevant_memory_fits():
    assert glob(in_global("NORMAL"), squeezed=True) == "OVERLOADED"


def test_message_share_is_the_message_over_the_prompt_room():
    budget = Budget(context=1000, reply=200, message=400, available=0)
    assert message_share(budget) == 0.5


def test_reflective_on_the_meta_state_or_low_coherence_and_its_exit():
    assert glob(in_global("NORMAL"), "S4_META") == "REFLECTIVE"
    assert glob(in_global("NORMAL"), coherence=0.1 - 0.0001) == "REFLECTIVE"
    assert glob(in_global("NORMAL"), coherence=0.1) == "NORMAL"
    # Not before a few turns: a new chat has nothing to cohere with.
    young = in_global("NORMAL", turns=3 - 1)
    assert glob(young, coherence=0.0) == "NORMAL"
    assert glob(in_global("REFLECTIVE"), coherence=0.2 - 0.0001) == "REFLECTIVE"
    out = decide_global(in_global("REFLECTIVE"), "S2_TASK", 0.0, False, 0.2, G)
    assert out.state == "NORMAL" and out.reasons[0].startswith("left REFLECTIVE")
    assert glob(in_global("REFLECTIVE", dwell=2 - 1), coherence=1.0) == "REFLECTIVE"


def test_overload_takes_precedence_over_reflection():
    assert glob(in_global("REFLECTIVE", dwell=1), "S4_META", share=0.9) == "OVERLOADED"


def test_the_global_dwell_counts_turns_in_the_state():
    assert decide_global(in_global("NORMAL", dwell=4), "S0_NEUTRAL", 0, False, 0.5, G).dwell == 5
    assert decide_global(in_global("NORMAL", dwell=4), "S4_META", 0, False, 0.5, G).dwell == 1


def test_the_subjectivity_score_weights():
    assert subjectivity_score(tel(c=1, n=0, m=0, s=0, r=0), SUB) == 0.3
    assert subjectivity_score(tel(c=0, n=1, m=0, s=0, r=0), SUB) == 0.1
    assert subjectivity_score(tel(c=0, n=0, m=1, s=0, r=0), SUB) == 0.25
    assert subjectivity_score(tel(c=0, n=0, m=0, s=1, r=0), SUB) == 0.15
    assert subjectivity_score(tel(c=0, n=0, m=0, s=0, r=1), SUB) == 0.2
    assert subjectivity_score(tel(c=1, n=1, m=1, s=1, r=1), SUB) == 1.0


def mode(parent: ChatState, t: Telemetry, global_state="NORMAL", level=0):
    return decide_subjectivity(parent, t, global_state, level, SUB)


def in_mode(name: str, score: float, dwell: int = 5) -> ChatState:
    return ChatState(
        turns=5, subjectivity_mode=name, subjectivity_dwell=dwell, subjectivity_score=score
    )


def flat(score: float) -> Telemetry:
    """Telemetry whose weighted score is `score` (every signal equal)."""
    return tel(c=score, n=score, m=score, s=score, r=score)


def test_the_mode_score_is_smoothed_half_and_half():
    d = mode(in_mode("S1_REFLECTIVE", 0.5), flat(0.7))
    assert d.score == 0.7 and d.smoothed == 0.6


def test_modes_go_up_at_their_bands_and_down_only_past_the_hysteresis():
    assert mode(ChatState(), flat(0.45)).mode == "S1_REFLECTIVE"
    assert mode(ChatState(), flat(0.45 - 0.001)).mode == "S0_REACTIVE"
    assert mode(ChatState(), flat(0.65)).mode == "S2_AUTONOMOUS"
    low = 0.65 - 0.05
    assert mode(in_mode("S2_AUTONOMOUS", low), flat(low)).mode == "S2_AUTONOMOUS"
    assert mode(in_mode("S2_AUTONOMOUS", low - 0.002), flat(low - 0.002)).mode == "S1_REFLECTIVE"
    low = 0.45 - 0.05
    assert mode(in_mode("S1_REFLECTIVE", low), flat(low)).mode == "S1_REFLECTIVE"
    assert mode(in_mode("S1_REFLECTIVE", low - 0.002), flat(low - 0.002)).mode == "S0_REACTIVE"


def test_every_mode_holds_its_dwell_before_the_bands_move_it():
    # Entered last turn (dwell 1 < min_dwell 2): held, though the score says S2.
    held = mode(in_mode("S1_REFLECTIVE", 0.9, dwell=1), flat(0.9))
    assert (held.mode, held.dwell) == ("S1_REFLECTIVE", 2)
    assert held.reasons == ["holding S1_REFLECTIVE: dwell 1"]
    assert mode(in_mode("S1_REFLECTIVE", 0.9, dwell=2), flat(0.9)).mode == "S2_AUTONOMOUS"
    assert mode(in_mode("S0_REACTIVE", 0.9, dwell=1), flat(0.9)).mode == "S0_REACTIVE"
    # The hold never keeps a persona out of S3_SAFE.
    assert mode(in_mode("S1_REFLECTIVE", 0.1, dwell=1), flat(0.1)).mode == "S3_SAFE"


def test_s3_safe_enters_on_a_low_score_a_lock_or_collapse_and_has_an_exit():
    assert mode(ChatState(), flat(0.2 - 0.001)).mode == "S3_SAFE"
    assert mode(ChatState(), flat(0.2)).mode == "S0_REACTIVE"
    assert mode(ChatState(), flat(0.9), global_state="SAFETY_LOCK").mode == "S3_SAFE"
    assert mode(ChatState(), flat(0.9), level=4).mode == "S3_SAFE"
    assert mode(ChatState(), flat(0.9), level=3).mode == "S2_AUTONOMOUS"
    # The exit: after its dwell, once the smoothed score is back at safe_exit.
    assert mode(in_mode("S3_SAFE", 0.9, dwell=2 - 1), flat(0.9)).mode == "S3_SAFE"
    below = 0.3 - 0.002
    assert mode(in_mode("S3_SAFE", below), flat(below)).mode == "S3_SAFE"
    out = mode(in_mode("S3_SAFE", 0.3), flat(0.3))
    assert out.mode == "S0_REACTIVE" and out.reasons[0].startswith("left S3_SAFE")


def fail(parent, t=None, risk=0.0, missing=False, s=F):
    t = t or tel()
    return decide_failure(parent, t, risk, missing, s)


LOST = tel(c=0.1, m=0.1)


def test_a_lost_turn_needs_low_coherence_and_low_memory_after_the_first_turn():
    assert fail(ChatState(turns=1), LOST).lost_streak == 1
    assert fail(ChatState(turns=0), LOST).lost_streak == 0
    assert fail(ChatState(turns=1, lost_streak=2), LOST).lost_streak == 3
    assert fail(ChatState(turns=1, lost_streak=2), tel(c=0.15, m=0)).lost_streak == 0
    assert fail(ChatState(turns=1, lost_streak=2), tel(c=0, m=0.2)).lost_streak == 0


def test_health_and_the_collapse_levels():
    fine = fail(ChatState(turns=1), tel())
    assert (fine.health, fine.level, fine.recovery, fine.disclose) == (1.0, 0, None, False)
    # A full lost run costs 0.4: level 2, no recovery yet.
    lost = fail(ChatState(turns=5, lost_streak=3 - 1), LOST)
    assert (lost.health, lost.level, lost.recovery) == (0.6, 2, None)
    # ... with one degenerate reply (half a run, 0.2): level 3, auto-recovery to S4_META.
    worse = fail(ChatState(turns=5, lost_streak=3 - 1, degenerate_streak=1), LOST)
    assert (worse.collapse_risk, worse.level, worse.recovery) == (0.6, 3, "S4_META")
    both = fail(ChatState(turns=5, lost_streak=9, degenerate_streak=2), LOST)
    assert (both.health, both.level) == (0.2, 4)
    # The safety risk counts for a fifth.
    assert fail(ChatState(turns=1), risk=1.0).collapse_risk == 0.2
    assert fail(ChatState(turns=1), risk=0.5).collapse_risk == 0.1


def test_disclosure_on_low_health_or_a_reference_to_missing_memory():
    parent = ChatState(turns=5, lost_streak=3 - 1)
    edge = fail(parent, LOST, risk=0.5)  # 1 - 0.4 - 0.2 * 0.5
    assert edge.health == 0.5 and not edge.disclose
    assert fail(parent, LOST, risk=0.55).disclose
    worse = fail(ChatState(turns=5, lost_streak=3 - 1, degenerate_streak=1), LOST)
    assert worse.health < 0.5 and worse.disclose
    assert fail(ChatState(turns=1), missing=True).disclose


@pytest.mark.parametrize(
    "message",
    [
        "Do you remember my dog?",
        "Like I said last time",
        "この前の話、楽しかった",
        "覚えてる？",
        "前回の続き",
    ],
)
def test_a_message_that_refers_back(message):
    assert refers_back(message)


@pytest.mark.parametrize("message", ["What is the capital of France?", "今日は晴れです"])
def test_a_message_that_does_not_refer_back(message):
    assert not refers_back(message)


def test_auto_recovery_forces_meta_but_not_over_safety():
    state, _, reasons = next_state(at("S2_TASK"), TASK, TASK, 0.0, False, False, D, True)
    assert state == "S4_META" and reasons[0].startswith("auto-recovery")
    assert next_state(at("S2_TASK"), TASK, TASK, 0.9, True, False, D, True)[0] == "S6_SAFETY"
    assert (
        next_state(at("S6_SAFETY", safety_hold=2), TASK, TASK, 0.0, False, False, D, True)[0]
        == "S6_SAFETY"
    )


def test_telemetry_is_smoothed_half_and_half_per_chat():
    assert smooth_telemetry({}, tel(c=0.8), 0.5) == tel(c=0.8)
    prev = tel(c=0.2, n=0.0, m=0.0, s=1.0, r=0.5).model_dump()
    assert smooth_telemetry(prev, tel(c=0.8, n=1.0), 0.5) == tel(c=0.5, n=0.5, m=0.25)


def test_degenerate_replies_count_in_a_run_and_a_clean_one_ends_it():
    assert degenerate_after(0, ["loop"]) == 1
    assert degenerate_after(1, ["repeat", "label"]) == 2
    assert degenerate_after(1, ["cut"]) == 2
    assert degenerate_after(2, ["label"]) == 0


def test_gating_reserves_room_for_the_disclosure_line():
    # Gating and the message-room check size the note with the parts' defaults: the
    # disclosure line is in it, so a turn that needs it still fits.
    persona = PersonaRow("p", "Mira", "", "", {}, "", "", 0)
    note = layout(PromptParts(persona=persona, message="hi"), PromptSet.load(), True)[1]
    assert "never invent them." in note.content


async def test_a_question_about_the_past_without_memory_gets_the_disclosure_line(engine, backend):
    meta = (await run_turn(engine, "Do you remember what I told you about my dog?"))["meta"]
    assert meta["failure"]["memory_missing"] and meta["failure"]["disclose"]
    assert "never invent them." in backend.calls[-1][-2].content
    await run_turn(engine, "What is the capital of France?")
    assert "never invent them." not in backend.calls[-1][-2].content


async def test_a_question_about_a_fact_still_in_view_gets_no_disclosure(engine, backend):
    await run_turn(engine, "My dog Biscuit loves the beach")
    meta = (await run_turn(engine, "Do you remember my dog Biscuit?"))["meta"]
    # The first exchange is in the selected history: the fact is in view, not missing.
    assert meta["telemetry"]["C"] >= 0.15
    assert not meta["failure"]["memory_missing"] and not meta["failure"]["disclose"]
    assert "never invent them." not in backend.calls[-1][-2].content


def test_memory_missing_needs_a_reference_no_memory_and_low_coherence():
    from persona.events import Budget, Workspace
    from persona.pipeline.metacognition import memory_missing

    budget = Budget(context=100, reply=10, message=5, available=85)
    empty = Workspace(budget=budget, candidates=[], selected_memories=[], selected_history=[])
    with_memory = empty.model_copy(update={"selected_memories": ["m1"]})
    ask = "Do you remember my dog?"
    assert memory_missing(ask, empty, tel(c=0.149), F)
    assert not memory_missing(ask, empty, tel(c=0.15), F)
    assert not memory_missing(ask, with_memory, tel(c=0.0), F)
    assert not memory_missing("Tell me about dogs", empty, tel(c=0.0), F)


async def test_meta_shows_raw_and_smoothed_telemetry_and_the_new_states(engine):
    first = (await run_turn(engine, "I love sailing small boats"))["meta"]
    assert first["telemetry_smoothed"] == first["telemetry"]
    meta = (await run_turn(engine, "(( I love sailing small boats ))"))["meta"]
    v1 = meta["meta_v1"]
    assert v1["global_state"] == "REFLECTIVE" == meta["global_transition"]["state"]
    assert v1["subjectivity_mode"] == meta["subjectivity"]["mode"]
    assert v1["identity_health"] == meta["failure"]["health"]
    assert v1["collapse_level"] == meta["failure"]["level"]
    raw, before = meta["telemetry"], first["telemetry"]
    assert (raw["C"], before["C"]) == (1.0, 0.0)  # the words were said before
    assert meta["telemetry_smoothed"] == {k: round(0.5 * raw[k] + 0.5 * before[k], 4) for k in raw}
    assert meta["state"]["global_state"] == "REFLECTIVE" and meta["state"]["global_dwell"] == 1


async def test_after_a_crisis_the_lock_and_the_safe_mode_both_end(engine):
    metas = [(await run_turn(engine, "I want to end my life"))["meta"]]
    for _ in range(3 + 2):
        metas.append((await run_turn(engine, "What is the capital of France?"))["meta"])
    glob_states = [m["global_state"] for m in metas]
    modes = [m["subjectivity_mode"] for m in metas]
    assert glob_states == ["SAFETY_LOCK"] * (3 + 1) + ["NORMAL"] * 2
    assert modes[: 3 + 1] == ["S3_SAFE"] * (3 + 1)
    assert modes[-1] != "S3_SAFE", modes


async def test_degenerate_replies_in_a_row_raise_the_collapse_risk_end_to_end(engine, backend):
    # A reply the check flags as a loop, three times running: the chat state counts the
    # run and the next turns' failure detection reads it.
    loop = "I am here. " * 12
    backend.enqueue(loop, loop, loop, "Fine.")
    levels, streaks = [], []
    for message in ("hello", "hello again", "still there?", "ok"):
        result = await run_turn(engine, message, chat_id="loops")
        levels.append(result["meta"]["meta_v1"]["collapse_level"])
        state = await engine.store.read(queries.chat_state, result["turn_id"])
        streaks.append(state.degenerate_streak)
    assert streaks == [1, 2, 3, 0]  # a whole reply ends the run
    # Read from the parent's state: the second turn sees one, the third two (the cap).
    assert levels[0] == 0 and levels[2] > levels[1] > levels[0]


# ---- terms in every script -------------------------------------------------------------


def test_content_words_keep_accents_and_drop_short_and_stop_words():
    from persona.pipeline.text import content_words

    assert content_words("Do you remember my dog? Café au lait, niño") == {
        "remember",
        "dog",
        "café",
        "lait",
        "niño",
    }


def test_japanese_terms_are_bigrams_without_pure_hiragana():
    from persona.pipeline.text import cjk_terms, content_words

    # 前回話したこと: 前回, 回話, 話し kept; した, たこ, こと (hiragana only) dropped.
    assert cjk_terms("前回話したこと、覚えてる？") == {"前回", "回話", "話し", "覚え"}
    assert cjk_terms("森") == {"森"} and cjk_terms("は") == set()
    # Full-width Latin is normalized, and Latin words and Japanese terms mix.
    assert content_words("ＰＡＳＴＡ　パスタ") == {"pasta", "パス", "スタ"}


async def test_a_japanese_message_repeated_is_not_novel_and_in_context(engine):
    await run_turn(engine, "パスタの作り方を教えて")
    meta = (await run_turn(engine, "パスタの作り方を教えて"))["meta"]
    assert meta["novelty"] == 0.0
    assert meta["telemetry"]["C"] == 1.0  # every term is in the previous exchange
