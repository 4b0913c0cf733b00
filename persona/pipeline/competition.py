"""Workspace competition: candidates win a limited workspace by simulated dynamics.

Memories, edges, emotions and the current goal compete for K slots (default 7). No LLM
judges them: each contender's activation starts at its salience and, for a fixed number of
synchronous iterations,

    a_i <- clamp01(a_i + excite_i - decay * a_i - inhibition * a_i * sum_j sim(i, j) * a_j)

    excite_i = excitation * (a_i - mean) * (1 - a_i)   if a_i >= mean
             = excitation * (a_i - mean) * a_i         otherwise

where j runs over the contenders stronger than i whose Jaccard similarity to i is at or
above the `similarity` threshold. Self-excitation widens the gap to the mean and is
strictly order-preserving, so it alone never reorders and never leaves 0..1; only
inhibition reorders, and only among similar items: the weaker of a near-duplicate pair
sinks and a less salient but distinct item can take its slot. Inhibition is shunting
(scaled by the weaker item's own activation): a duplicate fades geometrically rather than
dropping to 0, so it still outranks distinct items of very low salience. The top K by final
activation win. A pure function: contenders are processed in item_id order and every sum
is exactly rounded (`math.fsum`), so any permutation of the input gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Contender:
    """One candidate for the workspace."""

    item_id: str
    kind: str  # "memory", "edge", "emotion", "goal", ...
    salience: float  # 0..1, the starting activation
    terms: frozenset[str]  # content terms, for similarity


@dataclass(frozen=True)
class CompetitionParams:
    """The knobs of the dynamics; the defaults are explained in docs/memory.md."""

    k: int = 7
    iterations: int = 8
    excitation: float = 0.3
    inhibition: float = 0.25
    similarity: float = 0.5
    decay: float = 0.0

    def __post_init__(self) -> None:
        if self.k < 0 or self.iterations < 0:
            raise ValueError("k and iterations must be >= 0")
        # Below 1 the excitation step is strictly increasing in a_i (order is kept).
        if not 0.0 <= self.excitation < 1.0:
            raise ValueError("excitation must be in [0, 1)")
        if self.inhibition < 0.0 or not 0.0 <= self.decay <= 1.0:
            raise ValueError("inhibition must be >= 0 and decay in [0, 1]")
        # A threshold of 0 would make every pair compete, even ones sharing no term.
        if not 0.0 < self.similarity <= 1.0:
            raise ValueError("similarity must be in (0, 1]")


@dataclass(frozen=True)
class CompetitionResult:
    """Who won, and how the activations got there."""

    winners: tuple[str, ...]  # strongest first
    activations: dict[str, float]  # final, rounded to 4 places, keys sorted
    trace: tuple[dict[str, float], ...]  # after each iteration (0 = start), rounded
    inhibitions: int  # (stronger inhibits weaker) events over all iterations
    iterations: int


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two term sets; 0 when both are empty."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _snapshot(ids: Sequence[str], acts: Sequence[float]) -> dict[str, float]:
    return {i: round(a, 4) for i, a in zip(ids, acts, strict=True)}


def compete(
    contenders: Sequence[Contender], params: CompetitionParams = CompetitionParams()
) -> CompetitionResult:
    """Run the competition and return the top-k winners with the activation trace."""
    items = sorted(contenders, key=lambda c: c.item_id)
    ids = [c.item_id for c in items]
    if len(set(ids)) != len(ids):
        raise ValueError("contender item_ids must be unique")
    for c in items:
        if not 0.0 <= c.salience <= 1.0:
            raise ValueError(f"salience of {c.item_id} must be in [0, 1]")
    n = len(items)
    # Pairs that compete, each once (i < j in item_id order), with their similarity.
    pairs = [
        (i, j, s)
        for i in range(n)
        for j in range(i + 1, n)
        if (s := similarity(items[i].terms, items[j].terms)) >= params.similarity
    ]

    acts = [c.salience for c in items]
    trace = [_snapshot(ids, acts)]
    inhibitions = 0
    for _ in range(params.iterations):
        # Synchronous update: everything below reads the activations at the step's start.
        mean = math.fsum(acts) / n if n else 0.0
        pushes: list[list[float]] = [[] for _ in range(n)]
        for i, j, s in pairs:
            # Stronger: higher activation, then higher salience, then smaller item_id
            # (the same order that ranks the winners).
            strong, weak = (i, j) if _rank(items, acts, i) < _rank(items, acts, j) else (j, i)
            if acts[weak] > 0.0:  # an item at 0 feels no push (shunting), so no event
                pushes[weak].append(s * acts[strong])
                inhibitions += 1
        new = []
        for i, a in enumerate(acts):
            gap = a - mean
            excite = params.excitation * gap * ((1.0 - a) if gap >= 0.0 else a)
            push = params.inhibition * a * math.fsum(pushes[i])
            # Only the floor binds in exact arithmetic (excitation < 1 keeps a <= 1); the
            # ceiling guards against roundoff.
            new.append(min(1.0, max(0.0, a + excite - params.decay * a - push)))
        acts = new
        trace.append(_snapshot(ids, acts))

    order = sorted(range(n), key=lambda i: _rank(items, acts, i))
    return CompetitionResult(
        winners=tuple(ids[i] for i in order[: params.k]),
        activations=dict(trace[-1]),
        trace=tuple(trace),
        inhibitions=inhibitions,
        iterations=params.iterations,
    )


def _rank(items: Sequence[Contender], acts: Sequence[float], i: int) -> tuple[float, float, str]:
    """Sort key, strongest first: activation, then salience, then item_id."""
    return (-acts[i], -items[i].salience, items[i].item_id)
