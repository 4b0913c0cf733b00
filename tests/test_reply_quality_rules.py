"""Reply quality rules, each held by a test: the reply check, memory notes, sampling.

The reply check trims what a tiny model degenerates into (loops, transcript labels, a tail
cut by the token cap) and flags it; flagged-degenerate replies are not remembered;
memories reach the prompt as third-person notes; each backend sends its own sampling
defaults, which settings and requests override.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import run_turn, skip_without_local_model

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.errors import TurnFailed
from persona.events import MemoryWritten, ReplyCompleted, TurnStarted
from persona.events import TurnFailed as TurnFailedEvent
from persona.llm.base import ChatMessage, GenOptions, LLMError, Usage
from persona.llm.openai_backend import SERVER_GEN, OpenAIBackend
from persona.llm.scripted import ScriptedBackend
from persona.pipeline import reply_check as rc
from persona.pipeline.notes import MAX_WORDS, memory_note
from persona.storage.eventlog import read_events
from persona.web.schemas import ChatRequest
from persona.web.turns import build_request

LABELS = rc.speaker_labels("Mira")


def check(text: str, hit_cap: bool = False) -> rc.CheckedReply:
    return rc.check_reply(text, LABELS, hit_cap)


# ---- the reply check ---------------------------------------------------------------


def test_a_clean_reply_comes_back_exactly_as_generated() -> None:
    text = "  Hello Sam! Biscuit sounds lovely. \n"
    assert check(text) == rc.CheckedReply(text, ())
    # Ending without punctuation is the model's choice when it was not cut off.
    assert check("Hi Sam 😊") == rc.CheckedReply("Hi Sam 😊", ())


@pytest.mark.parametrize(
    "text",
    [
        "Mira: Hello there.",
        "Mira replied: Hello there.",
        "mira said: Hello there.",
        "**Mira:** Hello there.",
        "User said: Hello there.",
        "Mira: Mira replied: Hello there.",
        "  Assistant:Hello there.",
        "A: A: Hello there.",
    ],
)
def test_a_leading_speaker_label_is_removed(text: str) -> None:
    checked = check(text)
    assert checked == rc.CheckedReply("Hello there.", (rc.LABEL,))
    assert not checked.degenerate  # the words are fine: still remembered


@pytest.mark.parametrize(
    "text", ["Mira is my name.", "Mirabelle: a plum.", "You said: I have a dog.", "Plan A: go."]
)
def test_a_name_that_is_not_a_label_stays(text: str) -> None:
    assert check(text).flags == ()


def test_a_reply_that_writes_the_next_speakers_line_is_cut_there() -> None:
    checked = check("Hi Sam!\nUser: how are you?\nMira: I am fine.")
    assert checked == rc.CheckedReply("Hi Sam!", (rc.CONTINUED,))
    same_line = check("Nice to meet you. User said: I have a dog.")
    assert same_line == rc.CheckedReply("Nice to meet you.", (rc.CONTINUED,))
    # A colon after "you" inside a sentence is not a new speaker.
    assert check("Let me ask you: what do you like?").flags == ()


def test_a_sentence_repeated_three_times_is_a_loop_cut_to_one_copy() -> None:
    looped = "Hello Sam! " + "I'm glad that you're here. " * 20
    checked = check(looped, hit_cap=True)
    assert checked == rc.CheckedReply("Hello Sam! I'm glad that you're here.", (rc.LOOP,))
    assert checked.degenerate


def test_a_loop_needs_a_four_gram_three_times() -> None:
    twice = "I like old maps a lot. I like old maps a lot."
    assert check(twice).flags == ()
    assert check(twice + " I like old maps a lot.").flags == (rc.LOOP,)
    # A 3-word unit three times has each 4-gram only twice: not a loop by this rule.
    assert rc.loop_start("I love you. I love you. I love you.") is None
    assert rc.loop_start("I love you. " * 4) is not None


def test_a_runaway_word_or_character_is_a_loop() -> None:
    assert check("little " * 30, hit_cap=True) == rc.CheckedReply("little…", (rc.LOOP,))
    birds = check("Birds are lovely! " + "🐦" * 50, hit_cap=True)
    assert birds == rc.CheckedReply("Birds are lovely!", (rc.LOOP,))
    # Nine in a row is emphasis, ten is a loop (three are kept).
    assert check("Wow" + "!" * 9).flags == ()
    assert check("Wow" + "!" * 10) == rc.CheckedReply("Wow!!!", (rc.LOOP,))


def test_a_reply_cut_by_the_cap_is_trimmed_to_its_last_sentence() -> None:
    text = "Old maps are wonderful. They show how people saw the world, and some of"
    assert check(text, hit_cap=True) == rc.CheckedReply("Old maps are wonderful.", (rc.CUT,))
    # The same text without the cap: the model stopped there itself.
    assert check(text, hit_cap=False).flags == ()
    # At the cap but ending a sentence: nothing is cut.
    assert check("Old maps are wonderful.", hit_cap=True).flags == ()
    assert check('She said "yes." And then', hit_cap=True).text == 'She said "yes."'
    # A list item's number ends no sentence.
    recipe = "Try this soup.\nIngredients:\n1. Two leeks\n2."
    assert check(recipe, hit_cap=True) == rc.CheckedReply("Try this soup.", (rc.CUT,))
    assert check("It costs 5. And", hit_cap=True).text == "It costs 5."


def test_a_single_unfinished_sentence_keeps_its_whole_words() -> None:
    checked = check("Old maps show how people once saw the wor", hit_cap=True)
    assert checked == rc.CheckedReply("Old maps show how people once saw the…", (rc.CUT,))
    assert checked.degenerate


def test_flags_combine_in_the_order_the_checks_run() -> None:
    checked = check("Mira replied: " + "I'm a machine, I'm a machine. " * 5, hit_cap=True)
    # One copy of the repeated unit is kept; it ends no sentence, so it ends with "…".
    assert checked == rc.CheckedReply("I'm a machine…", (rc.LABEL, rc.LOOP))


def test_a_copy_of_an_earlier_reply_is_flagged_as_a_repeat() -> None:
    earlier = ["A: Ana, não pode ser um amigo.", "Thank you!"]
    copied = rc.check_reply("Ana, NÃO pode ser um amigo!", LABELS, False, earlier)
    assert copied == rc.CheckedReply("Ana, NÃO pode ser um amigo!", (rc.REPEAT,))
    assert copied.degenerate
    # Short courtesies may recur; a reply that differs by a word is no copy.
    assert rc.check_reply("Thank you!", LABELS, False, earlier).flags == ()
    assert rc.check_reply("Ana, não pode ser uma amiga.", LABELS, False, earlier).flags == ()


def test_only_loops_cuts_and_repeats_are_degenerate() -> None:
    assert {rc.LOOP, rc.CUT, rc.REPEAT} == rc.DEGENERATE


def test_stop_sequences_start_at_the_next_speakers_label() -> None:
    stops = rc.reply_stops("Tess")
    # Backends that take four (OpenAI) get the speaker labels first.
    assert stops[:4] == ("\nUser:", "\nTess:", "\nTess replied:", "\nUser said:")
    gen = rc.reply_options(GenOptions(stop=("END", "\nUser:")), "Tess")
    assert gen.stop == (*stops, "END")


# ---- finish reason -------------------------------------------------------------------


def test_the_cap_is_the_backends_finish_reason_when_it_gives_one() -> None:
    assert Usage(completion_tokens=5, finish_reason="length").hit_cap(96)
    assert not Usage(completion_tokens=96, finish_reason="stop").hit_cap(96)
    # Unknown: counted.
    assert Usage(completion_tokens=96).hit_cap(96) and not Usage(completion_tokens=95).hit_cap(96)


# ---- memory notes ----------------------------------------------------------------------


def test_an_exchange_becomes_a_third_person_note_without_the_reply() -> None:
    memory = "User said: I have a dog called Biscuit.\nMira replied: My dog is Bella!"
    assert memory_note(memory, "Mira") == "The user said they have a dog called Biscuit."
    # Without the persona's name, any "<Name> replied:" line ends what the user said.
    assert memory_note(memory) == "The user said they have a dog called Biscuit."


@pytest.mark.parametrize(
    ("said", "note"),
    [
        ("Hi! I'm Sam.", "The user said they're Sam."),
        ("I am tired and I was up late.", "The user said they are tired and they were up late."),
        ("Sam was here. My sister met me.", "The user said Sam was here. Their sister met them."),
        ("Where does my sister live?", "The user asked: where does their sister live?"),
        ("I love maps. Do you?", "The user said they love maps."),
        ("((ooc: can we pause?))", "The user asked: ooc: can we pause?"),
    ],
)
def test_the_users_first_person_becomes_the_third(said: str, note: str) -> None:
    assert memory_note(f"User said: {said}\nMira replied: ok", "Mira") == note


def test_a_long_message_is_shortened() -> None:
    said = "I " + "really " * 60 + "like maps."
    note = memory_note(f"User said: {said}\nMira replied: ok")
    assert note.endswith("…") and len(note.split()) <= MAX_WORDS + 3


def test_a_memory_in_another_form_is_kept() -> None:
    assert memory_note("Sam collects maps. He lives in Lisbon.") == (
        "Sam collects maps. He lives in Lisbon."
    )
    assert memory_note("User said: \nMira replied: hello") == ""


# ---- in a turn -------------------------------------------------------------------------


def _events(engine: Engine, db: Any, trace_id: str) -> list[Any]:
    return [e.payload for e in read_events(db(engine.settings.db_path), trace_id=trace_id)]


async def test_a_looping_reply_is_stored_trimmed_flagged_and_not_remembered(engine, backend, db):
    raw = "Hello! " + "I'm glad that you're here. " * 12
    backend.enqueue(raw)
    result = await run_turn(engine, "hi")
    assert result["reply"] == "Hello! I'm glad that you're here."
    assert result["meta"]["reply_flags"] == ["loop"]
    assert result["meta"]["memory"]["written"] is None
    payloads = _events(engine, db, result["trace_id"])
    reply = next(p for p in payloads if isinstance(p, ReplyCompleted))
    assert (reply.reply, reply.raw_reply, reply.flags) == (result["reply"], raw, ["loop"])
    assert not any(isinstance(p, MemoryWritten) for p in payloads)
    # The next turn's history holds the trimmed reply, not the loop.
    await run_turn(engine, "and then?")
    assert backend.calls[-1][2].content == "Hello! I'm glad that you're here."


async def test_a_reply_with_only_a_label_removed_is_still_remembered(engine, backend, db):
    backend.enqueue("Mira: Nice to meet you, Sam.")
    result = await run_turn(engine, "I'm Sam")
    assert result["reply"] == "Nice to meet you, Sam."
    assert result["meta"]["reply_flags"] == ["label"]
    written = next(
        p for p in _events(engine, db, result["trace_id"]) if isinstance(p, MemoryWritten)
    )
    assert written.content == "I'm Sam\nNice to meet you, Sam."
    assert written.said[1].text == "Nice to meet you, Sam."


async def test_a_reply_copied_from_the_history_is_flagged_and_not_remembered(engine, backend):
    backend.enqueue("I like quiet mornings and old maps.", "I like quiet mornings and old maps.")
    first = await run_turn(engine, "what do you like?")
    again = await run_turn(engine, "and what else?")
    assert first["meta"]["reply_flags"] == [] and first["meta"]["memory"]["written"]
    assert again["meta"]["reply_flags"] == ["repeat"]
    assert again["reply"] == "I like quiet mornings and old maps."  # shown, not remembered
    assert again["meta"]["memory"]["written"] is None


async def test_a_clean_reply_has_no_flags_and_no_raw_copy(engine, backend, db):
    backend.enqueue("Hello Sam.")
    result = await run_turn(engine, "hi")
    assert result["meta"]["reply_flags"] == []
    reply = next(
        p for p in _events(engine, db, result["trace_id"]) if isinstance(p, ReplyCompleted)
    )
    assert reply.raw_reply is None and reply.flags == []


@pytest.mark.parametrize("raw", ["Mira:", "   "])
async def test_a_reply_empty_after_the_check_fails_the_turn(engine, backend, db, raw):
    backend.enqueue(raw)
    with pytest.raises(TurnFailed, match="empty"):
        await run_turn(engine, "hi")
    conn = db(engine.settings.db_path)
    payloads = [e.payload for e in read_events(conn)]
    failed = next(p for p in payloads if isinstance(p, TurnFailedEvent))
    assert failed.stage == "speaker" and "empty after the reply check" in failed.error
    assert not any(isinstance(p, ReplyCompleted) for p in payloads)


async def test_memories_reach_the_prompt_as_notes_not_transcripts(engine, backend):
    backend.enqueue("Biscuit is a lovely name!")
    await run_turn(engine, "I have a dog called Biscuit.", chat_id="a")
    await run_turn(engine, "Do you remember Biscuit?", chat_id="b")
    note = backend.calls[-1][-2]
    assert note.role == "system"
    assert "- The user said they have a dog called Biscuit." in note.content
    assert "replied" not in note.content and "User said" not in note.content


class _Tuned(ScriptedBackend):
    """A scripted backend with sampling defaults of its own, recording what it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[GenOptions] = []

    def default_gen(self) -> GenOptions:
        return GenOptions(temperature=0.2, max_tokens=64, repeat_penalty=1.3, top_k=20)

    def _stream(self, messages: list[ChatMessage], options: GenOptions, usage: Usage) -> Any:
        self.options.append(options)
        return super()._stream(messages, options, usage)


