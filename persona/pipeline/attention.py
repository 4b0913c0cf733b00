"""The attention schema: predict what the next turn's workspace will hold, then check.

Each turn predicts the ids it expects the next turn's gating to select: the memories
selected now (the carry bonus favours them) and the exchanges of the history window that
stay in it once this turn joins (the newest `history_turns - 1` selected now, plus this
turn). The next turn compares the prediction with what its gating selected:
rate = hits / predicted; the running rate sums hits and predictions over the path
(`ChatState.attention_hits / attention_total`). A pure function of the parent's snapshot
and this turn's workspace, so replay gives the same bytes.
"""

from __future__ import annotations

from persona.events import ChatState, Workspace
from persona.events.decisions import AttentionDecision


def predict(turn_id: str, workspace: Workspace, history_turns: int) -> list[str]:
    """Ids this turn expects in the next workspace (memories, then exchanges), sorted."""
    keep = max(history_turns - 1, 0)
    # Gating lists the selected exchanges newest first (highest priority).
    history = list(workspace.selected_history)[:keep]
    expected = set(workspace.selected_memories) | set(history)
    if history_turns > 0:
        expected.add(turn_id)
    return sorted(expected)


def decide_attention(
    parent: ChatState, turn_id: str, workspace: Workspace, history_turns: int
) -> AttentionDecision:
    """Check the parent's prediction against this workspace and predict the next one."""
    predicted = list(parent.attention_predicted)
    selected = set(workspace.selected_memories) | set(workspace.selected_history)
    hits = sum(1 for i in predicted if i in selected)
    total_hits = parent.attention_hits + hits
    total = parent.attention_total + len(predicted)
    return AttentionDecision(
        predicted=predicted,
        hits=hits,
        rate=round(hits / len(predicted), 4) if predicted else None,
        running_rate=round(total_hits / total, 4) if total else None,
        next_predicted=predict(turn_id, workspace, history_turns),
    )
