"""Memory: what is relevant to this message, among what this user may recall.

Candidates are the persona's L1/L2 memories that match the message's terms (SQLite FTS5
BM25), scoped to who is present: a memory is recallable by its witnesses, or by anyone
when it is shared (`queries._RECALLABLE`); tombstoned, invalidated and pinned ones never
are. Terms that match too many memories are dropped first (`queries.common_terms`), which
bounds the BM25 work at any store size. The candidates are then ranked in several lists
(lexical, recency, importance, entity/speaker match) fused by weighted reciprocal rank
(`fuse`); every retrieved memory reports each component. The L3 core memory (the
persona's genesis) and the memories the user pinned are always present. Writing the
turn's memories happens after the reply has streamed (see `post.EpisodicWrite`); which
memories a turn used is recorded then too (`memory.accessed`). docs/memory.md has the
formulas and the reasons.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from persona.clock import parse_iso
from persona.config import MemorySettings
from persona.events import (
    BeliefRevised,
    CoreMemory,
    MemoryRetrieval,
    RetrievedMemory,
    Utterance,
)
from persona.llm.base import LLMError
from persona.pipeline import dense
from persona.pipeline.context import StageEnv, StageOutput, TurnContext
from persona.pipeline.extract import entities
from persona.pipeline.text import content_words
from persona.storage import queries
from persona.storage.queries import MemoryHit

log = logging.getLogger(__name__)

MAX_TERMS = 24
PINNED_LIMIT = 8  # pinned memories always in context, oldest first


def search_terms(text: str) -> list[str]:
    """The message's content words, sorted, at most MAX_TERMS."""
    return sorted(content_words(text))[:MAX_TERMS]


def query_names(text: str) -> frozenset[str]:
    """The names the message mentions, case-folded (for the entity/speaker list)."""
    return frozenset(name.casefold() for name in entities(text))


def recency(created_at: str, now: datetime, half_life_h: float) -> float:
    """1.0 for a memory written now, 0.5 after one half-life."""
    age_h = max((now - parse_iso(created_at)).total_seconds() / 3600.0, 0.0)
    return math.exp(-math.log(2) * age_h / half_life_h)


def memory_names(hit: MemoryHit) -> frozenset[str]:
    """A memory's names: the entities it mentions and who spoke in it, case-folded."""
    names = {str(n).casefold() for n in json.loads(hit.entities)}
    names |= {str(u.get("name", "")).casefold() for u in json.loads(hit.said)}
    names.discard("")
    return frozenset(names)


@dataclass(frozen=True)
class _Parts:
    hit: MemoryHit
    lexical: float | None
    recency: float
    entity: float
    dense: float | None = None


def _reciprocal(order: list[_Parts], weight: float, k: int) -> dict[str, float]:
    return {p.hit.memory_id: weight / (k + rank) for rank, p in enumerate(order, start=1)}


def _parts(
    candidates: list[MemoryHit],
    now: datetime,
    names: frozenset[str],
    s: MemorySettings,
    cosines: dict[str, float] | None = None,
) -> list[_Parts]:
    out = []
    for c in candidates:
        found = memory_names(c) & names
        out.append(
            _Parts(
                c,
                c.lexical,
                recency(c.created_at, now, s.recency_half_life_h),
                len(found) / len(names) if names else 0.0,
                None if cosines is None else max(cosines.get(c.memory_id, 0.0), 0.0),
            )
        )
    return out


def _retrieved(p: _Parts, score: float) -> RetrievedMemory:
    return RetrievedMemory(
        memory_id=p.hit.memory_id,
        content=p.hit.content,
        chat_id=p.hit.chat_id,
        score=round(score, 4),
        lexical=round(p.lexical or 0.0, 4),
        recency=round(p.recency, 4),
        importance=round(p.hit.importance, 4),
        entity=round(p.entity, 4),
        dense=None if p.dense is None else round(p.dense, 4),
        tier=p.hit.tier,
        kind=p.hit.kind,
        said=[Utterance.model_validate(u) for u in json.loads(p.hit.said)],
        created_at=p.hit.created_at,
        source_ref=p.hit.source_ref,
    )