async def _tuned_turn(
    tmp_path: Path, db: Any, body: dict[str, Any], **sections: Any
) -> tuple[Any, ...]:
    settings = Settings(db_path=tmp_path / "t.db", llm={"provider": "scripted"}, **sections)
    backend = _Tuned()
    engine = Engine(settings, backend=backend, clock=FixedClock())
    await engine.start()
    try:
        request = await build_request(engine, ChatRequest(message="hello", **body))
        result = await (await engine.runner.submit(request)).result
        events = read_events(db(settings.db_path), trace_id=result.trace_id)
        started = next(e.payload for e in events if isinstance(e.payload, TurnStarted))
    finally:
        await engine.stop()
    return request.gen, started.gen, backend.options[-1]


async def test_requests_start_from_the_backends_defaults(tmp_path, db):
    gen, recorded, sent = await _tuned_turn(tmp_path, db, {})
    assert (gen.temperature, gen.max_tokens, gen.repeat_penalty, gen.top_k) == (0.2, 64, 1.3, 20)
    # The backend gets them with the reply's stop sequences, and turn.started records it all.
    assert sent == gen.model_copy(update={"stop": rc.reply_stops("Mira")})
    assert recorded.model_dump() == sent.model_dump(mode="json")


async def test_settings_then_the_request_override_the_backends_defaults(tmp_path, db):
    gen, _, _ = await _tuned_turn(tmp_path / "a", db, {}, generation={"temperature": 0.9})
    assert (gen.temperature, gen.max_tokens, gen.repeat_penalty) == (0.9, 64, 1.3)
    gen, _, _ = await _tuned_turn(
        tmp_path / "b",
        db,
        {"gen": {"max_tokens": 12}},
        generation={"temperature": 0.9, "max_tokens": 30},
    )
    assert (gen.temperature, gen.max_tokens) == (0.9, 12)


