"""The chat-scoped state snapshot a completed turn leaves for its children."""

from __future__ import annotations

from pydantic import Field

from persona.events.base import Model


class ChatState(Model):
    """What carries from a turn to the turns that continue from it.

    A turn reads its *parent* turn's snapshot, so a branch, a rewind or a restart sees
    exactly the state that held after that parent.
    """

    turns: int = Field(default=0, ge=0, description="completed turns on the path so far")
    dialogue_state: str | None = Field(default=None, description="None before the first turn")
    dwell: int = Field(default=0, ge=0, description="consecutive turns in dialogue_state")
    intents: dict[str, float] = Field(
        default_factory=dict, description="exponentially smoothed intent distribution"
    )
    reward_avg: float = Field(
        default=0.0, ge=-1.0, le=1.0, description="EMA of reward_signal, full precision"
    )
    workspace: tuple[str, ...] = Field(
        default=(), description="memory ids the turn's workspace held (carried forward)"
    )
