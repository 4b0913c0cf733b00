"""`persona eval locomo`: recall@k of the real memory write path and retrieval.

Each conversation of a LoCoMo-format file becomes a persona in a scratch database. The
persona observes both speakers: every dialogue turn is written through the store as a
`memory.written` event (tier L1, kind utterance, who said it as data, its dialogue id as
`source_ref`), with the session's date and time as the chat clock. Each question of
categories 1-4 then runs the memory stage's own retrieval (`memory.retrieve`) at the time
of the conversation's last session; recall@k = |evidence ∩ the top-k memories' dialogue
ids| / |evidence|, averaged over the questions. Nothing from the file is kept.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from persona.clock import iso
from persona.config import MemorySettings, PerceptionSettings
from persona.events import MemoryWritten, PersonaCreated, Utterance
from persona.pipeline.extract import entities
from persona.pipeline.memory import retrieve
from persona.pipeline.perception import appraise, importance, importance_score, perceive
from persona.projector import Projector
from persona.storage.eventlog import NewEvent
from persona.storage.store import Store

CATEGORIES = (1, 2, 3, 4)  # 5: adversarial, no usable evidence
OBSERVER = "observer"  # the user id that witnessed every observed conversation
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y")


class LocomoError(ValueError):
    """The file is not in the LoCoMo format."""


def session_time(text: str) -> datetime:
    """A session's "1:56 pm on 8 May, 2023" as a UTC datetime."""
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise LocomoError(f"unreadable session date {text!r}")


@dataclass(frozen=True)
class Turn:
    dia_id: str
    speaker: str
    text: str
    at: datetime
    session: int


@dataclass(frozen=True)
class Question:
    question: str
    evidence: tuple[str, ...]
    category: int


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    turns: tuple[Turn, ...]
    questions: tuple[Question, ...]

    @property
    def last(self) -> datetime:
        return max(t.at for t in self.turns)


def _sessions(conv: dict[str, Any]) -> Iterator[tuple[int, list[dict[str, Any]], datetime]]:
    numbers = sorted(
        int(k.removeprefix("session_"))
        for k in conv
        if k.startswith("session_") and k.removeprefix("session_").isdigit()
    )
    for n in numbers:
        date = conv.get(f"session_{n}_date_time")
        if not isinstance(date, str):
            raise LocomoError(f"session_{n} has no session_{n}_date_time")
        yield n, conv[f"session_{n}"], session_time(date)


def turn_text(turn: dict[str, Any]) -> str:
    """A dialogue turn's words, with the photo it shared described in words."""
    text = str(turn.get("text", "")).strip()
    caption = turn.get("blip_caption")
    if caption:
        text = f"{text} [shares a photo of {str(caption).strip()}]".strip()
    return text


def load(path: Path) -> list[Conversation]:
    """Read and check a LoCoMo-format file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LocomoError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, list):
        raise LocomoError("expected a JSON list of conversations")
    out = []
    for item in data:
        try:
            conv = item["conversation"]
            turns = []
            for number, session, start in _sessions(conv):
                # Turns of a session keep their order on the chat clock: a second apart.
                for i, t in enumerate(session):
                    turns.append(
                        Turn(
                            str(t["dia_id"]),
                            str(t["speaker"]),
                            turn_text(t),
                            start + timedelta(seconds=i),
                            number,
                        )
                    )
            questions = tuple(
                Question(
                    str(q["question"]), tuple(str(e) for e in q["evidence"]), int(q["category"])
                )
                for q in item.get("qa", [])
                if int(q.get("category", 0)) in CATEGORIES and q.get("evidence")
            )
            out.append(Conversation(str(item["sample_id"]), tuple(turns), questions))
        except (KeyError, TypeError) as exc:
            raise LocomoError(f"conversation missing a field: {exc}") from exc
    return out


def _importance(text: str, s: PerceptionSettings) -> tuple[float, int]:
    """Perception's lexicon reading of a line: its memory weight and 1..10 score."""
    intent, _, safety, _ = perceive(text, s, {})
    risk = safety.total_risk
    return importance(text, intent, risk), importance_score(text, intent, risk, appraise(text))


