"""Gating: which candidates get into the prompt, within a token budget.

First honest form: every candidate (persona core, retrieved memories, recent
exchanges) gets a priority; the highest-priority ones are packed greedily into the
budget measured with the backend's real tokenizer. Later issues replace the priority
with a simulated competition; the decision record already lists every candidate.
"""

from __future__ import annotations

from typing import Any

from persona.pipeline.context import Decision, StageEnv, TurnContext
from persona.pipeline.memory import episodic_id

# Tokens kept free for the chat template's role markers and the system preamble.
TEMPLATE_RESERVE = 64


def budget(ctx: TurnContext, env: StageEnv) -> dict[str, int]:
    """Split the context window: reply, user message, template, and what is left to fill."""
    total = env.settings.context_tokens
    reply = ctx.request.gen.max_tokens
    message = env.count_tokens(ctx.request.message)
    available = max(total - reply - message - TEMPLATE_RESERVE, 0)
    return {"context": total, "reply": reply, "message": message, "available": available}


def candidates(ctx: TurnContext) -> list[dict[str, Any]]:
    """Everything that competes for the workspace, with its priority."""
    items: list[dict[str, Any]] = []
    memory = ctx.decisions["memory"]
    in_history = {episodic_id(h["turn_id"]) for h in ctx.history}
    n = len(ctx.history)
    for age, h in enumerate(reversed(ctx.history)):
        items.append(
            {
                "kind": "history",
                "id": h["turn_id"],
                "priority": round(0.95 - 0.04 * age, 4),
                "text": f"{h['user_message']}\n{h['reply']}",
                "order": n - age,
            }
        )
    for m in memory["results"]:
        item = {
            "kind": "memory",
            "id": m["memory_id"],
            "priority": m["score"],
            "text": m["content"],
        }
        if m["memory_id"] in in_history:
            item["redundant"] = True
        items.append(item)
    return items


class GatingStage:
    """Pack the highest-priority candidates into the token budget."""

    name = "gating"
    event_type = "workspace.selected"

    async def run(self, ctx: TurnContext, env: StageEnv) -> Decision:
        b = budget(ctx, env)
        persona_text = ctx.persona["description"] + "\n" + ctx.persona["genesis"]
        used = env.count_tokens(persona_text)  # the core identity always goes in
        decided = []
        for item in sorted(candidates(ctx), key=lambda i: (-i["priority"], i["kind"], i["id"])):
            tokens = env.count_tokens(item["text"])
            if item.get("redundant"):
                selected, reason = False, "already in recent history"
            elif used + tokens <= b["available"]:
                selected, reason = True, "fits"
                used += tokens
            else:
                selected, reason = False, "over budget"
            decided.append(
                {
                    "kind": item["kind"],
                    "id": item["id"],
                    "priority": item["priority"],
                    "tokens": tokens,
                    "selected": selected,
                    "reason": reason,
                }
            )
        return Decision(
            {
                "budget": {**b, "core": env.count_tokens(persona_text), "used": used},
                "candidates": decided,
                "selected_memories": [
                    d["id"] for d in decided if d["kind"] == "memory" and d["selected"]
                ],
                "selected_history": [
                    d["id"] for d in decided if d["kind"] == "history" and d["selected"]
                ],
            }
        )
