"""Metacognition: how am I doing (telemetry C/N/M/S/R and the dialogue state).

Telemetry, each 0..1:
  C  coherence   share of the message's content words already in the selected context
                 (recent exchanges and memories); 0.5 when the message has none.
  N  novelty     1 - the highest word overlap with the user's earlier messages on the
                 active path (the last `novelty_window` of them).
  M  memory      mean retrieval score of the memories that made it into the workspace.
  S  safety      1 - the perceived total safety risk.
  R  reward      0.5 + 0.5 * the reward average after this turn's reward_signal (the
                 parent turn's full-precision average carried in the chat state).
"""

from __future__ import annotations

from persona.events import MemoryRetrieval, Metacognition, Perception, Telemetry, Workspace
from persona.pipeline.context import StageEnv, StageOutput, TurnContext
from persona.pipeline.state import next_reward_avg
from persona.pipeline.text import content_words, jaccard

FAREWELLS = frozenset({"bye", "goodbye", "goodnight", "later", "farewell"})

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


def telemetry(ctx: TurnContext, reward_ema: float, novelty_window: int) -> Telemetry:
    """Compute C, N, M, S, R for this turn."""
    msg = content_words(ctx.request.message)
    workspace = ctx.need(Workspace)
    memories = {m.memory_id: m for m in ctx.need(MemoryRetrieval).results}
    selected_history = set(workspace.selected_history)
    context_words: set[str] = set()
    for h in ctx.history:
        if h.turn_id in selected_history:
            context_words |= content_words(h.user_message + " " + h.reply)
    for mid in workspace.selected_memories:
        context_words |= content_words(memories[mid].content)
    coherence = len(msg & context_words) / len(msg) if msg else 0.5
    earlier = ctx.recent_user_messages[-novelty_window:] if novelty_window else []
    novelty = 1.0 - max((jaccard(msg, content_words(p)) for p in earlier), default=0.0)
    used = [memories[mid].score for mid in workspace.selected_memories]
    memory = sum(used) / len(used) if used else 0.0
    safety = 1.0 - ctx.need(Perception).safety.total_risk
    reward = next_reward_avg(ctx.parent_state.reward_avg, ctx.request.reward_signal, reward_ema)
    return Telemetry(
        C=round(coherence, 4),
        N=round(novelty, 4),
        M=round(min(memory, 1.0), 4),
        S=round(safety, 4),
        R=round(0.5 + 0.5 * reward, 4),
    )


def dialogue_state(ctx: TurnContext) -> str:
    """Name where the conversation is: crisis, ooc, closing, opening, or the intent's state."""
    perception = ctx.need(Perception)
    if perception.safety.override:
        return "crisis"
    if perception.ooc:
        return "out_of_character"
    if FAREWELLS & set(ctx.request.message.lower().replace("!", " ").split()):
        return "closing"
    top = perception.top_intent
    if ctx.depth == 0 and top in ("smalltalk", "meta_conversation"):
        return "opening"
    return STATE_BY_INTENT[top]


class MetacognitionStage:
    """Assess the turn: telemetry and dialogue state."""

    name = "metacognition"

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput:
        s = env.settings.metacognition
        return StageOutput(
            Metacognition(
                telemetry=telemetry(ctx, s.reward_ema, s.novelty_window),
                dialogue_state=dialogue_state(ctx),
            )
        )
