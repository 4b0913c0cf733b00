"""Sleep: consolidate a persona's L1 memories into L2 digests and L3 beliefs, on the record.

The planning rules live in `persona.pipeline.consolidate` (pure); this module reads the
store, asks the narrative model to word each digest when told to, and writes the result
in one transaction: a `memory.written` per digest and per new belief, then one
`memory.consolidated` diff. Originals are kept (marked consolidated). A sleep with nothing
new to consolidate writes no event, so running it twice changes nothing.

Triggers (`due`): context pressure (unconsolidated L1 volume over a budget) and inactivity
(the persona idle for a while, in wall time); "asked" (the web endpoint) and "command"
(`persona sleep`) run it on demand.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Literal

from persona.clock import parse_iso
from persona.config import SleepSettings
from persona.errors import PersonaNotFound
from persona.events.memory import MemoryConsolidated, MemoryWritten, Utterance
from persona.llm.base import Backend, ChatMessage, GenOptions, LLMError
from persona.pipeline.consolidate import MERGE_THRESHOLD, Digest, Note, Plan, plan
from persona.pipeline.notes import memory_note, said_note
from persona.pipeline.text import content_words, jaccard
from persona.storage import sleep_queries as q
from persona.storage.eventlog import NewEvent
from persona.storage.store import Store, WriteTx

Trigger = Literal["inactivity", "asked", "pressure", "command"]
Method = Literal["extractive", "narrative"]
# progress(done, total, stage): the CLI's bar; total grows once the digests are known.
Progress = Callable[[int, int, str], None]

ACTOR = "sleep"
MAX_ENTITIES = 12  # a digest names at most this many entities (its members' first ones)
NARRATIVE_PROMPT = (
    "You keep the memory of {name}. Rewrite the notes below as one short paragraph of"
    " a few plain sentences, in the third person, past tense. Keep every name, place,"
    " date and number; add nothing that the notes do not say. Answer with the paragraph"
    " only."
)
BELIEF_PROMPT = (
    "You keep the memory of {name}. Restate the note below as one short sentence that"
    " {name} now holds true, in the third person. Keep every name, place, date and number;"
    " add nothing that the note does not say. Answer with the sentence only."
)
BELIEF_CHARS = 200  # a belief is one line of the identity prompt, always in context


@dataclass(frozen=True)
class SleepReport:
    """What one sleep did (all zero when there was nothing new to consolidate)."""

    persona_id: str
    trigger: str
    method: str
    notes: int
    digests: int
    beliefs: int
    consolidated: int
    merged: int
    superseded: int
    narrated: int
    fallbacks: int
    event_id: str | None

    def as_json(self) -> dict[str, object]:
        """A JSON-ready view (the endpoint's body)."""
        return asdict(self)


@dataclass(frozen=True)
class _Partition:
    """The notes one witness set saw (shared memories form their own partitions)."""

    witnesses: tuple[str, ...]
    shared: bool
    notes: tuple[Note, ...]
    already: frozenset[str]
    chats: dict[str, str | None]  # memory id -> chat id


def _note_text(row: q.SleepRow) -> str:
    """A short note from who-said-what (else the stored words), as the prompt shows it."""
    said = [Utterance.model_validate(u) for u in json.loads(row.said or "[]")]
    text = said_note(said) if said else ""
    return text or memory_note(row.content) or " ".join(row.content.split())


def _score(row: q.SleepRow) -> int:
    if row.importance_score is not None:
        return row.importance_score
    return min(10, max(1, round(row.importance * 10)))


def _partitions(rows: Sequence[q.SleepRow]) -> list[_Partition]:
    """Split the rows by (witnesses, shared): a digest and its beliefs inherit one set."""
    keyed: dict[tuple[tuple[str, ...], bool], list[q.SleepRow]] = {}
    for row in rows:
        keyed.setdefault((row.witnesses, row.shared), []).append(row)
    out = []
    for (witnesses, shared), part in sorted(keyed.items()):
        notes = tuple(
            Note(
                memory_id=r.memory_id,
                text=_note_text(r),
                importance=_score(r),
                created_at=r.created_at,
                entities=r.entities,
                chat_id=r.chat_id,
                witnesses=witnesses,
            )
            for r in part
        )
        already = frozenset(r.memory_id for r in part if r.consolidated)
        chats = {r.memory_id: r.chat_id for r in part}
        out.append(_Partition(witnesses, shared, notes, already, chats))
    return out


def _plans(rows: Sequence[q.SleepRow], settings: SleepSettings) -> list[tuple[_Partition, Plan]]:
    return [
        (
            part,
            plan(
                part.notes,
                part.already,
                min_group=settings.min_group,
                max_chars=settings.max_chars,
            ),
        )
        for part in _partitions(rows)
    ]


def belief_id(witnesses: Sequence[str], shared: bool, text: str) -> str:
    """A belief's id: the same words held by the same people get the same id."""
    key = json.dumps([sorted(witnesses), shared, text], ensure_ascii=False)
    return "bl_" + hashlib.sha256(key.encode()).hexdigest()[:16]


async def _narrate(
    backend: Backend, name: str, text: str, max_chars: int, prompt: str = NARRATIVE_PROMPT
) -> str | None:
    """The model's wording of a digest (or, with BELIEF_PROMPT, of a belief), or None: a
    failure, nothing, or too long."""
    messages = [
        ChatMessage(role="system", content=prompt.format(name=name)),
        ChatMessage(role="user", content=text),
    ]
    # Roughly four characters a token, with room to finish the last sentence.
    options = GenOptions(temperature=0.2, max_tokens=max(32, max_chars // 3))
    try:
        answer = " ".join((await backend.complete(messages, options)).split())
    except LLMError:
        return None
    return answer if answer and len(answer) <= max_chars else None


async def sleep(
    store: Store,
    persona_id: str,
    trigger: Trigger,
    settings: SleepSettings,
    backend: Backend | None = None,
    progress: Progress | None = None,
    method: Method | None = None,
) -> SleepReport:
    """Consolidate the persona's L1 memories; return what was written.

    The model is asked (method "narrative", a backend given) outside any transaction;
    the write re-reads and re-plans inside its own, so a turn or another sleep that wrote
    meanwhile is taken into account and nothing is written twice.
    """
    # No model to ask: the extractive text is the digest, and the diff says so.
    method = (method or settings.method) if backend is not None else "extractive"
    tell = progress or (lambda done, total, stage: None)
    name = await store.read(q.persona_name, persona_id)
    if name is None:
        raise PersonaNotFound(f"unknown persona_id {persona_id!r}")
    rows = await store.read(q.l1_memories, persona_id)
    planned = _plans(rows, settings)
    digests = [d for _, p in planned for d in p.digests]
    lines = sorted({line for _, p in planned for line in p.beliefs})
    # Keyed by digest id, or by a belief's extractive line (its id stays that line's, so
    # a reworded belief is still the same belief to a later sleep).
    wording: dict[str, str] = {}
    fallbacks = 0
    total = len(digests) + len(lines) + 1 if method == "narrative" else 1
    tell(0, total, "planning")
    if method == "narrative" and backend is not None:
        asks = [(d.digest_id, d.text, settings.max_chars, NARRATIVE_PROMPT) for d in digests]
        asks += [(line, line, BELIEF_CHARS, BELIEF_PROMPT) for line in lines]
        for done, (key, text, limit, prompt) in enumerate(asks, 1):
            worded = await _narrate(backend, name, text, limit, prompt)
            if worded is None:
                fallbacks += 1
            else:
                wording[key] = worded
            tell(done, total, "wording")
    tell(total - 1, total, "writing")
    report = await store.transact(
        lambda tx: _write(tx, persona_id, trigger, method, settings, wording)
    )
    tell(total, total, "done")
    return SleepReport(
        persona_id=persona_id,
        trigger=trigger,
        method=method,
        notes=len(rows),
        digests=report.digests,
        beliefs=report.beliefs,
        consolidated=report.consolidated,
        merged=report.merged,
        superseded=report.superseded,
        narrated=report.narrated,
        # Only what reached the log counts: a digest another writer took meanwhile does not.
        fallbacks=fallbacks if report.event_id else 0,
        event_id=report.event_id,
    )


@dataclass(frozen=True)
class _Written:
    """What the write transaction appended."""

    digests: int = 0
    beliefs: int = 0
    consolidated: int = 0
    merged: int = 0
    superseded: int = 0
    narrated: int = 0
    event_id: str | None = None


def _write(
    tx: WriteTx,
    persona_id: str,
    trigger: Trigger,
    method: Method,
    settings: SleepSettings,
    wording: dict[str, str],
) -> _Written:
    """Plan again on what the transaction reads and append the digests, beliefs and diff."""
    planned = _plans(tx.read(q.l1_memories, persona_id), settings)
    stream = f"persona:{persona_id}"
    trace_id = uuid.uuid4().hex
    events: list[NewEvent] = []
    digests: dict[str, list[str]] = {}
    merged: list[tuple[str, str]] = []
    consolidated: set[str] = set()
    beliefs: list[tuple[str, _Partition, str, Note]] = []
    all_digests = [d for _, p in planned for d in p.digests]
    # A digest of the same notes that exists already (its sources were unmarked since) is
    # pointed at again, never written twice.
    written = tx.read(q.existing_ids, [d.digest_id for d in all_digests])
    narrated = 0
    for part, p in planned:
        for digest in p.digests:
            digests[digest.digest_id] = list(digest.source_ids)
            if digest.digest_id in written:
                continue
            narrated += digest.digest_id in wording
            text = wording.get(digest.digest_id, digest.text)
            events.append(_digest_event(persona_id, part, digest, text, trace_id))
        merged.extend(p.merged)
        consolidated.update(p.consolidated)
        by_text = {" ".join(n.text.split()): n for n in part.notes}
        for line in p.beliefs:
            beliefs.append(
                (belief_id(part.witnesses, part.shared, line), part, line, by_text[line])
            )
    if not digests and not merged:
        return _Written()
    known = tx.read(q.existing_ids, [b[0] for b in beliefs])
    fresh = [b for b in beliefs if b[0] not in known]
    superseded = _superseded(tx.read(q.live_beliefs, persona_id), fresh)
    for memory_id, part, line, note in fresh:
        narrated += line in wording
        text = wording.get(line, line)
        events.append(_belief_event(persona_id, memory_id, part, text, note, trace_id))
    diff = MemoryConsolidated(
        persona_id=persona_id,
        trigger=trigger,
        method=method,
        digests=digests,
        beliefs=[b[0] for b in fresh],
        merged=merged,
        superseded=superseded,
    )
    events.append(NewEvent(payload=diff, stream_id=stream, actor=ACTOR, trace_id=trace_id))
    stored = tx.append(events, {stream: tx.stream_version(stream)})
    return _Written(
        digests=len(digests),
        beliefs=len(fresh),
        consolidated=len(consolidated),
        merged=len(merged),
        superseded=len(superseded),
        narrated=narrated,
        event_id=stored[-1].event_id,
    )


def _superseded(
    live: Sequence[q.BeliefRow], fresh: Sequence[tuple[str, _Partition, str, Note]]
) -> list[str]:
    """Earlier beliefs a new one restates (same witnesses, near-identical words): the
    newer wording replaces the old, which is kept and marked invalid."""
    out: list[str] = []
    for old in live:
        old_terms = set(content_words(old.content))
        for _, part, line, _ in fresh:
            if old.witnesses != part.witnesses or old.content == line:
                continue
            if jaccard(old_terms, set(content_words(line))) >= MERGE_THRESHOLD:
                out.append(old.memory_id)
                break
    return out


def _entities(notes: Sequence[Note], ids: Sequence[str]) -> list[str]:
    wanted = set(ids)
    seen: list[str] = []
    for note in notes:
        if note.memory_id in wanted:
            seen.extend(e for e in note.entities if e not in seen)
    return seen[:MAX_ENTITIES]


def _digest_event(
    persona_id: str, part: _Partition, digest: Digest, text: str, trace_id: str
) -> NewEvent:
    chats = {part.chats.get(m) for m in digest.source_ids}
    payload = MemoryWritten(
        memory_id=digest.digest_id,
        persona_id=persona_id,
        tier="L2",
        kind="digest",
        content=text,
        importance=digest.importance / 10,
        importance_score=digest.importance,
        chat_id=chats.pop() if len(chats) == 1 else None,
        entities=_entities(part.notes, digest.source_ids),
        witnesses=list(digest.witnesses),
        shared=part.shared,
        valid_from=digest.period[0],
    )
    # Dated by the newest note it covers: a digest is as recent as what it summarises,
    # not as the night it was written.
    return NewEvent(
        payload=payload,
        stream_id=f"persona:{persona_id}",
        actor=ACTOR,
        trace_id=trace_id,
        chat_time=digest.period[1],
    )


def _belief_event(
    persona_id: str, memory_id: str, part: _Partition, line: str, note: Note, trace_id: str
) -> NewEvent:
    payload = MemoryWritten(
        memory_id=memory_id,
        persona_id=persona_id,
        tier="L3",
        kind="belief",
        content=line,
        importance=note.importance / 10,
        importance_score=note.importance,
        entities=list(note.entities),
        witnesses=list(part.witnesses),
        shared=part.shared,
        valid_from=note.created_at,
    )
    return NewEvent(
        payload=payload, stream_id=f"persona:{persona_id}", actor=ACTOR, trace_id=trace_id
    )


def due(
    conn: sqlite3.Connection, persona_id: str, now: datetime, settings: SleepSettings
) -> Trigger | None:
    """The trigger a sleep is due for now, or None.

    "pressure" when more unconsolidated L1 memories wait than `pressure_l1`; "inactivity"
    when at least `min_group` wait and the persona's newest memory or chat activity is
    `idle_after_h` hours old or more (wall time). Callers run it once per idle spell:
    notes that never group stay unconsolidated, and would make it due again.
    """
    figures = q.pressure(conn, persona_id)
    if figures.unconsolidated > settings.pressure_l1:
        return "pressure"
    if figures.unconsolidated < settings.min_group or figures.last_activity is None:
        return None
    if now - parse_iso(figures.last_activity) >= timedelta(hours=settings.idle_after_h):
        return "inactivity"
    return None