def fuse_scores(parts: list[_Parts], s: MemorySettings) -> list[RetrievedMemory]:
    """Weighted score fusion (the default):

    score = (lexical * (1 + weight_entity * entity) + weight_recency * recency
             + weight_importance * importance) / (1 + weight_entity + weight_recency
             + weight_importance)

    Lexical relevance leads and the names the message shares with the memory multiply
    it; recency and importance only break near-ties. With dense vectors, `weight_dense *
    cosine` joins the sum (and the divisor). 0..1.
    """
    dense = any(p.dense is not None for p in parts)
    best = 1.0 + s.weight_entity + s.weight_recency + s.weight_importance
    best += s.weight_dense if dense else 0.0
    out = []
    for p in parts:
        raw = (
            (p.lexical or 0.0) * (1.0 + s.weight_entity * p.entity)
            + s.weight_dense * (p.dense or 0.0)
            + s.weight_recency * p.recency
            + s.weight_importance * p.hit.importance
        )
        out.append(_retrieved(p, raw / best))
    return out


def fuse_rrf(parts: list[_Parts], s: MemorySettings) -> list[RetrievedMemory]:
    """Weighted reciprocal rank fusion (`fusion = "rrf"`):

    score = sum(weight / (rrf_k + rank)) over the lists a memory is in (lexical: only the
    candidates that matched; recency, newest first; importance; entity: only memories
    naming someone the message names), divided by the score of a memory first in every
    list, so 0..1.
    """

    def order(value: Callable[[_Parts], float], only: Callable[[_Parts], bool]) -> list[_Parts]:
        return sorted((p for p in parts if only(p)), key=lambda p: (-value(p), p.hit.memory_id))

    k = s.rrf_k
    dense = [p for p in parts if p.dense is not None and p.dense > 0]
    lists = [
        _reciprocal(
            sorted(dense, key=lambda p: (-(p.dense or 0.0), p.hit.memory_id)), s.weight_dense, k
        ),
        _reciprocal(
            order(lambda p: p.lexical or 0.0, lambda p: p.lexical is not None), s.weight_lexical, k
        ),
        _reciprocal(order(lambda p: p.recency, lambda p: True), s.weight_recency, k),
        _reciprocal(order(lambda p: p.hit.importance, lambda p: True), s.weight_importance, k),
        _reciprocal(order(lambda p: p.entity, lambda p: p.entity > 0), s.weight_entity, k),
    ]
    weights = (s.weight_lexical, s.weight_recency, s.weight_importance, s.weight_entity)
    best = (sum(weights) + (s.weight_dense if dense else 0.0)) / (k + 1)
    return [
        _retrieved(p, sum(x.get(p.hit.memory_id, 0.0) for x in lists) / best if best > 0 else 0.0)
        for p in parts
    ]


def fuse(
    candidates: list[MemoryHit],
    now: datetime,
    names: frozenset[str],
    s: MemorySettings,
    cosines: dict[str, float] | None = None,
) -> list[RetrievedMemory]:
    """Rank candidates with the configured fusion; best first, ties by memory id.
    `cosines`: the dense search's (None: no dense vectors in use)."""
    parts = _parts(candidates, now, names, s, cosines)
    ranked = fuse_rrf(parts, s) if s.fusion == "rrf" else fuse_scores(parts, s)
    ranked.sort(key=lambda r: (-r.score, r.memory_id))
    return ranked


@dataclass(frozen=True)
class Gathered:
    """What the store gave for one retrieval."""

    candidates: list[MemoryHit]
    core: MemoryHit | None
    pinned: list[MemoryHit]
    dropped: list[str]


