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

reward_signal judges the previous reply, so a chat's first turn ignores it (recorded in
`reward`). When the average after this turn is at or below `dialogue.careful_reward`, the
reply turns careful: max_tokens shrinks by `careful_tokens` and the style hint asks for a
more careful, shorter answer (`dialogue.generation.careful`).

The dialogue state comes from `dialogue.decide` (the state machine), stepped from the
parent turn's snapshot, never rebuilt from scratch.
"""

from __future__ import annotations

from persona.events import MemoryRetrieval, Metacognition, Perception, Telemetry, Workspace
from persona.events.decisions import RewardJudgement
from persona.pipeline import dialogue
from persona.pipeline.context import StageEnv, StageOutput, TurnContext
from persona.pipeline.state import FIRST_TURN_REWARD, reward_after, reward_applies, smoothed_intent
from persona.pipeline.text import content_words, jaccard


def judge_reward(ctx: TurnContext, rate: float) -> RewardJudgement:
    """What this turn's reward_signal does to the reward average, and why."""
    signal = ctx.request.reward_signal
    applied = reward_applies(ctx.parent_state)
    return RewardJudgement(
        signal=signal,
        applied=applied,
        reason="applied to the previous reply" if applied else FIRST_TURN_REWARD,
        avg=round(reward_after(ctx.parent_state, signal, rate), 6),
    )


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
    reward = reward_after(ctx.parent_state, ctx.request.reward_signal, reward_ema)
    return Telemetry(
        C=round(coherence, 4),
        N=round(novelty, 4),
        M=round(min(memory, 1.0), 4),
        S=round(safety, 4),
        R=round(0.5 + 0.5 * reward, 4),
    )


class MetacognitionStage:
    """Assess the turn: telemetry, the reward's effect and the dialogue state."""

    name = "metacognition"

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput:
        s = env.settings.metacognition
        perception = ctx.need(Perception)
        reward = judge_reward(ctx, s.reward_ema)
        decision = dialogue.decide(
            ctx.parent_state,
            perception.intent,
            smoothed_intent(ctx.parent_state, perception),
            perception.safety.total_risk,
            perception.safety.override,
            perception.ooc,
            ctx.request.gen,
            ctx.request.gen_explicit,
            careful=dialogue.is_careful(reward.avg, s.dialogue),
            s=s.dialogue,
        )
        return StageOutput(
            Metacognition(
                telemetry=telemetry(ctx, s.reward_ema, s.novelty_window),
                dialogue_state=decision.state,
                dialogue=decision,
                reward=reward,
            )
        )