# ---- backends map the options they know -------------------------------------------------


def test_the_openai_backend_sends_standard_options_and_four_stops() -> None:
    backend = OpenAIBackend(
        Settings(llm={"provider": "openai", "base_url": "http://127.0.0.1:9/v1"})
    )
    assert backend.default_gen() == SERVER_GEN and SERVER_GEN.frequency_penalty
    options = GenOptions(
        top_p=0.9, top_k=40, repeat_penalty=1.2, frequency_penalty=0.3, stop=rc.reply_stops("M")
    )
    request = backend._request([ChatMessage(role="user", content="hi")], options)
    assert request["top_p"] == 0.9 and request["frequency_penalty"] == 0.3
    assert "top_k" not in request and "repeat_penalty" not in request
    assert "presence_penalty" not in request and "seed" not in request  # None: not sent
    assert request["stop"] == list(rc.reply_stops("M")[:4])


def test_the_local_backend_passes_llama_cpp_options() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from persona.llm.local import sampling

    kwargs = sampling(GenOptions(temperature=0.3, max_tokens=9, repeat_penalty=1.2, stop=("x",)))
    assert kwargs == {"temperature": 0.3, "max_tokens": 9, "repeat_penalty": 1.2, "stop": ["x"]}


def test_the_packaged_model_gets_the_tiny_models_sampling() -> None:
    skip_without_local_model()
    from persona.llm.local import TINY_MODEL_GEN, LocalBackend

    backend = LocalBackend(Settings(llm={"provider": "local", "context_window": 512}))
    assert backend.default_gen() == TINY_MODEL_GEN
    assert TINY_MODEL_GEN.repeat_penalty and TINY_MODEL_GEN.repeat_penalty > 1.0
    assert backend.model == "SmolLM2-135M-Instruct"


