"""Perception: what did the user say and mean (intent, safety risk, OOC, importance).

First honest form: weighted lexical and structural cues, turned into a distribution
over eight intents with a softmax. When `perception.use_classifier` is on, the
classifier model's structured answer is blended in (failures fall back to cues only
and are recorded as `classifier.failed` events).
"""

from __future__ import annotations

import math
import re
from typing import Literal, get_args

from pydantic import BaseModel, Field

from persona.events import ClassifierFailed, ClassifierInfo, EventPayload, Perception, Safety
from persona.llm.base import ChatMessage
from persona.pipeline.context import ModelCall, StageEnv, StageOutput, TurnContext
from persona.pipeline.text import words

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

# Cue phrases per intent with their weight; a phrase matches on word boundaries.
CUES: dict[str, dict[str, float]] = {
    "smalltalk": {
        "hello": 1.2,
        "hi": 1.2,
        "hey": 1.2,
        "good morning": 1.2,
        "good night": 1.0,
        "how are you": 1.5,
        "what's up": 1.2,
        "thanks": 0.8,
        "thank you": 0.8,
        "bye": 1.0,
        "weather": 0.8,
        "weekend": 0.6,
        "lol": 0.6,
        "nice": 0.4,
    },
    "meta_conversation": {
        "you said": 1.2,
        "this conversation": 1.4,
        "are you an ai": 1.8,
        "are you real": 1.6,
        "your memory": 1.4,
        "do you remember": 1.2,
        "remember when": 1.0,
        "your name": 0.9,
        "who are you": 1.2,
        "what are you": 1.2,
        "talk about": 0.6,
        "change the subject": 1.2,
        "ooc": 1.5,
        "out of character": 1.8,
    },
    "emotional_support": {
        "sad": 1.3,
        "lonely": 1.5,
        "anxious": 1.5,
        "anxiety": 1.5,
        "stressed": 1.3,
        "depressed": 1.6,
        "upset": 1.2,
        "scared": 1.2,
        "afraid": 1.1,
        "worried": 1.2,
        "overwhelmed": 1.5,
        "cry": 1.2,
        "crying": 1.3,
        "hurt": 1.0,
        "miss": 0.7,
        "hard day": 1.4,
        "feel bad": 1.3,
        "heartbroken": 1.6,
        "grief": 1.5,
        "tired of": 0.8,
    },
    "task_oriented": {
        "help me": 1.3,
        "can you": 0.9,
        "could you": 0.9,
        "please": 0.6,
        "write": 0.8,
        "make": 0.5,
        "plan": 0.9,
        "fix": 1.0,
        "list": 0.8,
        "summarize": 1.3,
        "translate": 1.3,
        "remind": 1.0,
        "schedule": 1.0,
        "draft": 1.1,
        "code": 1.0,
        "calculate": 1.2,
    },
    "factual_query": {
        "what is": 1.3,
        "what are": 1.1,
        "who is": 1.2,
        "when did": 1.3,
        "when is": 1.1,
        "where is": 1.2,
        "how many": 1.3,
        "how much": 1.1,
        "why do": 1.0,
        "why does": 1.1,
        "explain": 1.1,
        "define": 1.3,
        "fact": 0.8,
        "capital of": 1.4,
        "how does": 1.1,
    },
    "creative_roleplay": {
        "pretend": 1.5,
        "imagine": 1.2,
        "story": 1.2,
        "let's play": 1.5,
        "roleplay": 1.8,
        "role play": 1.8,
        "once upon": 1.6,
        "character": 0.9,
        "adventure": 1.0,
        "poem": 1.2,
        "scene": 1.0,
        "quest": 1.0,
        "dragon": 0.8,
    },
    "self_disclosure": {
        "i feel": 1.1,
        "i am": 0.5,
        "i'm": 0.5,
        "my mom": 1.0,
        "my dad": 1.0,
        "my wife": 1.0,
        "my husband": 1.0,
        "my friend": 0.8,
        "my job": 1.0,
        "i work": 0.9,
        "i live": 1.0,
        "i like": 0.8,
        "i love": 0.9,
        "i hate": 0.9,
        "my name is": 1.4,
        "i grew up": 1.3,
        "i think": 0.5,
        "my favorite": 1.1,
        "i have a": 0.7,
        "my birthday": 1.2,
    },
}

