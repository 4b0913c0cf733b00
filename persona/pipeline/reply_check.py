"""Reply checks: find a reply that degenerated and trim it to what can be kept.

Pure functions over the generated text. A tiny model loops ("I'm glad you're here." ×20),
opens with a transcript label ("Mira replied: …"), writes the user's next line, runs
into the token cap mid-sentence, copies one of its earlier replies, or emits control
characters a page cannot show (a NUL, a terminal colour code). What is stored (and shown
once the reply is done) is the cleaned text; the flags say what was done.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# The rule lives below every layer (the LLM backends clean upstream errors with it too).
from persona.controls import first_control, strip_controls
from persona.llm.base import GenOptions

# Flags, in the order the checks run.
CONTROL = "control"  # control characters (and terminal escape sequences) were removed
LABEL = "label"  # a leading speaker label ("Mira:", "User said:") was removed
CONTINUED = "continued"  # the reply went on with another speaker's line; cut there
LOOP = "loop"  # a repetition loop, cut where it began
CUT = "cut"  # ended mid-sentence at the token cap; trimmed to its last whole sentence
REPEAT = "repeat"  # the same words as one of the persona's recent replies in this chat
SILENT = "silent"  # the operator silenced the persona: a fixed placeholder, no model call

# Flags that mark the model's output as degenerate: such a reply is not remembered.
DEGENERATE = frozenset({LOOP, CUT, REPEAT})

NGRAM = 4  # a loop: some word 4-gram occurs LOOP_REPEATS times or more
LOOP_REPEATS = 3
CHAR_RUN = 10  # a loop: one non-space character this many times in a row ("🐦" ×50)
CHAR_RUN_KEEP = 3  # how many of a runaway character survive ("!!!" is fine)

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_VERBS = r"(?:said|says|replied|replies|asked|asks|answered|answers|wrote|writes)"
# A sentence end: terminal punctuation, closing quotes or brackets, then space or the end.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s|$)")
# "1." opening a line numbers a list item; it ends no sentence.
_LIST_MARK = re.compile(r"(?:^|\n)[ \t]*\d+\.$")
# Complete: ends with a sentence end, optionally followed by symbols or emoji only.
_COMPLETE = re.compile(r"[.!?…][\"'”’)\]*_]*[^\w\s]*\s*$")


@dataclass(frozen=True)
class CheckedReply:
    """The reply as it will be stored, and what was done to it (empty: untouched)."""

    text: str
    flags: tuple[str, ...] = ()

    @property
    def degenerate(self) -> bool:
        """Whether the output degenerated (loop, cut, repeat), not just a stray label."""
        return any(flag in DEGENERATE for flag in self.flags)


def speaker_labels(persona_name: str) -> tuple[str, ...]:
    """The names a transcript line can start with in this chat ("A:", "Q:" included).

    Not "You": "You said: I have a dog" without its label would claim the user's dog.
    """
    return (persona_name, "User", "Assistant", "AI", "Human", "A", "Q")


def reply_stops(persona_name: str) -> tuple[str, ...]:
    """Stop sequences that end the reply where the next speaker's line would start (most
    useful first: a backend may pass on only the first few)."""
    return (
        "\nUser:",
        f"\n{persona_name}:",
        f"\n{persona_name} replied:",
        "\nUser said:",
        "\nAssistant:",
    )


def reply_options(gen: GenOptions, persona_name: str) -> GenOptions:
    """The turn's options with the reply's stop sequences added (kept once, in order)."""
    stops = tuple(dict.fromkeys((*reply_stops(persona_name), *gen.stop)))
    return gen.model_copy(update={"stop": stops})


def _label_pattern(labels: Sequence[str]) -> str:
    names = "|".join(re.escape(label) for label in labels if label.strip())
    return rf"\**(?:{names})\**\s*(?:{_VERBS})?\s*\**\s*:\**"


def strip_label(text: str, labels: Sequence[str]) -> tuple[str, bool]:
    """Remove speaker labels the reply opens with ("Mira: Mira replied: hi" -> "hi")."""
    pattern = re.compile(rf"^\s*{_label_pattern(labels)}\s*", re.IGNORECASE)
    stripped = text
    while match := pattern.match(stripped):
        stripped = stripped[match.end() :]
    return stripped, stripped != text


def cut_continuation(text: str, labels: Sequence[str]) -> tuple[str, bool]:
    """Cut the reply where it starts another speaker's line (a label after a line break or
    a sentence end); the reply itself ends there."""
    pattern = re.compile(rf"(?:\n|(?<=[.!?…])[ \t]+)\s*{_label_pattern(labels)}", re.IGNORECASE)
    match = pattern.search(text)
    if match is None:
        return text, False
    return text[: match.start()].rstrip(), True


def loop_start(text: str, n: int = NGRAM, repeats: int = LOOP_REPEATS) -> int | None:
    """Where a repetition loop begins (a character offset), or None when there is none.

    A loop is a word n-gram occurring `repeats` times or more; it begins at the second
    occurrence of the loop's first repeated n-gram, so one copy of it is kept. A run of
    one character (`CHAR_RUN` or more) is a loop too, kept to `CHAR_RUN_KEEP` characters.
    """
    starts: list[int] = []
    words = list(_WORD.finditer(text))
    seen: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(w.group().lower() for w in words[i : i + n])
        seen.setdefault(gram, []).append(words[i].start())
    starts += [offsets[1] for offsets in seen.values() if len(offsets) >= repeats]
    run = re.search(rf"(\S)\1{{{CHAR_RUN - 1},}}", text)
    if run:
        starts.append(run.start() + CHAR_RUN_KEEP)
    return min(starts) if starts else None


def is_complete(text: str) -> bool:
    """Whether the text ends at the end of a sentence."""
    return bool(_COMPLETE.search(text)) and not _LIST_MARK.search(text.rstrip())


def last_sentence_end(text: str) -> int | None:
    """The offset just after the last complete sentence, or None when there is none."""
    ends = [
        m.end() for m in _SENTENCE_END.finditer(text) if not _LIST_MARK.search(text, 0, m.end())
    ]
    return ends[-1] if ends else None


def trim_to_sentence(text: str) -> str:
    """Keep the text up to its last complete sentence; with none, end it at the last whole
    word with an ellipsis (a long first sentence cut by the cap is still an answer)."""
    partial_word = bool(text) and text[-1].isalnum()  # the cap may have cut a word
    text = text.rstrip()
    if is_complete(text):
        return text
    end = last_sentence_end(text)
    if end is not None:
        return text[:end].rstrip()
    if partial_word and " " in text:
        text = text.rsplit(maxsplit=1)[0]
    words = text.rstrip(" ,;:-–—")
    return f"{words}…" if words else ""


REPEAT_MIN_WORDS = 4  # "Thank you!" twice is manners, not a copied reply


def _same_words(a: str, b: str) -> bool:
    words_a = [w.lower() for w in _WORD.findall(a)]
    return len(words_a) >= REPEAT_MIN_WORDS and words_a == [w.lower() for w in _WORD.findall(b)]


def check_reply(
    text: str, labels: Sequence[str], hit_cap: bool, previous: Sequence[str] = ()
) -> CheckedReply:
    """Clean a generated reply: remove control characters, strip a leading label, cut a
    continuation or a loop, trim a reply the token cap cut mid-sentence, flag a copy of an
    earlier reply (`previous`, the persona's recent replies). Returns the text to store and
    the flags; a reply with nothing to clean comes back exactly as it was."""
    original = text
    flags: list[str] = []
    # First: an escape code can hide a label ("\x1b[1mMira:\x1b[0m hi").
    if first_control(text) is not None:
        flags.append(CONTROL)
        text = strip_controls(text)
    text, stripped = strip_label(text, labels)
    if stripped:
        flags.append(LABEL)
    text, continued = cut_continuation(text, labels)
    if continued:
        flags.append(CONTINUED)
    start = loop_start(text)
    if start is not None:
        flags.append(LOOP)
        text = trim_to_sentence(text[:start])
    # A continuation ends the reply where the model chose to; only the cap cuts it.
    elif hit_cap and not continued and not is_complete(text):
        flags.append(CUT)
        text = trim_to_sentence(text)
    # A small model copies its own earlier reply from the history, word for word.
    if any(_same_words(text, strip_label(earlier, labels)[0]) for earlier in previous):
        flags.append(REPEAT)
    if not flags:
        return CheckedReply(original)
    return CheckedReply(text.strip(), tuple(flags))
