"""The prompt's layout: one function builds it, so gating measures what the speaker sends.

Everything before the newest exchange is a stable prefix on every backend: the identity
first (it never changes), then the selected history (it only grows). What changes every
turn (memories, safety, state) comes last: as a late system note where the backend's
chat template allows one, else inside the newest user message. A prompt cache (llama.cpp
in-process, or a server's) then re-reads only the tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from persona.events import MemoryRetrieval, RetrievedMemory, Safety
from persona.llm.base import ChatMessage
from persona.pipeline.dialogue import LONGEST_STATE_LINE, META
from persona.pipeline.notes import memory_note, said_note
from persona.pipeline.prompts import PromptSet
from persona.pipeline.revision import CLARIFY, SHORT
from persona.storage.queries import PathTurn, PersonaRow

# The longest dialogue state line (state and style hint): gating reserves room for it
# before metacognition runs.
LONGEST_STATE = LONGEST_STATE_LINE

# Steering lines of the turn note: a few plain words each (the target model is tiny), and
# only where a state changes what the persona should do. NORMAL, SAFETY_LOCK (the safety
# note and the S6 state line carry it) and the other subjectivity modes add nothing.
SOFT_SAFETY_LINE = "The user may be hurting. Be gentle and go slowly."
GLOBAL_LINES: dict[str, str] = {
    "OVERLOADED": "Answer the main point briefly.",
    "REFLECTIVE": "Speak about the conversation plainly.",
}
MODE_LINES: dict[str, str] = {"S3_SAFE": "Stay gentle and careful."}
# The chosen decision option (`revision.decide_candidates`): answer-in-state needs no words,
# and safety-redirect is chosen exactly when the crisis note or the S6 state line speaks.
OPTION_LINES: dict[str, str] = {
    SHORT: "Answer briefly and directly.",
    CLARIFY: "Ask one short question to understand what they need.",
}
# Gating sizes the note before metacognition decides the global state and mode: this
# stands for "the longest line the turn could still get" (see `steer_lines`).
RESERVE = "(reserve)"


@dataclass(frozen=True)
class PromptParts:
    """What goes into a prompt, already chosen."""

    persona: PersonaRow
    message: str
    history: Sequence[PathTurn] = ()
    memories: Sequence[str] = ()
    pinned: Sequence[str] = ()  # L3 memories the user pinned: always in the identity
    safety_override: bool = False  # hard: the crisis note (escalated, or blocked)
    safety_soft: bool = False  # soft: intervened but not escalated, a gentler tone
    ooc: bool = False
    dialogue_state: str = LONGEST_STATE
    # The global state and subjectivity mode: by default room for their longest lines, so
    # gating reserves it before metacognition decides (the speaker sets the decided ones).
    global_state: str = RESERVE
    subjectivity: str = RESERVE
    # The chosen decision option, likewise reserved until metacognition chooses it.
    option: str = RESERVE
    # The continuity disclosure line: on by default so gating reserves room for it before
    # metacognition decides (the speaker sets the decided value).
    disclose: bool = True

    def with_(self, history: Sequence[PathTurn] = (), memories: Sequence[str] = ()) -> PromptParts:
        """The same parts with other history and memories."""
        return replace(self, history=tuple(history), memories=tuple(memories))


def memory_text(memory: RetrievedMemory) -> str:
    """How a retrieved memory reads in the prompt: a short third-person note, never a
    transcript the model would continue (see `notes.said_note`)."""
    return said_note(memory.said) if memory.said else memory_note(memory.content)


def pinned_notes(memory: MemoryRetrieval) -> tuple[str, ...]:
    """The pinned (L3) memories as the identity shows them, oldest first."""
    notes = (said_note(m.said) if m.said else memory_note(m.content) for m in memory.pinned)
    return tuple(note for note in notes if note)


def traits_text(traits: dict[str, float]) -> str:
    """Traits as short words with a strength."""
    return ", ".join(f"{name} {value:.1f}" for name, value in sorted(traits.items()))


def hard_safety(safety: Safety) -> bool:
    """Whether the turn gets the crisis note: escalated (the override), or blocked."""
    return safety.override or safety.escalated or safety.blocked


def soft_safety(safety: Safety) -> bool:
    """Whether the turn gets the gentler tone: intervened, but not as far as the crisis note."""
    return safety.intervened and not hard_safety(safety)


def _line(lines: dict[str, str], state: str) -> str:
    """The line of `state`, or for RESERVE the longest one (by characters, as the dialogue
    state's reservation: the speaker counts exactly and cuts should a token differ)."""
    if state == RESERVE:
        return max(lines.values(), key=len, default="")
    return lines.get(state, "")


def steer_lines(parts: PromptParts) -> list[str]:
    """The turn note's steering lines for these parts, in order.

    The crisis note (hard safety) is the whole tone of its turn: nothing else steers then.
    """
    if parts.safety_override:
        return []
    lines = [SOFT_SAFETY_LINE] if parts.safety_soft else []
    # REFLECTIVE in S4_META, or out of character: that state's note already says it.
    meta = parts.ooc or parts.dialogue_state.startswith(META)
    shown = {s: line for s, line in GLOBAL_LINES.items() if not (s == "REFLECTIVE" and meta)}
    lines.append(_line(shown, parts.global_state))
    # The soft safety line already asks for gentleness.
    if not parts.safety_soft:
        lines.append(_line(MODE_LINES, parts.subjectivity))
    lines.append(_line(OPTION_LINES, parts.option))
    return [line for line in lines if line]


def turn_note(parts: PromptParts, prompts: PromptSet) -> str:
    """The per-turn note: memories, safety, steering, the state line, disclosure."""
    return prompts.render(
        "turn_context.j2",
        memories=list(parts.memories),
        safety_override=parts.safety_override,
        ooc=parts.ooc,
        steer=steer_lines(parts),
        dialogue_state=parts.dialogue_state,
        disclose=parts.disclose,
    )


def layout(parts: PromptParts, prompts: PromptSet, late_system_ok: bool) -> list[ChatMessage]:
    """The messages the model sees, in cache-friendly order."""
    identity = prompts.render(
        "system.j2",
        persona=parts.persona,
        traits=traits_text(parts.persona.traits),
        pinned=list(parts.pinned),
    )
    note = turn_note(parts, prompts)
    messages = [ChatMessage(role="system", content=identity)]
    for h in parts.history:
        messages.append(ChatMessage(role="user", content=h.user_message))
        messages.append(ChatMessage(role="assistant", content=h.reply))
    if late_system_ok:
        messages.append(ChatMessage(role="system", content=note))
        messages.append(ChatMessage(role="user", content=parts.message))
    else:
        # Templates that allow one leading system message only: the note travels with
        # the newest user message, so the identity and history stay a stable prefix.
        messages.append(ChatMessage(role="user", content=f"{note}\n\n{parts.message}"))
    return messages