# Safety cues and their risk weight (0..1); the total risk is a noisy-or over matches.
RISK_CUES: dict[str, float] = {
    "kill myself": 0.95,
    "suicide": 0.9,
    "end my life": 0.95,
    "want to die": 0.9,
    "self harm": 0.85,
    "self-harm": 0.85,
    "hurt myself": 0.85,
    "cut myself": 0.85,
    "overdose": 0.7,
    "no reason to live": 0.85,
    "kill him": 0.8,
    "kill her": 0.8,
    "kill them": 0.8,
    "shoot": 0.45,
    "bomb": 0.55,
    "weapon": 0.35,
    "poison": 0.5,
    "hurt someone": 0.7,
    "abuse": 0.45,
    "hate myself": 0.5,
    "hopeless": 0.4,
}

_QUESTION_START = re.compile(r"^\s*(what|who|when|where|why|how|which|is|are|does|do|can)\b", re.I)
_ACTION_RE = re.compile(r"\*[^*\n]{2,}\*")


def _cue_hits(text: str, cues: dict[str, float]) -> tuple[float, list[str]]:
    padded = f" {' '.join(words(text))} "
    score, hits = 0.0, []
    for phrase, weight in cues.items():
        if f" {phrase} " in padded:
            score += weight
            hits.append(phrase)
    return score, hits


def safety_risk(text: str) -> tuple[float, list[str]]:
    """Noisy-or of the matched risk cues: 0 with none, near 1 with strong ones."""
    padded = f" {' '.join(words(text))} "
    survive, hits = 1.0, []
    for phrase, weight in RISK_CUES.items():
        if f" {' '.join(words(phrase))} " in padded:
            survive *= 1.0 - weight
            hits.append(phrase)
    return round(1.0 - survive, 4), hits


def intent_scores(text: str) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Evidence per intent from cues and structure, softmaxed into a distribution."""
    evidence: dict[str, float] = {}
    hits: dict[str, list[str]] = {}
    for intent, cues in CUES.items():
        evidence[intent], hits[intent] = _cue_hits(text, cues)
    if "?" in text or _QUESTION_START.match(text):
        evidence["factual_query"] += 0.8
    if _ACTION_RE.search(text):
        evidence["creative_roleplay"] += 1.2
    if text.lstrip().startswith("(("):
        evidence["meta_conversation"] += 1.5
    risk, risk_hits = safety_risk(text)
    evidence["safety_risk"] = 4.0 * risk
    hits["safety_risk"] = risk_hits
    if len(words(text)) <= 4 and max(evidence.values()) < 0.5:
        evidence["smalltalk"] += 0.7  # short, cue-less openers are usually phatic
    # Temperature 0.8 keeps one strong cue decisive without zeroing the rest.
    exps = {k: math.exp(v / 0.8) for k, v in evidence.items()}
    total = sum(exps.values())
    return {k: round(exps[k] / total, 4) for k in INTENTS}, hits


def importance(text: str, intent: dict[str, float], risk: float) -> float:
    """How much this message is worth remembering (0..1)."""
    length = min(len(words(text)) / 40.0, 1.0)
    personal = intent["self_disclosure"] + intent["emotional_support"]
    return round(min(1.0, 0.2 + 0.3 * length + 0.4 * personal + 0.3 * risk), 4)


class IntentJudgement(BaseModel):
    """The classifier model's reading of a message (every field has a default)."""

    # A Literal, not str: the JSON-schema grammar then only admits the eight labels.
    primary_intent: Intent = "smalltalk"
    confidence: float = Field(default=0.0, ge=0.0, le=1.0)


class PerceptionStage:
    """Turn the raw message into intent, safety and OOC signals."""

    name = "perception"

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput:
        text = ctx.request.message
        settings = env.settings.perception
        intent, hits = intent_scores(text)
        risk, risk_hits = safety_risk(text)
        ooc = text.lstrip().startswith("((")
        extra: tuple[EventPayload, ...] = ()
        classifier: ClassifierInfo | None = None
        call: ModelCall | None = None
        if settings.use_classifier and env.backend.supports_structured:
            intent, classifier, failure, call = await self._classify(text, intent, env)
            if failure is not None:
                extra = (failure,)
        decision = Perception(
            intent=intent,
            top_intent=max(intent, key=lambda k: intent[k]),
            cues={k: v for k, v in hits.items() if v},
            safety=Safety(
                total_risk=risk,
                override=risk >= settings.safety_override_threshold,
                cues=risk_hits,
            ),
            ooc=ooc,
            importance=importance(text, intent, risk),
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
