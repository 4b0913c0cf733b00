"""Memory: retrieve what is relevant (FTS5 BM25 blended with recency and importance).

The L3 core memory (the persona's genesis) is always present. Writing the turn's
episodic memory happens after the reply has streamed (see `episodic_memory`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from persona.clock import parse_iso
from persona.pipeline.context import Decision, StageEnv, TurnContext
from persona.pipeline.text import content_words
from persona.storage import queries

FTS_CANDIDATES = 50
RECENT_CANDIDATES = 20


def fts_query(text: str) -> str | None:
    """An FTS5 OR-query of the message's content words, each quoted (no syntax injection)."""
    terms = sorted(content_words(text))[:24]
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', "") + '"' for t in terms)


def recency(created_at: str, now: datetime, half_life_h: float) -> float:
    """1.0 for a memory written now, 0.5 after one half-life."""
    age_h = max((now - parse_iso(created_at)).total_seconds() / 3600.0, 0.0)
    return math.exp(-math.log(2) * age_h / half_life_h)


def rank(candidates: list[dict[str, Any]], now: datetime, env: StageEnv) -> list[dict[str, Any]]:
    """Score candidates: lexical (BM25 normalised to the best hit), recency, importance."""
    s = env.settings
    best = max((-c["bm25"] for c in candidates if c["bm25"] is not None), default=0.0)
    ranked = []
    for c in candidates:
        lexical = (-c["bm25"] / best) if (c["bm25"] is not None and best > 0) else 0.0
        rec = recency(c["created_at"], now, s.memory_recency_half_life_h)
        score = (
            s.memory_weight_lexical * lexical
            + s.memory_weight_recency * rec
            + s.memory_weight_importance * c["importance"]
        )
        ranked.append(
            {
                "memory_id": c["memory_id"],
                "content": c["content"],
                "chat_id": c["chat_id"],
                "score": round(score, 4),
                "lexical": round(lexical, 4),
                "recency": round(rec, 4),
                "importance": round(c["importance"], 4),
            }
        )
    ranked.sort(key=lambda r: (-r["score"], r["memory_id"]))
    return ranked


def _gather(conn: Any, persona_id: str, match: str | None) -> list[dict[str, Any]]:
    found = {}
    if match:
        for row in queries.search_memories(conn, persona_id, match, FTS_CANDIDATES):
            found[row["memory_id"]] = row
    for row in queries.recent_memories(conn, persona_id, RECENT_CANDIDATES):
        found.setdefault(row["memory_id"], row)
    return list(found.values())


class MemoryStage:
    """Retrieve the persona's most relevant memories for this message."""

    name = "memory"
    event_type = "memory.retrieved"

    async def run(self, ctx: TurnContext, env: StageEnv) -> Decision:
        persona_id = ctx.request.persona_id
        match = fts_query(ctx.request.message)
        candidates = await env.store.read(_gather, persona_id, match)
        core = await env.store.read(queries.core_memory, persona_id)
        ranked = rank(candidates, ctx.now, env)[: env.settings.memory_top_k]
        return Decision(
            {
                "query": match,
                "candidates": len(candidates),
                "core": {"memory_id": core["memory_id"], "content": core["content"]}
                if core
                else None,
                "results": ranked,
            }
        )


def episodic_id(turn_id: str) -> str:
    """The id of the episodic memory a turn writes (links memory and turn)."""
    return f"ep:{turn_id}"


def episodic_memory(ctx: TurnContext) -> dict[str, Any]:
    """The memory.written payload for this turn's exchange."""
    perception = ctx.decisions.get("perception", {})
    name = ctx.persona["name"]
    return {
        "memory_id": episodic_id(ctx.turn_id),
        "persona_id": ctx.request.persona_id,
        "kind": "episodic",
        "chat_id": ctx.request.chat_id,
        "turn_id": ctx.turn_id,
        "content": f"User said: {ctx.request.message}\n{name} replied: {ctx.reply}",
        "importance": perception.get("importance", 0.3),
    }
