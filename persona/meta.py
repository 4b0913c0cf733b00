"""The `meta` record of a turn: every decision, and its stable compact `meta_v1`."""

from __future__ import annotations

from typing import Any

from persona.pipeline.context import TurnContext
from persona.version import ENGINE_VERSION, META_VERSION, build_sha

# The keys of meta_v1: a stable contract for API clients; add keys, never rename.
META_V1_KEYS: tuple[str, ...] = (
    "trace_id",
    "intent",
    "dialogue_state",
    "telemetry",
    "safety",
    "decision_candidates",
    "memory",
    "timing_ms",
    "meta_version",
    "engine_version",
    "build_sha",
    "config_hash",
)


def build_meta(
    ctx: TurnContext, *, config_hash: str, backend: str, model: str, writes: dict[str, Any]
) -> dict[str, Any]:
    """Assemble meta from the turn's decisions (never None, always the same keys)."""
    perception = ctx.decisions["perception"]
    memory = ctx.decisions["memory"]
    gating = ctx.decisions["gating"]
    metacog = ctx.decisions["metacognition"]
    selected = set(gating["selected_memories"])
    meta: dict[str, Any] = {
        "trace_id": ctx.trace_id,
        "turn_id": ctx.turn_id,
        "session_id": ctx.request.chat_id,
        "persona_id": ctx.request.persona_id,
        "turn_index": ctx.turn_index,
        "intent": perception["intent"],
        "top_intent": perception["top_intent"],
        "ooc": perception["ooc"],
        "importance": perception["importance"],
        "dialogue_state": metacog["dialogue_state"],
        "telemetry": metacog["telemetry"],
        "safety": {
            "total_risk": perception["safety"]["total_risk"],
            "override": perception["safety"]["override"],
        },
        "decision_candidates": gating["candidates"],
        "memory": {
            "query": memory["query"],
            "core": memory["core"]["memory_id"] if memory["core"] else None,
            "retrieved": [
                {
                    "memory_id": m["memory_id"],
                    "score": m["score"],
                    "lexical": m["lexical"],
                    "recency": m["recency"],
                    "importance": m["importance"],
                    "used": m["memory_id"] in selected,
                    "content": m["content"][:280],
                }
                for m in memory["results"]
            ],
            "written": writes.get("memory_id"),
        },
        "token_budget": gating["budget"],
        "edges": writes.get("edges", []),
        "llm": {"backend": backend, "model": model, **ctx.llm_timing},
        "timing_ms": dict(ctx.timing_ms),
        "meta_version": META_VERSION,
        "engine_version": ENGINE_VERSION,
        "build_sha": build_sha(),
        "config_hash": config_hash,
    }
    meta["meta_v1"] = {key: meta[key] for key in META_V1_KEYS}
    return meta