def memory_events(persona_id: str, conv: Conversation) -> list[NewEvent]:
    """What observing the conversation writes: one L1 memory per dialogue turn."""
    perception = PerceptionSettings()
    stream = f"persona:{persona_id}"
    events = [
        NewEvent(
            payload=PersonaCreated(
                persona_id=persona_id, name="Observer", description="", genesis="", traits={}
            ),
            stream_id=stream,
            actor="system",
            chat_time=iso(conv.turns[0].at) if conv.turns else None,
        )
    ]
    for t in conv.turns:
        weight, score = _importance(t.text, perception)
        events.append(
            NewEvent(
                payload=MemoryWritten(
                    memory_id=f"{persona_id}:{t.dia_id}",
                    persona_id=persona_id,
                    tier="L1",
                    kind="utterance",
                    content=f"{t.speaker}: {t.text}",
                    chat_id=f"{persona_id}:session-{t.session}",
                    said=[Utterance(role="other", name=t.speaker, text=t.text)],
                    importance=weight,
                    importance_score=score,
                    entities=entities(t.text),
                    witnesses=[OBSERVER],
                    source_ref=t.dia_id,
                    valid_from=iso(t.at),
                ),
                stream_id=stream,
                actor="memory",
                chat_time=iso(t.at),
            )
        )
    return events


def recall(evidence: Sequence[str], retrieved: Sequence[str], k: int) -> float:
    """|evidence ∩ the first k retrieved| / |evidence|."""
    wanted = set(evidence)
    return len(wanted & set(retrieved[:k])) / len(wanted) if wanted else 0.0


@dataclass
class Report:
    ks: tuple[int, ...]
    recall_at_k: dict[str, float] = field(default_factory=dict)
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    questions: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    memories: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "recall_at_k": self.recall_at_k,
            "per_category": self.per_category,
            "questions": self.questions,
            "latency_ms": self.latency_ms,
            "memories": self.memories,
        }

    def render(self) -> str:
        head = "| category | questions | " + " | ".join(f"R@{k}" for k in self.ks) + " |"
        lines = [head, "|---" * (len(self.ks) + 2) + "|"]
        for cat, scores in self.per_category.items():
            cells = " | ".join(f"{scores[str(k)]:.3f}" for k in self.ks)
            lines.append(f"| {cat} | {self.questions[cat]} | {cells} |")
        cells = " | ".join(f"{self.recall_at_k[str(k)]:.3f}" for k in self.ks)
        lines.append(f"| all | {self.questions['all']} | {cells} |")
        lat = self.latency_ms
        lines.append(
            f"\n{self.memories} memories; retrieval p50 {lat['p50']:.2f} ms,"
            f" p95 {lat['p95']:.2f} ms"
        )
        return "\n".join(lines)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def evaluate(
    path: Path,
    ks: Sequence[int] = (1, 5, 10),
    settings: MemorySettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Ingest every conversation into a scratch database and score the retrieval."""
    conversations = load(path)
    s = (settings or MemorySettings()).model_copy(update={"top_k": max(ks)})
    report = Report(tuple(ks))
    sums: dict[str, dict[int, float]] = {}
    counts: dict[str, int] = {}
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="persona-locomo-") as tmp:
        store = Store(Path(tmp) / "locomo.db", Projector())
        store.open()
        try:
            for n, conv in enumerate(conversations):
                persona_id = f"locomo-{n}"
                store.sync_append(memory_events(persona_id, conv))
                report.memories += len(conv.turns)
                now = conv.last
                for q in conv.questions:
                    started = time.perf_counter()
                    found = store.sync_read(retrieve, persona_id, OBSERVER, q.question, now, s)
                    latencies.append((time.perf_counter() - started) * 1000)
                    refs = [m.source_ref or "" for m in found.results]
                    for cat in (str(q.category), "all"):
                        bucket = sums.setdefault(cat, dict.fromkeys(ks, 0.0))
                        for k in ks:
                            bucket[k] += recall(q.evidence, refs, k)
                        counts[cat] = counts.get(cat, 0) + 1
                if progress is not None:
                    progress(1)
        finally:
            store.close()
    for cat in sorted(sums, key=lambda c: (c == "all", c)):
        scores = {str(k): round(sums[cat][k] / counts[cat], 4) for k in ks}
        if cat == "all":
            report.recall_at_k = scores
        else:
            report.per_category[cat] = scores
        report.questions[cat] = counts[cat]
    report.latency_ms = {
        "p50": round(statistics.median(latencies), 3) if latencies else 0.0,
        "p95": round(_percentile(latencies, 0.95), 3),
    }
    return report
