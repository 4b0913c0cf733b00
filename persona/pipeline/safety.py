"""Safety assessment of one message: risk per category, flags, and the reasons for each.

Deterministic and message-only (no chat state), so gating can size the crisis note before
perception runs and get the same verdict. Steps, each explained in `reasons`:

1. Idioms ("shoot me a summary", "this traffic is killing me") are blanked out first.
2. Each risk cue found adds its strength; a negator in the `NEGATION_WINDOW` tokens before
   it multiplies it by `NEGATION_DISCOUNT`; fiction framing ("a story where...")
   multiplies violence and crime cues by `FICTION_DISCOUNT`, and self-harm cues only
   when nobody speaks in the first person (a user's own wish to die is never fiction).
3. Means ("bridge", "pills") count toward self-harm only beside a self-harm cue.
4. Per category and in total, strengths combine by noisy-or: 1 - prod(1 - w).
"""

from __future__ import annotations

from dataclasses import dataclass

from persona.events import Safety
from persona.pipeline.lexicon import (
    FICTION_CUES,
    FIRST_PERSON,
    IDIOMS,
    MEANS_CUES,
    NEGATORS,
    RISK_CUES,
)
from persona.pipeline.text import Matcher, is_cjk, normalize, tokens

NEGATION_WINDOW = 3  # tokens before a cue searched for "not", "never", "don't"...
NEGATION_DISCOUNT = 0.5  # negated, still not nothing: "I don't want to die" is worth a check
FICTION_DISCOUNT = 0.3  # a villain's poison is a plot device, but still a little signal
FICTION_DISCOUNTED = frozenset({"violence", "crime"})
_BLANK = " xblankx "  # a token no cue contains: cues cannot match across a blanked idiom


@dataclass(frozen=True)
class Thresholds:
    """Where the flags start (risk >= threshold)."""

    intervened: float = 0.35
    escalated: float = 0.60
    blocked: float = 0.85


def _blank_idioms(text: str) -> tuple[str, list[str]]:
    """The normalized text with idioms blanked, and the idioms found."""
    norm = normalize(text)
    padded = f" {' '.join(tokens(norm))} "
    found = []
    for idiom in IDIOMS:
        if is_cjk(idiom):
            if idiom in norm:
                norm = norm.replace(idiom, _BLANK)
                padded = f" {' '.join(tokens(norm))} "
                found.append(idiom)
            continue
        needle = f" {' '.join(tokens(normalize(idiom)))} "
        if needle in padded:
            padded = padded.replace(needle, _BLANK)
            found.append(idiom)
    # Japanese idioms blank the raw text; English ones the token string (which keeps CJK).
    return padded if found else norm, found


def _noisy_or(weights: list[float]) -> float:
    survive = 1.0
    for w in weights:
        survive *= 1.0 - w
    return 1.0 - survive


def assess(text: str, limits: Thresholds) -> Safety:
    """Assess one message: categories, total risk, flags, cues and reasons."""
    masked, idioms = _blank_idioms(text)
    m = Matcher(masked)
    original = Matcher(text)
    reasons = [f"idiom '{i}' ignored" for i in idioms]
    fiction = next((c for c in FICTION_CUES if c in original), None)
    first_person = any(is_cjk(p) and p in original.text for p in FIRST_PERSON) or any(
        t in FIRST_PERSON for t in original.tokens
    )
    hits: dict[str, list[float]] = {}
    cues: list[str] = []
    for category, table in RISK_CUES.items():
        for phrase, weight in table.items():
            at = m.find(phrase)
            if at is None:
                continue
            w, why = weight, f"{category}: '{phrase}' {weight:.2f}"
            negator = None if is_cjk(phrase) else _negator(m.tokens, at)
            if negator is not None:
                w *= NEGATION_DISCOUNT
                why += f", negated by '{negator}' x{NEGATION_DISCOUNT}"
            # Japanese self-harm cues are desiderative (-tai): first person by grammar.
            own = first_person or is_cjk(phrase)
            discounted = category in FICTION_DISCOUNTED or (category == "self_harm" and not own)
            if fiction and discounted:
                w *= FICTION_DISCOUNT
                why += f", fiction framing ('{fiction}') x{FICTION_DISCOUNT}"
            hits.setdefault(category, []).append(w)
            cues.append(phrase)
            reasons.append(f"{why} -> {w:.2f}")
    if hits.get("self_harm"):
        for phrase, weight in MEANS_CUES.items():
            if phrase in m:
                hits["self_harm"].append(weight)
                cues.append(phrase)
                reasons.append(f"self_harm: means '{phrase}' beside a self-harm cue {weight:.2f}")
    categories = {c: round(_noisy_or(ws), 4) for c, ws in sorted(hits.items())}
    risk = round(_noisy_or([w for ws in hits.values() for w in ws]), 4)
    return Safety(
        total_risk=risk,
        override=risk >= limits.escalated,
        cues=cues,
        categories=categories,
        intervened=risk >= limits.intervened,
        escalated=risk >= limits.escalated,
        blocked=risk >= limits.blocked,
        reasons=reasons,
    )


def _negator(words: list[str], at: int) -> str | None:
    """A negating word among the few tokens before position `at`, if any."""
    return next((w for w in words[max(0, at - NEGATION_WINDOW) : at] if w in NEGATORS), None)
