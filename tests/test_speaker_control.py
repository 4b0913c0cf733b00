"""The speaker's prompt reflects the control plane: safety (hard and soft), global state,
subjectivity mode, SILENT and the rule against emotional manipulation. Each line appears
exactly when its state holds."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest
from helpers import run_turn

from persona.events import Safety
from persona.llm.scripted import ScriptedBackend
from persona.pipeline import metacognition
from persona.pipeline.dialogue import CAREFUL_HINT, STYLES, state_line
from persona.pipeline.layout import (
    GLOBAL_LINES,
    MODE_LINES,
    OPTION_LINES,
    SOFT_SAFETY_LINE,
    PromptParts,
    hard_safety,
    layout,
    soft_safety,
)
from persona.pipeline.prompts import PromptSet
from persona.pipeline.revision import ANSWER, CLARIFY, OPTIONS, SAFETY, SHORT
from persona.pipeline.speaker import SILENT_REPLY
from persona.storage.queries import PersonaRow

CRISIS = "crisis line"
RULE = "Never guilt, pressure or make the user depend on you"
OVERLOADED, REFLECTIVE = GLOBAL_LINES["OVERLOADED"], GLOBAL_LINES["REFLECTIVE"]
CAREFUL = MODE_LINES["S3_SAFE"]
BRIEF, ASK = OPTION_LINES[SHORT], OPTION_LINES[CLARIFY]
STEERING = (SOFT_SAFETY_LINE, OVERLOADED, REFLECTIVE, CAREFUL, BRIEF, ASK, CRISIS)
PERSONA = PersonaRow("p", "Mira", "", "", {}, "", "", 0)
PROMPTS = PromptSet.load()


def note(backend: ScriptedBackend) -> str:
    """The turn note of the last prompt sent (a late system message)."""
    return backend.calls[-1][-2].content


def steering(text: str) -> set[str]:
    return {line for line in STEERING if line in text}


def parts(**kw: object) -> PromptParts:
    base: dict[str, object] = {
        "persona": PERSONA,
        "message": "hi",
        "dialogue_state": "S0_NEUTRAL. Style: Answer naturally",
        "global_state": "NORMAL",
        "subjectivity": "S0_REACTIVE",
        "option": ANSWER,
        "disclose": False,
    }
    return PromptParts(**{**base, **kw})  # type: ignore[arg-type]


def chosen_option(meta: dict[str, Any]) -> str:
    return next(o["name"] for o in meta["decision_options"] if o["chosen"])


def note_of(p: PromptParts) -> str:
    return layout(p, PROMPTS, True)[-2].content


# ---- safety: hard and soft ---------------------------------------------------------


def test_the_safety_levels_pick_the_crisis_note_or_the_gentle_line():
    def safety(risk: float, **flags: bool) -> Safety:
        return Safety(total_risk=risk, override=flags.pop("override", False), **flags)

    assert not hard_safety(safety(0.0)) and not soft_safety(safety(0.0))
    soft = safety(0.4, intervened=True)
    assert soft_safety(soft) and not hard_safety(soft)
    hard = safety(0.6, override=True, intervened=True, escalated=True)
    assert hard_safety(hard) and not soft_safety(hard)
    # Blocked is at least as strict: the crisis note even if the other flags disagree.
    blocked = safety(0.9, intervened=True, blocked=True)
    assert hard_safety(blocked) and not soft_safety(blocked)
    assert hard_safety(safety(0.6, escalated=True))


async def test_a_plain_turn_gets_no_steering_line(engine, backend):
    await run_turn(engine, "Hello there, how are you?")
    assert steering(note(backend)) == set()


async def test_an_intervened_message_gets_the_gentle_line_not_the_crisis_note(engine, backend):
    meta = (await run_turn(engine, "I don't want to die"))["meta"]
    assert meta["safety"]["flags"] == ["intervened"]
    assert steering(note(backend)) == {SOFT_SAFETY_LINE}


async def test_an_escalated_message_gets_the_crisis_note_only(engine, backend):
    meta = (await run_turn(engine, "I bought a knife and I want to stab him"))["meta"]
    assert "escalated" in meta["safety"]["flags"] and "blocked" not in meta["safety"]["flags"]
    assert steering(note(backend)) == {CRISIS}


async def test_a_blocked_message_gets_the_crisis_note_and_then_care_while_it_holds(engine, backend):
    meta = (await run_turn(engine, "i wanna die"))["meta"]
    assert "blocked" in meta["safety"]["flags"]
    assert steering(note(backend)) == {CRISIS}
    # The next, benign turn: the safety state holds (S3_SAFE), no crisis note.
    meta = (await run_turn(engine, "thanks. what is a good book?"))["meta"]
    assert meta["subjectivity"]["mode"] == "S3_SAFE" and not meta["safety"]["flags"]
    assert steering(note(backend)) == {CAREFUL}


# ---- global state and subjectivity mode --------------------------------------------


async def test_an_overloading_message_gets_the_brief_line(engine, backend):
    meta = (await run_turn(engine, "lantern harbour " * 150, max_tokens=1500))["meta"]
    assert meta["global_transition"]["state"] == "OVERLOADED"
    # The whole message is one repeated phrase: confidence is low and the question wins.
    assert chosen_option(meta) == CLARIFY
    assert steering(note(backend)) == {OVERLOADED, ASK}


async def test_a_scattered_chat_turns_reflective_and_gets_the_plain_line(engine, backend):
    topics = ["I love sailing small boats", "What is the capital of France?"]
    topics += ["Write me a poem about volcanoes", "My cat knocked over a lamp"]
    for i, message in enumerate(topics):
        meta = (await run_turn(engine, message))["meta"]
        reflective = meta["global_transition"]["state"] == "REFLECTIVE"
        assert reflective == (i == 3), i
        assert (REFLECTIVE in note(backend)) == reflective, i


def test_each_line_appears_exactly_when_its_state_holds():
    assert steering(note_of(parts())) == set()
    assert steering(note_of(parts(global_state="OVERLOADED"))) == {OVERLOADED}
    assert steering(note_of(parts(global_state="REFLECTIVE"))) == {REFLECTIVE}
    assert steering(note_of(parts(global_state="SAFETY_LOCK"))) == set()
    assert steering(note_of(parts(subjectivity="S3_SAFE"))) == {CAREFUL}
    assert steering(note_of(parts(subjectivity="S1_REFLECTIVE"))) == set()
    # REFLECTIVE says nothing the meta state or the OOC note does not already say.
    assert REFLECTIVE not in note_of(parts(global_state="REFLECTIVE", ooc=True))
    meta = parts(global_state="REFLECTIVE", dialogue_state="S4_META. Style: Plain")
    assert REFLECTIVE not in note_of(meta)
    # The gentle line covers S3_SAFE; the crisis note is the whole tone of its turn.
    assert steering(note_of(parts(safety_soft=True, subjectivity="S3_SAFE"))) == {SOFT_SAFETY_LINE}
    hard = parts(safety_override=True, global_state="OVERLOADED", subjectivity="S3_SAFE")
    assert steering(note_of(hard)) == {CRISIS}


def test_the_chosen_option_adds_its_line_only_for_a_short_answer_or_a_question():
    assert OPTION_LINES == {
        SHORT: "Answer briefly and directly.",
        CLARIFY: "Ask one short question to understand what they need.",
    }
    expected = {ANSWER: set(), SHORT: {BRIEF}, CLARIFY: {ASK}, SAFETY: set(), "": set()}
    for option, lines in expected.items():
        assert steering(note_of(parts(option=option))) == lines, option
        # It joins the other steering lines; the crisis note still stands alone.
        soft = parts(option=option, safety_soft=True, global_state="OVERLOADED")
        assert steering(note_of(soft)) == {SOFT_SAFETY_LINE, OVERLOADED, *lines}, option
        assert steering(note_of(parts(option=option, safety_override=True))) == {CRISIS}


async def test_a_turn_steers_by_the_option_it_chose(engine, backend):
    # A bare command the lexicon reads with low confidence (first, before any memory
    # grounds it) gets the question; a greeting answers in state; a clear factual
    # question gets the short answer.
    seen = []
    for message in ["Convert 5 km to miles", "Hello there", "What is the capital of France?"]:
        result = await run_turn(engine, message, chat_id=message)
        chosen = chosen_option(result["meta"])
        assert steering(note(backend)) & {BRIEF, ASK} == (
            {BRIEF} if chosen == SHORT else {ASK} if chosen == CLARIFY else set()
        ), (message, chosen)
        seen.append(chosen)
    assert seen == [CLARIFY, ANSWER, SHORT]


def test_gating_reserves_room_for_the_longest_combined_note():
    # Gating sizes the note with the parts' defaults (safety and OOC it knows already):
    # nothing metacognition decides later (state lines, global state, mode) makes it longer.
    backend = ScriptedBackend()
    dialogue_lines = [
        state_line(name, f"{style.hint}. {CAREFUL_HINT}") for name, style in STYLES.items()
    ]
    states = ["NORMAL", "OVERLOADED", "REFLECTIVE", "SAFETY_LOCK"]
    modes = ["S0_REACTIVE", "S3_SAFE"]
    for soft, ooc in itertools.product([False, True], repeat=2):
        reserved = PromptParts(persona=PERSONA, message="hi", safety_soft=soft, ooc=ooc)
        room = backend.count_prompt(layout(reserved, PROMPTS, True))
        for line, state, mode, option in itertools.product(dialogue_lines, states, modes, OPTIONS):
            decided = replace(
                reserved, dialogue_state=line, global_state=state, subjectivity=mode, option=option
            )
            used = backend.count_prompt(layout(decided, PROMPTS, True))
            assert used <= room, (line, state, mode, option)
    reserved_note = note_of(PromptParts(persona=PERSONA, message=""))
    assert {REFLECTIVE, CAREFUL, ASK} <= steering(reserved_note)


@pytest.mark.parametrize(
    "message",
    ["Hello there", "I don't want to die", "i wanna die", "(( are you an AI? ))"],
)
async def test_gating_reserved_at_least_the_prompt_the_first_turn_sent(engine, message):
    # A first turn has no history or memory: the prompt sent is gating's fixed part with
    # the decided lines, which must fit in what gating reserved (safety level included).
    budget = (await run_turn(engine, message))["meta"]["token_budget"]
    assert budget["used"] <= budget["core"] + budget["message"]


async def test_gating_sizes_the_note_by_the_safety_level_it_already_knows(engine):
    # The gentle line is longer than the mode line it replaces; the crisis note longer still.
    async def core(message: str, chat: str) -> int:
        return (await run_turn(engine, message, chat_id=chat))["meta"]["token_budget"]["core"]

    plain = await core("I don't want to fly", "a")
    soft = await core("I don't want to die", "b")
    hard = await core("i wanna die", "c")
    assert plain < soft < hard


# ---- SILENT --------------------------------------------------------------------------


async def test_a_silenced_persona_answers_the_placeholder_without_calling_the_model(
    engine, backend, monkeypatch
):
    await run_turn(engine, "Hello there")
    calls = len(backend.calls)
    decide = metacognition.decide_global

    def operator_silenced(parent, *args, **kwargs):  # type: ignore[no-untyped-def]
        return decide(parent.model_copy(update={"operator_state": "SILENT"}), *args, **kwargs)

    monkeypatch.setattr(metacognition, "decide_global", operator_silenced)
    result = await run_turn(engine, "Are you there?")
    meta = result["meta"]
    assert meta["global_transition"]["state"] == "SILENT"
    assert result["reply"] == SILENT_REPLY and meta["reply_flags"] == ["silent"]
    assert len(backend.calls) == calls  # nothing was sent to the model
    monkeypatch.undo()
    backend.enqueue("I am here.")
    result = await run_turn(engine, "And now?")
    assert result["reply"] == "I am here." and result["meta"]["reply_flags"] == []


# ---- never emotional manipulation --------------------------------------------------

# Words that would invite guilt, pressure or dependency ("don't leave me").
MANIPULATIVE = ("don't leave", "only one who", "only i ", "need me", "miss me", "you owe")


@pytest.mark.parametrize("late", [True, False])
async def test_every_prompt_carries_the_rule_and_nothing_invites_the_opposite(
    engine, backend, monkeypatch, late
):
    monkeypatch.setattr(type(backend), "late_system_ok", late)
    messages = ["Hello", "i wanna die", "I don't want to die", "(( are you an AI? ))"]
    for message in messages:
        await run_turn(engine, message)
    assert len(backend.calls) == len(messages)
    for prompt in backend.calls:
        assert prompt[0].role == "system" and RULE in prompt[0].content
        assert [m.content.count(RULE) for m in prompt] == [1] + [0] * (len(prompt) - 1)
    # No template, whatever the state, asks for the opposite.
    for soft, hard, state, mode in itertools.product(
        [False, True], [False, True], GLOBAL_LINES, MODE_LINES
    ):
        p = parts(safety_soft=soft, safety_override=hard, global_state=state, subjectivity=mode)
        text = "\n".join(m.content for m in layout(p, PROMPTS, late)).lower()
        assert not [w for w in MANIPULATIVE if w in text]
