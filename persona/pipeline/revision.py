"""Confidence of the turn and the decision candidates it chooses between.

confidence = 0.4 * margin + 0.2 * stability + 0.4 * grounding, 0..1, where margin is the
primary intent's share minus the runner-up's (how clearly the message reads), stability
is perception's (1.0 when not recorded) and grounding = max(C, M) (the turn has context
or memory behind it). Below `metacognition.revision_threshold` the turn is uncertain.

The decision candidates (each 0..1, deterministic; ties go to the one listed first):
  answer_in_state    (1 - risk) * (0.5 + 0.5 * confidence)
  short_task_answer  min(1, task share + 0.2 when OVERLOADED) * (1 - risk)
  clarify            min(1, 0.8 * (1 - confidence) + 0.1 when REFLECTIVE) * (1 - risk)
  safety_redirect    max(risk, 1.0 when forced)
safety_redirect is chosen exactly when it is forced (the safety override or the S6 hold:
what makes the prompt's safe template and the S6 line), so the chosen option and the
prompt never disagree; otherwise the best of the other three is chosen.
Belief revision: when the confidence is below the threshold, memory, gating and
metacognition re-run (at most MAX_ROUNDS rounds), each round widened: round r asks for
(1 + r) times the lexical and recent memory candidates (top_k stays) and adds the
content words of the previous exchange (the parent turn's message and reply) to the
query. A round runs only while the last confidence is still below the threshold, only
when it can find something new (terms to add, or the last search was cut at its candidate
limit), and a second one only when the first changed something. Each round is a
`belief.revised` event after its own stage events; the last round's decisions are the
turn's (the speaker, the chat state and meta read those).
Every weight and its reason is in docs/control-plane.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from persona.events import (
    BeliefRevised,
    MemoryRetrieval,
    Metacognition,
    Perception,
    Telemetry,
    Workspace,
)
from persona.events.decisions import ConfidenceDecision, DecisionOption
from persona.pipeline import dialogue
from persona.pipeline.context import Stage, StageEnv, TurnContext
from persona.pipeline.memory import MAX_TERMS, search_terms

MARGIN_WEIGHT, STABILITY_WEIGHT, GROUNDING_WEIGHT = 0.4, 0.2, 0.4
# The clarifying question's weight: below the plain answer unless confidence is low.
CLARIFY_WEIGHT = 0.8
# Brief answers when the prompt room is tight; a question back when reflecting.
OVERLOAD_BONUS, REFLECTIVE_BONUS = 0.2, 0.1
TASK_INTENTS = ("task_oriented", "factual_query")

ANSWER, SHORT, CLARIFY, SAFETY = (
    "answer_in_state",
    "short_task_answer",
    "clarify",
    "safety_redirect",
)
OPTIONS = (ANSWER, SHORT, CLARIFY, SAFETY)


def intent_margin(intent: dict[str, float]) -> float:
    """The primary intent's share minus the runner-up's (0..1)."""
    top = [*sorted(intent.values(), reverse=True), 0.0, 0.0]
    return round(max(top[0] - top[1], 0.0), 4)


def decide_confidence(
    perception: Perception, telemetry: Telemetry, threshold: float
) -> ConfidenceDecision:
    """The turn's confidence and whether it is below the revision threshold."""
    margin = intent_margin(perception.intent)
    stability = 1.0 if perception.stability is None else perception.stability
    grounding = max(telemetry.C, telemetry.M)
    value = MARGIN_WEIGHT * margin + STABILITY_WEIGHT * stability + GROUNDING_WEIGHT * grounding
    value = round(min(max(value, 0.0), 1.0), 4)
    return ConfidenceDecision(
        value=value,
        margin=margin,
        stability=round(stability, 4),
        grounding=round(grounding, 4),
        threshold=threshold,
        low=value < threshold,
    )


def safety_forced(perception: Perception, dialogue_state: str) -> bool:
    """The safety override or the S6 hold: the prompt already turns safe and caring."""
    return perception.safety.override or dialogue_state == dialogue.SAFETY