def test_a_missing_model_file_is_a_clear_error(tmp_path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from persona.llm.local import LocalBackend

    missing = tmp_path / "nope.gguf"
    with pytest.raises(LLMError, match="local model file not found"):
        LocalBackend(Settings(llm={"provider": "local", "local_model_path": missing}))


@pytest.mark.local_model
async def test_a_gguf_given_by_path_loads_with_its_own_chat_template() -> None:
    """Uses the real model: the packaged GGUF, named explicitly as a user's file would be."""
    skip_without_local_model()
    from persona.llm.local import GGUF_GEN, LocalBackend, find_gguf

    path = find_gguf()
    backend = LocalBackend(Settings(llm={"provider": "local", "local_model_path": path}))
    try:
        assert backend.path == path and backend.model == path.stem
        assert backend.default_gen() == GGUF_GEN  # a chosen file gets general sampling
        response = backend.stream(
            [ChatMessage(role="user", content="Say hello.")],
            GenOptions(temperature=0, max_tokens=12, stop=rc.reply_stops("Mira")),
        )
        assert (await response.text()).strip()
        assert response.usage.finish_reason in ("stop", "length")
        llm = backend._shared().llm
        # The chat template is the file's own (metadata), not llama-cpp-python's fallback.
        assert "tokenizer.chat_template" in llm.metadata
        assert llm.chat_format != "llama-2"
    finally:
        await backend.aclose()


# ---- control characters in the model's output ------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("Hello\x00 Sam.", "Hello Sam."),
        ("\x1b[31mRed\x1b[0m alert.", "Red alert."),  # an escape sequence goes whole
        ("\x1b]0;title\x07Hi.", "Hi."),
        ("Bell\x07 and DEL\x7f and C1\x85 go.", "Bell and DEL and C1 go."),
        ("Lone \ud800surrogate.", "Lone surrogate."),
    ],
)
def test_control_characters_are_removed_and_flagged(raw: str, kept: str) -> None:
    assert check(raw) == rc.CheckedReply(kept, (rc.CONTROL,))


