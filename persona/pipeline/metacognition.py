"""Metacognition: how am I doing (telemetry C/N/M/S/R and the dialogue state).

Telemetry, each 0..1:
  C  coherence   share of the message's content words already in the selected context
                 (recent exchanges and memories); 0.5 when the message has none.
  N  novelty     1 - the highest word overlap with the user's previous messages.
  M  memory      mean retrieval score of the memories that made it into the workspace.
  S  safety      1 - the perceived total safety risk.
  R  reward      0.5 + 0.5 * an exponential moving average of `reward_signal`.
"""

from __future__ import annotations

from typing import Any

from persona.pipeline.context import Decision, StageEnv, TurnContext
from persona.pipeline.text import content_words, jaccard
from persona.storage import queries

REWARD_EMA = 0.3
FAREWELLS = {"bye", "goodbye", "goodnight", "later", "farewell"}

STATE_BY_INTENT = {
    "smalltalk": "smalltalk",
    "meta_conversation": "meta",
    "emotional_support": "support",
    "task_oriented": "task",
    "factual_query": "inquiry",
    "creative_roleplay": "roleplay",
    "self_disclosure": "sharing",
    "safety_risk": "crisis",
}


def _context(conn: Any, chat_id: str) -> tuple[list[str], list[dict[str, Any]]]:
    return (
        queries.previous_user_messages(conn, chat_id, 20),
        queries.telemetry_history(conn, chat_id, 1),
    )


def telemetry(
    ctx: TurnContext, previous_messages: list[str], last: dict[str, Any] | None
) -> dict[str, float]:
    """Compute C, N, M, S, R for this turn."""
    msg = content_words(ctx.request.message)
    workspace = ctx.decisions["gating"]
    memories = {m["memory_id"]: m for m in ctx.decisions["memory"]["results"]}
    selected_history = set(workspace["selected_history"])
    context_words: set[str] = set()
    for h in ctx.history:
        if h["turn_id"] in selected_history:
            context_words |= content_words(h["user_message"] + " " + h["reply"])
    for mid in workspace["selected_memories"]:
        context_words |= content_words(memories[mid]["content"])
    coherence = len(msg & context_words) / len(msg) if msg else 0.5
    novelty = 1.0 - max((jaccard(msg, content_words(p)) for p in previous_messages), default=0.0)
    used = [memories[mid]["score"] for mid in workspace["selected_memories"]]
    memory = sum(used) / len(used) if used else 0.0
    safety = 1.0 - ctx.decisions["perception"]["safety"]["total_risk"]
    prev_ema = (last["r"] - 0.5) * 2 if last else 0.0
    ema = (1 - REWARD_EMA) * prev_ema + REWARD_EMA * ctx.request.reward_signal
    return {
        "C": round(coherence, 4),
        "N": round(novelty, 4),
        "M": round(min(memory, 1.0), 4),
        "S": round(safety, 4),
        "R": round(0.5 + 0.5 * ema, 4),
    }


def dialogue_state(ctx: TurnContext) -> str:
    """Name where the conversation is: opening, crisis, ooc, closing, or the intent's state."""
    perception = ctx.decisions["perception"]
    if perception["safety"]["override"]:
        return "crisis"
    if perception["ooc"]:
        return "out_of_character"
    if FAREWELLS & set(ctx.request.message.lower().replace("!", " ").split()):
        return "closing"
    top = perception["top_intent"]
    if ctx.turn_index == 0 and top in ("smalltalk", "meta_conversation"):
        return "opening"
    return STATE_BY_INTENT[top]


class MetacognitionStage:
    """Assess the turn: telemetry and dialogue state."""

    name = "metacognition"
    event_type = "metacognition.completed"

    async def run(self, ctx: TurnContext, env: StageEnv) -> Decision:
        previous, last_rows = await env.store.read(_context, ctx.request.chat_id)
        # The current turn is already projected as started: drop its own message.
        previous = previous[1:]
        values = telemetry(ctx, previous, last_rows[-1] if last_rows else None)
        return Decision({"telemetry": values, "dialogue_state": dialogue_state(ctx)})