def decide_candidates(
    perception: Perception, confidence: float, dialogue_state: str, global_state: str
) -> list[DecisionOption]:
    """At least three scored options for the turn, exactly one chosen."""
    risk = perception.safety.total_risk
    safe = 1.0 - risk
    task = sum(perception.intent.get(k, 0.0) for k in TASK_INTENTS)
    overloaded = global_state == "OVERLOADED"
    reflective = global_state == "REFLECTIVE"
    forced = safety_forced(perception, dialogue_state)
    scores = {
        ANSWER: safe * (0.5 + 0.5 * confidence),
        SHORT: min(1.0, task + (OVERLOAD_BONUS if overloaded else 0.0)) * safe,
        CLARIFY: min(
            1.0, CLARIFY_WEIGHT * (1 - confidence) + (REFLECTIVE_BONUS if reflective else 0.0)
        )
        * safe,
        SAFETY: 1.0 if forced else risk,
    }
    scores = {k: round(min(max(v, 0.0), 1.0), 4) for k, v in scores.items()}
    if forced:
        chosen = SAFETY
    else:
        chosen = max((ANSWER, SHORT, CLARIFY), key=lambda k: (scores[k], -OPTIONS.index(k)))
    reasons = {
        ANSWER: f"(1 - risk {risk:.2f}) x (0.5 + 0.5 x confidence {confidence:.2f})"
        f" in {dialogue_state}",
        SHORT: f"task share {task:.2f}"
        + (f" + {OVERLOAD_BONUS} (OVERLOADED)" if overloaded else "")
        + f", x (1 - risk {risk:.2f})",
        CLARIFY: f"{CLARIFY_WEIGHT} x (1 - confidence {confidence:.2f})"
        + (f" + {REFLECTIVE_BONUS} (REFLECTIVE)" if reflective else "")
        + f", x (1 - risk {risk:.2f})",
        SAFETY: "forced: safety override or S6 hold"
        if forced
        else f"risk {risk:.2f}; only chosen when forced (override or S6)",
    }
    return [
        DecisionOption(name=k, score=scores[k], chosen=k == chosen, reason=reasons[k])
        for k in OPTIONS
    ]


def chosen_option(candidates: Sequence[DecisionOption]) -> str:
    """The chosen option's name ("" in events recorded before decision candidates)."""
    return next((c.name for c in candidates if c.chosen), "")


MAX_ROUNDS = 2
# The stages a round re-runs, in pipeline order.
REVISED_STAGES = ("memory", "gating", "metacognition")


def _selected(workspace: Workspace) -> list[str]:
    return [*workspace.selected_memories, *workspace.selected_history]


def open_round(ctx: TurnContext, env: StageEnv) -> BeliefRevised | None:
    """The next revision round, widened, or None when the turn needs no (more) revision."""
    metacog = ctx.need(Metacognition)
    confidence = metacog.confidence
    last = ctx.get(BeliefRevised)
    round_ = last.round + 1 if last else 1
    if confidence is None or not confidence.low or round_ > MAX_ROUNDS:
        return None
    if last is not None and not last.changed:
        return None  # the wider search found nothing new: a wider one is not worth a round
    s = env.settings.memory
    added: list[str] = []
    if ctx.history:
        previous = ctx.history[-1]
        mine = set(search_terms(ctx.request.message))
        words = search_terms(previous.user_message + " " + previous.reply)
        added = [w for w in words if w not in mine][:MAX_TERMS]
    if not added and ctx.need(MemoryRetrieval).candidates < s.fts_candidates + s.recent_candidates:
        # The search was not cut short (fewer candidates than it asked for) and no term is
        # added: a wider search cannot find anything new.
        return None
    return BeliefRevised(
        round=round_,
        reason=f"confidence {confidence.value:.2f} < threshold {confidence.threshold}",
        confidence_before=confidence.value,
        terms_added=added,
        fts_candidates=s.fts_candidates * (1 + round_),
        recent_candidates=s.recent_candidates * (1 + round_),
        top_k=s.top_k,
    )


def close_round(
    opened: BeliefRevised, before: tuple[MemoryRetrieval, Workspace], ctx: TurnContext
) -> BeliefRevised:
    """The round's record: what it changed and the confidence after it."""
    memory, workspace = ctx.need(MemoryRetrieval), ctx.need(Workspace)
    was, now = _selected(before[1]), _selected(workspace)
    confidence = ctx.need(Metacognition).confidence
    grew = memory.candidates - before[0].candidates
    added = [i for i in now if i not in was]
    dropped = [i for i in was if i not in now]
    return opened.model_copy(
        update={
            "confidence_after": confidence.value if confidence else None,
            "new_candidates": grew,
            "selected_added": added,
            "selected_dropped": dropped,
            "changed": grew > 0 or bool(added or dropped),
        }
    )


async def revise(
    ctx: TurnContext,
    env: StageEnv,
    stages: Sequence[Stage],
    run: Callable[[Stage], Awaitable[None]],
    done: Callable[[BeliefRevised], Awaitable[None]],
) -> int:
    """Run the revision rounds the turn needs; `run` runs and records one stage (the
    caller appends its event), `done` records a round's closing event. Returns rounds run.
    """
    again = [s for name in REVISED_STAGES for s in stages if s.name == name]
    rounds = 0
    while (opened := open_round(ctx, env)) is not None:
        before = (ctx.need(MemoryRetrieval), ctx.need(Workspace))
        ctx.record(opened)  # the memory stage reads the widening from it
        for stage in again:
            await run(stage)
        closed = close_round(opened, before, ctx)
        ctx.record(closed)
        await done(closed)
        rounds += 1
    return rounds