def test_tabs_and_line_breaks_are_no_control_characters() -> None:
    text = "One\ttwo.\nThree.\r\nFour."
    assert check(text) == rc.CheckedReply(text, ())


def test_an_escape_code_cannot_hide_a_label() -> None:
    assert check("\x1b[1mMira:\x1b[0m Hello there.") == rc.CheckedReply(
        "Hello there.", (rc.CONTROL, rc.LABEL)
    )
    assert rc.CONTROL not in rc.DEGENERATE  # what is left is still a reply worth keeping


async def test_a_reply_with_control_characters_is_stored_without_them(engine, backend, db):
    raw = "\x1b[31mHello\x00 Sam.\x1b[0m"
    backend.enqueue(raw)
    result = await run_turn(engine, "hi")
    assert result["reply"] == "Hello Sam."
    assert result["meta"]["reply_flags"] == ["control"]
    payloads = _events(engine, db, result["trace_id"])
    reply = next(p for p in payloads if isinstance(p, ReplyCompleted))
    assert (reply.reply, reply.raw_reply, reply.flags) == ("Hello Sam.", raw, ["control"])
    # What the next turn's prompt and the memory hold is the cleaned reply.
    written = next(p for p in payloads if isinstance(p, MemoryWritten))
    assert written.content.endswith("\nHello Sam.") and written.said[1].text == "Hello Sam."
    await run_turn(engine, "and then?")
    assert backend.calls[-1][2].content == "Hello Sam."