def gather(
    conn: sqlite3.Connection,
    persona_id: str,
    user_id: str,
    terms: list[str],
    s: MemorySettings,
    dense_ids: Sequence[str] = (),
) -> Gathered:
    """Candidates (lexical matches, then the newest memories), the core and pinned ones."""
    dropped = queries.common_terms(conn, terms, s.max_term_matches)
    kept = [t for t in terms if t not in dropped]
    found: dict[str, MemoryHit] = {}
    for hit in queries.search_memories(
        conn, persona_id, user_id, kept, s.fts_candidates, s.weight_context
    ):
        found[hit.memory_id] = hit
    for hit in queries.recent_memories(conn, persona_id, user_id, s.recent_candidates):
        found.setdefault(hit.memory_id, hit)
    missing = [i for i in dense_ids if i not in found]
    for hit in queries.memory_hits(conn, missing):
        found.setdefault(hit.memory_id, hit)
    return Gathered(
        list(found.values()),
        queries.core_memory(conn, persona_id),
        queries.pinned_memories(conn, persona_id, user_id, PINNED_LIMIT),
        dropped,
    )


def _cosines(
    conn: sqlite3.Connection,
    persona_id: str,
    model: str,
    query: Sequence[float] | None,
    got: Gathered,
    found: dict[str, float],
) -> dict[str, float]:
    """Cosines for every candidate: the dense search's, and the stored vectors of the
    lexical candidates it did not rank (0 for a memory with no vector yet)."""
    if query is None:
        return found
    rest = [c.memory_id for c in got.candidates if c.memory_id not in found]
    return {**found, **dense.cosines(conn, persona_id, model, query, rest)}


def retrieve(
    conn: sqlite3.Connection,
    persona_id: str,
    user_id: str,
    message: str,
    now: datetime,
    s: MemorySettings,
    extra_terms: Sequence[str] = (),
    query_vector: Sequence[float] | None = None,
) -> MemoryRetrieval:
    """The memory stage's decision for a message (the eval runs exactly this too).

    `query_vector`: the message's embedding when `embedding_model` is set (dense search
    adds its best `dense_candidates` and a cosine to every candidate)."""
    terms = search_terms(message)
    if extra_terms:
        terms = sorted(set(terms) | set(extra_terms))
    cosines: dict[str, float] | None = None
    if query_vector is not None and s.embedding_model:
        found = dense.search(
            conn, persona_id, user_id, s.embedding_model, query_vector, s.dense_candidates
        )
        cosines = dict(found)
    got = gather(conn, persona_id, user_id, terms, s, list(cosines or ()))
    if cosines is not None:
        cosines = _cosines(conn, persona_id, s.embedding_model or "", query_vector, got, cosines)
    core = got.core
    return MemoryRetrieval(
        query=" ".join(terms) or None,
        candidates=len(got.candidates),
        core=CoreMemory(memory_id=core.memory_id, content=core.content) if core else None,
        results=fuse(got.candidates, now, query_names(message), s, cosines)[: s.top_k],
        dropped_terms=got.dropped,
        dense_model=s.embedding_model if query_vector is not None else None,
        query_vector=dense.encode(query_vector) if query_vector is not None else None,
        pinned=[
            CoreMemory(
                memory_id=m.memory_id,
                content=m.content,
                said=[Utterance.model_validate(u) for u in json.loads(m.said)],
            )
            for m in got.pinned
        ],
    )


async def query_vector(env: StageEnv, message: str, s: MemorySettings) -> list[float] | None:
    """The message's embedding, or None: no embedding model configured, a backend without
    embeddings, or a failed call (retrieval then runs lexical only; the turn goes on)."""
    if not s.embedding_model or not env.backend.supports_embeddings:
        return None
    try:
        return (await env.backend.embed([message], s.embedding_model))[0]
    except LLMError as exc:
        log.warning("embedding the message failed, lexical retrieval only: %s", exc)
        return None


class MemoryStage:
    """Retrieve the persona's most relevant memories for this message."""

    name = "memory"

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput:
        s = env.settings.memory
        extra: list[str] = []
        revising = ctx.get(BeliefRevised)
        if revising is not None:  # a belief-revision round: widened (revision.py)
            extra = list(revising.terms_added)
            s = s.model_copy(
                update={
                    "fts_candidates": revising.fts_candidates,
                    "recent_candidates": revising.recent_candidates,
                    "top_k": revising.top_k,
                }
            )
        r = ctx.request
        vector = await query_vector(env, r.message, s)
        found = await env.store.read(
            retrieve, r.persona_id, r.user_id, r.message, ctx.now, s, extra, vector
        )
        return StageOutput(found)
