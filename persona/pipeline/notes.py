"""Memories as short third-person notes for the prompt, never as transcripts.

An episodic memory is stored as "User said: …\\n<Name> replied: …". Shown to a small
model as it is, that text is a transcript the model continues ("Mira replied: …") and its
first person blurs who is who (the persona ends up owning the user's dog). The prompt gets
a note instead: "The user said they have a dog called Biscuit." The persona's own
earlier words are left out: they add little, and a bad reply would be repeated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from persona.events.memory import Utterance
from persona.pipeline.text import STOPWORDS

MAX_WORDS = 30  # a note keeps at most this many words of what the user said
MAX_SENTENCES = 2

_USER_SAID = re.compile(r"^\s*User said:[ \t]*", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?…]+(?:[.!?…]+[\"'”’)]*|$)")
_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
# Sentences with nothing to remember.
_GREETINGS = frozenset(
    "hi hello hey hiya thanks thank thx bye goodbye ok okay cool great wow yes no yeah "
    "good morning evening night there lol haha".split()
)

# The user's first person, as the persona speaks of them (English only: other languages
# keep their words, framed by the same English note).
_THIRD_PERSON = {
    "i": "they",
    "i'm": "they're",
    "i've": "they've",
    "i'd": "they'd",
    "i'll": "they'll",
    "me": "them",
    "my": "their",
    "mine": "theirs",
    "myself": "themselves",
    "am": "are",
    "was": "were",
}
_AFTER_I = {"am", "was"}  # only "I am", "I was" change; "Sam was" stays
_FUNCTION_WORDS = STOPWORDS | {"they", "they're", "they've", "they'd", "they'll", "their"}


def _third_person(sentence: str) -> str:
    """Rewrite the user's first person in the third ("I have my dog" -> "they have their
    dog"); the user's "you" stays, since the note is addressed to the persona."""
    out: list[str] = []
    last = 0
    previous = ""
    for match in _WORD.finditer(sentence):
        word = match.group()
        key = word.lower().replace("’", "'")
        replacement = _THIRD_PERSON.get(key)
        if key in _AFTER_I and previous != "i":
            replacement = None
        before = sentence[: match.start()].rstrip()
        if replacement and (not before or before[-1] in ".!?…"):
            replacement = replacement.capitalize()  # a sentence's first word
        out.append(sentence[last : match.start()])
        out.append(replacement if replacement is not None else word)
        last = match.end()
        previous = key
    out.append(sentence[last:])
    return "".join(out)


def _worth_noting(sentence: str) -> bool:
    words = [w.lower() for w in _WORD.findall(sentence)]
    return any(w not in _GREETINGS for w in words)


def _shorten(sentences: list[str]) -> str:
    kept: list[str] = []
    count = 0
    for sentence in sentences[:MAX_SENTENCES]:
        words = sentence.split()
        if count + len(words) > MAX_WORDS:
            room = MAX_WORDS - count
            if room > 0 and not kept:
                kept.append(" ".join(words[:room]).rstrip(",;:") + "…")
            break
        kept.append(sentence)
        count += len(words)
    return " ".join(kept)


def _lower_first(text: str) -> str:
    """Lower-case a leading function word so the note reads as one sentence."""
    first, _, rest = text.partition(" ")
    if first.lower().strip(",") in _FUNCTION_WORDS:
        return f"{first.lower()} {rest}".rstrip()
    return text


def memory_note(content: str, persona_name: str | None = None) -> str:
    """A short third-person note for the prompt from a stored memory.

    "User said: I have a dog called Biscuit.\\nMira replied: …" becomes "The user said
    they have a dog called Biscuit." A memory in any other form is kept as it is, only
    shortened. The reply is recognised by `persona_name`, or any "<Name> replied:" line.
    """
    text = content.strip()
    user_said = _USER_SAID.match(text)
    if user_said is None:
        return _shorten([s.strip() for s in _SENTENCE.findall(text) if s.strip()])
    said = text[user_said.end() :]
    name = re.escape(persona_name) if persona_name else r"[^\n:]{1,80}"
    reply_label = re.search(rf"\n\s*{name} replied:", said, re.IGNORECASE)
    if reply_label:
        said = said[: reply_label.start()]
    said = " ".join(said.split()).removeprefix("((").removesuffix("))").strip()
    sentences = [s.strip() for s in _SENTENCE.findall(said) if s.strip()]
    useful = [s for s in sentences if _worth_noting(s)] or sentences
    if not useful:
        return ""
    questions = [s for s in useful if s.endswith("?")]
    verb = "asked" if len(questions) == len(useful) else "said"
    statements = useful if verb == "asked" else [s for s in useful if not s.endswith("?")]
    note = _lower_first(_third_person(_shorten(statements)))
    if verb == "asked":
        return f"The user asked: {note}"
    note = note if note.endswith((".", "!", "…", '"', "”")) else f"{note}."
    return f"The user said {note}"


def said_note(said: Sequence[Utterance]) -> str:
    """A note from who-said-what: the user's words as `memory_note` words them; someone
    else's (an observed conversation) as "<Name> said: …"; the persona's own are left
    out, as in `memory_note`."""
    user = " ".join(u.text for u in said if u.role == "user")
    if user.strip():
        return memory_note(f"User said: {user}")
    others = [u for u in said if u.role == "other" and u.text.strip()]
    if not others:
        return ""
    first = others[0]
    text = " ".join(first.text.split())
    sentences = [s.strip() for s in _SENTENCE.findall(text) if s.strip()]
    return f"{first.name} said: {_shorten(sentences)}"
