"""Perception: what did the user say and mean (intent, safety, feeling, OOC, importance).

Hybrid and recurrent. A lexicon scorer (English and Japanese, `persona.pipeline.lexicon`)
turns cues and structure into evidence per intent; `passes` re-appraisals blend in, for a
message whose own evidence is weak, the chat's smoothed intents and the previous pass's
reading, and report how much the last pass still moved (`stability`). When
`perception.use_classifier` is on, the classifier model's structured answer is fused in
(failures fall back to the lexicon alone, recorded as `classifier.failed` events). Safety
is message-only (`persona.pipeline.safety`). The formulas and their reasons are in
docs/control-plane.md.
"""

from __future__ import annotations

import math
import re
from typing import Literal, get_args

from pydantic import BaseModel, Field

from persona.config import PerceptionSettings
from persona.events import ClassifierFailed, ClassifierInfo, EventPayload, Perception, Safety
from persona.events.decisions import Appraisal
from persona.llm.base import ChatMessage
from persona.pipeline.context import ModelCall, StageEnv, StageOutput, TurnContext
from persona.pipeline.lexicon import (
    EMOTION_AXES,
    EMOTION_CUES,
    INTENSIFIERS,
    INTENT_CUES,
    REMEMBER_CUES,
)
from persona.pipeline.safety import Thresholds, assess
from persona.pipeline.state import smooth_intents
from persona.pipeline.text import Matcher, is_cjk

Intent = Literal[
    "smalltalk",
    "meta_conversation",
    "emotional_support",
    "task_oriented",
    "factual_query",
    "creative_roleplay",
    "self_disclosure",
    "safety_risk",
]
INTENTS: tuple[str, ...] = get_args(Intent)

TEMPERATURE = 0.8  # softmax: one strong cue is decisive without zeroing the rest
QUESTION_BONUS = 0.8  # a "?" or a question form, to factual_query
ACTION_BONUS = 1.2  # *stage directions*, to creative_roleplay
OOC_BONUS = 1.5  # the OOC marker, to meta_conversation
RISK_EVIDENCE = 4.0  # safety_risk evidence = RISK_EVIDENCE * total risk
SHORT_LEAN = 0.7  # a short message with no cue leans to smalltalk (phatic openers)
SHORT_WORDS = 4  # "short": at most this many words
NO_CUE = 0.5  # "no cue": no intent has this much evidence
CJK_CHARS_PER_WORD = 2.0  # Japanese has no spaces: count about two characters as a word
# Recurrence: the prior (chat's smoothed intents, previous pass) weighs in only as far as
# the message itself is ambiguous: ambiguity = 1 - max evidence / AMBIGUITY_SPAN, >= 0.
AMBIGUITY_SPAN = 2.0
CONTINUITY_WEIGHT = 1.0  # logits per unit of the chat's smoothed intent
RECURRENCE_WEIGHT = 0.5  # logits per unit of the previous pass (< 2 T: a contraction)
SECONDARY_MIN = 0.15  # a runner-up below this is no secondary intent

_QUESTION_START = re.compile(r"^\s*(what|who|when|where|why|how|which|is|are|does|do|can)\b", re.I)
# Japanese question forms at the end: ですか, ますか, か。, の?, かな.
_JA_QUESTION = re.compile(r"(ですか|ますか|か。|かな|の\?|か\?)\s*$")
_ACTION_RE = re.compile(r"\*[^*\n]{2,}\*")


def word_count(m: Matcher) -> float:
    """Words in the message, Japanese runs counted by characters / CJK_CHARS_PER_WORD."""
    return sum(len(t) / CJK_CHARS_PER_WORD if is_cjk(t) else 1.0 for t in m.tokens)


def _cue_hits(m: Matcher, cues: dict[str, float]) -> tuple[float, list[str]]:
    hits = [phrase for phrase in cues if phrase in m]
    return sum(cues[p] for p in hits), hits


def safety_risk(text: str) -> tuple[float, list[str]]:
    """The message's total risk (noisy-or of its cues, default thresholds) and the cues."""
    verdict = assess(text, Thresholds())
    return verdict.total_risk, verdict.cues


def is_ooc(text: str, marker: str = "((") -> bool:
    """Whether the message is out of character: it starts with the marker."""
    return text.lstrip().startswith(marker)


