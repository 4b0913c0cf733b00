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

from persona.events import RetrievedMemory
from persona.llm.base import ChatMessage
from persona.pipeline.dialogue import LONGEST_STATE_LINE
from persona.pipeline.notes import memory_note
from persona.pipeline.prompts import PromptSet
from persona.storage.queries import PathTurn, PersonaRow

# The longest dialogue state line (state and style hint): gating reserves room for it
# before metacognition runs.
LONGEST_STATE = LONGEST_STATE_LINE


@dataclass(frozen=True)
class PromptParts:
    """What goes into a prompt, already chosen."""

    persona: PersonaRow
    message: str
    history: Sequence[PathTurn] = ()
    memories: Sequence[str] = ()
    safety_override: bool = False
    ooc: bool = False
    dialogue_state: str = LONGEST_STATE
    # The continuity disclosure line: on by default so gating reserves room for it before
    # metacognition decides (the speaker sets the decided value).
    disclose: bool = True

    def with_(self, history: Sequence[PathTurn] = (), memories: Sequence[str] = ()) -> PromptParts:
        """The same parts with other history and memories."""
        return replace(self, history=tuple(history), memories=tuple(memories))


def memory_text(memory: RetrievedMemory) -> str:
    """How a retrieved memory reads in the prompt: a short third-person note, never a
    transcript the model would continue (see `notes.memory_note`)."""
    return memory_note(memory.content)


def traits_text(traits: dict[str, float]) -> str:
    """Traits as short words with a strength."""
    return ", ".join(f"{name} {value:.1f}" for name, value in sorted(traits.items()))


def layout(parts: PromptParts, prompts: PromptSet, late_system_ok: bool) -> list[ChatMessage]:
    """The messages the model sees, in cache-friendly order."""
    identity = prompts.render(
        "system.j2", persona=parts.persona, traits=traits_text(parts.persona.traits)
    )
    note = prompts.render(
        "turn_context.j2",
        memories=list(parts.memories),
        safety_override=parts.safety_override,
        ooc=parts.ooc,
        dialogue_state=parts.dialogue_state,
        disclose=parts.disclose,
    )
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
