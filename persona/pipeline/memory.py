"""Memory: retrieve what is relevant (lexical match blended with recency and importance).

The L3 core memory (the persona's genesis) is always present. Writing the turn's
episodic memory happens after the reply has streamed (see `post.EpisodicWrite`).
"""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime

from persona.clock import parse_iso
from persona.config import MemorySettings
from persona.events import BeliefRevised, CoreMemory, MemoryRetrieval, RetrievedMemory
from persona.pipeline.context import StageEnv, StageOutput, TurnContext
from persona.pipeline.text import content_words
from persona.storage import queries
from persona.storage.queries import MemoryHit

MAX_TERMS = 24


def search_terms(text: str) -> list[str]:
    """The message's content words, sorted, at most MAX_TERMS."""
    return sorted(content_words(text))[:MAX_TERMS]


def recency(created_at: str, now: datetime, half_life_h: float) -> float:
    """1.0 for a memory written now, 0.5 after one half-life."""
    age_h = max((now - parse_iso(created_at)).total_seconds() / 3600.0, 0.0)
    return math.exp(-math.log(2) * age_h / half_life_h)


def rank(candidates: list[MemoryHit], now: datetime, s: MemorySettings) -> list[RetrievedMemory]:
    """Score candidates: lexical (0..1 vs the best hit), recency, importance; best first."""
    ranked = []
    for c in candidates:
        lexical = c.lexical or 0.0
        rec = recency(c.created_at, now, s.recency_half_life_h)
        score = (
            s.weight_lexical * lexical + s.weight_recency * rec + s.weight_importance * c.importance
        )
        ranked.append(
            RetrievedMemory(
                memory_id=c.memory_id,
                content=c.content,
                chat_id=c.chat_id,
                score=round(score, 4),
                lexical=round(lexical, 4),
                recency=round(rec, 4),
                importance=round(c.importance, 4),
            )
        )
    ranked.sort(key=lambda r: (-r.score, r.memory_id))
    return ranked


def gather(
    conn: sqlite3.Connection, persona_id: str, terms: list[str], s: MemorySettings
) -> tuple[list[MemoryHit], MemoryHit | None]:
    """Candidates (lexical matches, then the newest memories) and the core memory."""
    found: dict[str, MemoryHit] = {}
    for hit in queries.search_memories(conn, persona_id, terms, s.fts_candidates):
        found[hit.memory_id] = hit
    for hit in queries.recent_memories(conn, persona_id, s.recent_candidates):
        found.setdefault(hit.memory_id, hit)
    return list(found.values()), queries.core_memory(conn, persona_id)


class MemoryStage:
    """Retrieve the persona's most relevant memories for this message."""

    name = "memory"

    async def run(self, ctx: TurnContext, env: StageEnv) -> StageOutput:
        s = env.settings.memory
        terms = search_terms(ctx.request.message)
        revising = ctx.get(BeliefRevised)
        if revising is not None:  # a belief-revision round: widened (revision.py)
            terms = sorted(set(terms) | set(revising.terms_added))
            s = s.model_copy(
                update={
                    "fts_candidates": revising.fts_candidates,
                    "recent_candidates": revising.recent_candidates,
                    "top_k": revising.top_k,
                }
            )
        candidates, core = await env.store.read(gather, ctx.request.persona_id, terms, s)
        return StageOutput(
            MemoryRetrieval(
                query=" ".join(terms) or None,
                candidates=len(candidates),
                core=CoreMemory(memory_id=core.memory_id, content=core.content) if core else None,
                results=rank(candidates, ctx.now, s)[: s.top_k],
            )
        )