def intent_evidence(
    text: str, risk: float, ooc_marker: str = "(("
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Evidence (logits) per intent from the lexicon and structure, and the cues found."""
    m = Matcher(text)
    evidence: dict[str, float] = {}
    hits: dict[str, list[str]] = {}
    for intent, cues in INTENT_CUES.items():
        evidence[intent], hits[intent] = _cue_hits(m, cues)
    stripped = m.text.strip()
    if "?" in stripped or _QUESTION_START.match(text) or _JA_QUESTION.search(stripped):
        evidence["factual_query"] += QUESTION_BONUS
    if _ACTION_RE.search(text):
        evidence["creative_roleplay"] += ACTION_BONUS
    if is_ooc(text, ooc_marker):
        evidence["meta_conversation"] += OOC_BONUS
    evidence["safety_risk"] = RISK_EVIDENCE * risk
    hits["safety_risk"] = []
    if word_count(m) <= SHORT_WORDS and max(evidence.values()) < NO_CUE:
        evidence["smalltalk"] += SHORT_LEAN
    return {k: evidence[k] for k in INTENTS}, hits


def softmax(logits: dict[str, float]) -> dict[str, float]:
    """A distribution over the intents (full precision)."""
    top = max(logits.values())
    exps = {k: math.exp((v - top) / TEMPERATURE) for k, v in logits.items()}
    total = sum(exps.values())
    return {k: exps[k] / total for k in INTENTS}


def recur(
    evidence: dict[str, float], prior: dict[str, float], passes: int
) -> tuple[dict[str, float], float]:
    """Run the passes; return the last reading and its stability (1 - half its L1 move).

    Pass k reads softmax(evidence + ambiguity * (CONTINUITY_WEIGHT * prior +
    RECURRENCE_WEIGHT * reading_{k-1})), starting from the lexicon-only reading. The map is
    a contraction (its gain is at most RECURRENCE_WEIGHT / (2 T) < 1), so it converges.
    """
    ambiguity = max(0.0, 1.0 - max(evidence.values()) / AMBIGUITY_SPAN)
    reading = softmax(evidence)
    previous = reading
    for _ in range(passes):
        previous = reading
        reading = softmax(
            {
                k: evidence[k]
                + ambiguity
                * (CONTINUITY_WEIGHT * prior.get(k, 0.0) + RECURRENCE_WEIGHT * previous[k])
                for k in INTENTS
            }
        )
    moved = sum(abs(reading[k] - previous[k]) for k in INTENTS) / 2
    return reading, round(1.0 - moved, 4)


def intent_scores(
    text: str, prior: dict[str, float] | None = None, passes: int = 1
) -> tuple[dict[str, float], dict[str, list[str]], float]:
    """The intent distribution (rounded), the cues behind it, and its stability."""
    risk = safety_risk(text)[0]
    evidence, hits = intent_evidence(text, risk)
    reading, stability = recur(evidence, prior or {}, passes)
    return {k: round(v, 4) for k, v in reading.items()}, hits, stability


def ranked(intent: dict[str, float]) -> tuple[str, str | None]:
    """Primary and secondary intent (ties go to the earlier intent in INTENTS)."""
    order = sorted(INTENTS, key=lambda k: -intent.get(k, 0.0))
    second = order[1] if intent.get(order[1], 0.0) >= SECONDARY_MIN else None
    return order[0], second


# ---- appraisal and importance ------------------------------------------------------

AROUSAL_BASE = 0.1  # a calm, emotion-free message
INTENSITY_STEP = 0.1  # each intensifier or "!" (at most MAX_INTENSITY of them)
MAX_INTENSITY = 3


def appraise(text: str) -> Appraisal:
    """Valence, arousal and discrete emotions of the message (EN and JA lexicon).

    Each emotion is the noisy-or of its cues. Valence is the emotions' valences weighted
    by strength, divided by max(1, total strength); arousal is AROUSAL_BASE plus the
    strength-weighted arousal scaled by the strongest emotion, plus INTENSITY_STEP per
    intensifier or "!".
    """
    m = Matcher(text)
    emotions: dict[str, float] = {}
    for emotion, cues in EMOTION_CUES.items():
        survive = 1.0
        for phrase, weight in cues.items():
            if phrase in m:
                survive *= 1.0 - weight
        if survive < 1.0:
            emotions[emotion] = round(1.0 - survive, 4)
    total = sum(emotions.values())
    valence = sum(s * EMOTION_AXES[e][0] for e, s in emotions.items()) / max(1.0, total)
    felt = sum(s * EMOTION_AXES[e][1] for e, s in emotions.items()) / total if total else 0.0
    boosts = sum(1 for w in INTENSIFIERS if w in m) + m.text.count("!")
    arousal = (
        AROUSAL_BASE
        + felt * max(emotions.values(), default=0.0)
        + INTENSITY_STEP * min(boosts, MAX_INTENSITY)
    )
    return Appraisal(
        valence=round(max(-1.0, min(1.0, valence)), 4),
        arousal=round(min(1.0, arousal), 4),
        emotions=emotions,
    )


# Importance 1..10 = 1 + sum of these weights times their 0..1 parts, rounded down (a part
# must add a whole point: an "ok" with a little of every intent stays 1). Max raw is 13.
IMPORTANCE_WEIGHTS: dict[str, float] = {
    "disclosure": 3.0,  # self_disclosure + emotional_support share (capped at 1)
    "emotion": 2.0,  # the strongest emotion
    "risk": 3.0,  # total safety risk
    "length": 1.0,  # words / LENGTH_FULL (capped at 1)
    "remember": 3.0,  # an explicit "remember this" / 覚えて
}
LENGTH_FULL = 40.0


def importance_score(text: str, intent: dict[str, float], risk: float, appraisal: Appraisal) -> int:
    """How much the exchange matters, 1..10 (memory will use it)."""
    m = Matcher(text)
    parts = {
        "disclosure": min(1.0, intent["self_disclosure"] + intent["emotional_support"]),
        "emotion": max(appraisal.emotions.values(), default=0.0),
        "risk": risk,
        "length": min(word_count(m) / LENGTH_FULL, 1.0),
        "remember": 1.0 if any(c in m for c in REMEMBER_CUES) else 0.0,
    }
    raw = 1.0 + sum(IMPORTANCE_WEIGHTS[k] * v for k, v in parts.items())
    return max(1, min(10, math.floor(raw)))


def importance(text: str, intent: dict[str, float], risk: float) -> float:
    """The memory weight of the message (0..1): what episodic memories are ranked by."""
    length = min(word_count(Matcher(text)) / LENGTH_FULL, 1.0)
    personal = intent["self_disclosure"] + intent["emotional_support"]
    return round(min(1.0, 0.2 + 0.3 * length + 0.4 * personal + 0.3 * risk), 4)


def perceive(
    text: str, settings: PerceptionSettings, prior: dict[str, float]
) -> tuple[dict[str, float], dict[str, list[str]], Safety, float]:
    """The lexicon half of perception: intents after the passes, cues, safety, stability."""
    safety = assess(
        text,
        Thresholds(
            intervened=settings.safety_intervened_threshold,
            escalated=settings.safety_override_threshold,
            blocked=settings.safety_blocked_threshold,
        ),
    )
    evidence, hits = intent_evidence(text, safety.total_risk, settings.ooc_marker)
    hits["safety_risk"] = list(safety.cues)
    reading, stability = recur(evidence, prior, settings.passes)
    return {k: round(v, 4) for k, v in reading.items()}, hits, safety, stability


class IntentJudgement(BaseModel):
    """The classifier model's reading of a message (every field has a default)."""

    # A Literal, not str: the JSON-schema grammar then only admits the eight labels.
    primary_intent: Intent = "smalltalk"
    confidence: float = Field(default=0.0, ge=0.0, le=1.0)


class PerceptionStage:
    """Turn the raw message into intent, safety, appraisal, importance and OOC signals."""

    name = "perception"

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput:
        text = ctx.request.message
        settings = env.settings.perception
        intent, hits, safety, stability = perceive(text, settings, ctx.parent_state.intents)
        extra: tuple[EventPayload, ...] = ()
        classifier: ClassifierInfo | None = None
        call: ModelCall | None = None
        if settings.use_classifier and env.backend.supports_structured:
            intent, classifier, failure, call = await self._classify(text, intent, env)
            if failure is not None:
                extra = (failure,)
        primary, secondary = ranked(intent)
        appraisal = appraise(text)
        decision = Perception(
            intent=intent,
            top_intent=primary,
            intent_smoothed=smooth_intents(ctx.parent_state.intents, intent),
            primary_intent=primary,
            secondary_intent=secondary,
            cues={k: v for k, v in hits.items() if v},
            safety=safety,
            ooc=is_ooc(text, settings.ooc_marker),
            importance=importance(text, intent, safety.total_risk),
            importance_score=importance_score(text, intent, safety.total_risk, appraisal),
            appraisal=appraisal,
            passes=settings.passes,
            stability=stability,
            classifier=classifier,
        )
        return StageOutput(decision, extra, call)

    async def _classify(
        self, text: str, intent: dict[str, float], env: StageEnv
    ) -> tuple[dict[str, float], ClassifierInfo, ClassifierFailed | None, ModelCall]:
        from persona.llm.structured import structured_call

        model = env.settings.llm.classifier_model
        prompt = [
            ChatMessage(
                role="system",
                content="Classify the user's message. primary_intent is one of: "
                + ", ".join(INTENTS)
                + ". Answer as JSON.",
            ),
            ChatMessage(role="user", content=text),
        ]
        result = await structured_call(
            env.backend,
            IntentJudgement,
            prompt,
            model=model,
            timeout_s=env.settings.perception.classifier_timeout_s,
            retries=env.settings.perception.classifier_retries,
        )
        info = ClassifierInfo(
            ok=result.ok,
            primary_intent=result.value.primary_intent,
            confidence=result.value.confidence,
            attempts=result.attempts,
            model=model,
        )
        call = ModelCall(
            model=model,
            tokens_in=sum(env.count_tokens(m.content) for m in prompt),
            tokens_out=None,  # instructor does not hand back the usage of its attempts
            latency_ms=round(result.latency_ms, 3),
        )
        if not result.ok:
            failure = ClassifierFailed(
                stage=self.name,
                schema_name="IntentJudgement",
                model=model,
                error=result.error or "unknown error",
                attempts=result.attempts,
            )
            return intent, info, failure, call
        label = result.value.primary_intent
        # Blend: the classifier moves `confidence/2` of the mass onto its label.
        w = result.value.confidence / 2
        intent = {k: round((1 - w) * v + (w if k == label else 0.0), 4) for k, v in intent.items()}
        return intent, info, None, call
