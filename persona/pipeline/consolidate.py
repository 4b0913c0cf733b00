"""Plan a sleep consolidation: group L1 notes into L2 digests and pick L3 belief candidates.

This is the pure, extractive part: no I/O, no clock, no LLM. The caller turns a `Plan`
into events (digests written, originals marked consolidated, a diff of what was added,
merged and superseded); the narrative variant may rewrite a digest's text but keeps its
id, sources and witnesses.

The rules, in order:

1. Notes already consolidated (`already`) are skipped, so a second run over the same
   store plans nothing new.
2. Notes are split by witness set: a digest never mixes what different people saw.
3. Near-duplicates (same speaker label, body terms Jaccard >= `merge_threshold`, or the
   same body) are merged into the earliest twin; the duplicate is kept as an original,
   marked consolidated, and does not count towards a group's size.
4. The remaining notes are linked when they are at most `window_days` apart and share an
   entity or have body terms Jaccard >= `link_threshold`; a group is a connected component
   (single link). The speakers' own names (the labels of "Ana: …" notes) do not link: they
   are in every note, and would chain everything into one digest.
5. A group of at least `min_group` distinct notes becomes digests; smaller groups wait for
   a later sleep. A long group is cut in time order into digests of at most `max_group`
   notes within one window, a short tail joining the chunk before it. Every note of a big
   enough group is consolidated and removing notes can only split a group, so leftovers
   never form a group on a rerun: the plan is idempotent.
6. Beliefs (L3 candidates) come from the digested notes: those of importance >=
   `belief_importance`, and per entity named in >= `belief_groups` digests its most
   important note; at most `max_beliefs`, the most important first.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from persona.pipeline.text import content_words, jaccard, normalize

MIN_GROUP = 3
MAX_GROUP = 12
MAX_CHARS = 600
LINK_THRESHOLD = 0.2
MERGE_THRESHOLD = 0.8
WINDOW_DAYS = 14.0
BELIEF_GROUPS = 2
BELIEF_IMPORTANCE = 8
MAX_BELIEFS = 10

# "Ana: …" / "アナ：…": the speaker label of a note. ASCII colons need a space after them so
# "At 10:30 we met" keeps its time.
_LABEL_RE = re.compile(r"^\s*([^:：\n]{1,40}?)(?::\s+|：\s*)")
# The prompt's frame of the user's words ("The user said they …", "The user asked: …"): a
# label too, or "user" and "said" would link every note of a chat.
_FRAME_RE = re.compile(r"^\s*the user (?:said|asked:?)\s+", re.IGNORECASE)
_ELLIPSIS = "…"


@dataclass(frozen=True)
class Note:
    """An L1 memory as consolidation sees it."""

    memory_id: str
    text: str
    importance: int
    created_at: str
    entities: tuple[str, ...]
    chat_id: str | None
    witnesses: tuple[str, ...]


@dataclass(frozen=True)
class Digest:
    """An L2 summary of one group of L1 notes seen by one witness set."""

    digest_id: str
    text: str
    source_ids: tuple[str, ...]
    topic: str
    witnesses: tuple[str, ...]
    importance: int
    period: tuple[str, str]


@dataclass(frozen=True)
class Plan:
    """What one sleep would change; empty when there is nothing new to consolidate."""

    digests: tuple[Digest, ...]
    consolidated: tuple[str, ...]
    merged: tuple[tuple[str, str], ...]
    beliefs: tuple[str, ...]


@dataclass(frozen=True)
class _Item:
    """A note with what the rules compare, computed once."""

    note: Note
    at: datetime
    label: str
    body: str
    terms: frozenset[str]
    entities: frozenset[str]


def plan(
    notes: Sequence[Note],
    already: Iterable[str] = (),
    *,
    min_group: int = MIN_GROUP,
    max_group: int = MAX_GROUP,
    max_chars: int = MAX_CHARS,
    link_threshold: float = LINK_THRESHOLD,
    merge_threshold: float = MERGE_THRESHOLD,
    window_days: float = WINDOW_DAYS,
    belief_groups: int = BELIEF_GROUPS,
    belief_importance: int = BELIEF_IMPORTANCE,
    max_beliefs: int = MAX_BELIEFS,
) -> Plan:
    """Plan digests, merges and belief candidates for the notes not consolidated yet."""
    skip = set(already)
    everything = _items(notes)
    items = [i for i in everything if i.note.memory_id not in skip]
    window = timedelta(days=window_days)
    digests: list[Digest] = []
    groups: list[list[_Item]] = []
    consolidated: list[str] = []
    merged: list[tuple[str, str]] = []
    for witnesses in sorted({i.note.witnesses for i in items}):
        part = [i for i in items if i.note.witnesses == witnesses]
        # Judged over the whole store, consolidated notes included, so a rerun sees the
        # same speakers and its leftovers cannot link in new ways.
        speakers = _speakers(i for i in everything if i.note.witnesses == witnesses)
        kept, twins = _merge(part, merge_threshold)
        for dup, keep in twins:
            merged.append((dup.note.memory_id, keep.note.memory_id))
            consolidated.append(dup.note.memory_id)
        for component in _cluster(_unnamed(kept, speakers), window, link_threshold):
            if len(component) < min_group:
                continue
            for group in _chunks(component, window, max_group, min_group):
                ids = {i.note.memory_id for i in group}
                members = group + [d for d, k in twins if k.note.memory_id in ids]
                digests.append(_digest(group, members, witnesses, max_chars))
                groups.append(group)
                consolidated.extend(m.note.memory_id for m in members)
    digests.sort(key=lambda d: (d.period[0], d.digest_id))
    return Plan(
        digests=tuple(digests),
        consolidated=tuple(sorted(set(consolidated))),
        merged=tuple(sorted(merged)),
        beliefs=_beliefs(groups, belief_groups, belief_importance, max_beliefs),
    )


def digest_id(source_ids: Iterable[str]) -> str:
    """A digest's id: a hash of its sorted source ids, so the same group gets the same id."""
    joined = "\n".join(sorted(source_ids))
    return "dg_" + hashlib.sha256(joined.encode()).hexdigest()[:16]


def _items(notes: Iterable[Note]) -> list[_Item]:
    """Notes in time order (id breaks ties), one per id, witnesses sorted and unique."""
    out: list[_Item] = []
    seen: set[str] = set()
    rows = sorted(
        ((_parse(n.created_at), n) for n in notes),
        key=lambda r: (r[0], r[1].memory_id, r[1].text),
    )
    for at, note in rows:
        if note.memory_id in seen:
            continue
        seen.add(note.memory_id)
        framed = _FRAME_RE.match(note.text)
        match = None if framed else _LABEL_RE.match(note.text)
        if framed:
            label, body = "user", note.text[framed.end() :]
        else:
            label = normalize(match.group(1)).strip() if match else ""
            body = note.text[match.end() :] if match else note.text
        out.append(
            _Item(
                note=Note(
                    memory_id=note.memory_id,
                    text=note.text,
                    importance=note.importance,
                    created_at=note.created_at,
                    entities=note.entities,
                    chat_id=note.chat_id,
                    witnesses=tuple(sorted(set(note.witnesses))),
                ),
                at=at,
                label=label,
                body=" ".join(normalize(body).split()),
                terms=frozenset(content_words(body)),
                entities=frozenset(e for e in (normalize(x).strip() for x in note.entities) if e),
            )
        )
    return out


def _parse(text: str) -> datetime:
    """An ISO 8601 time; a naive one is taken as UTC so all times compare."""
    at = datetime.fromisoformat(text)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _merge(part: list[_Item], threshold: float) -> tuple[list[_Item], list[tuple[_Item, _Item]]]:
    """Split a partition into kept notes and (duplicate, kept twin) pairs.

    The earliest of near-identical notes is kept (it says when the fact was first learned);
    a later one goes to its most similar kept twin, the earliest on a tie.
    """
    kept: list[_Item] = []
    twins: list[tuple[_Item, _Item]] = []
    for item in part:
        best: _Item | None = None
        best_score = -1.0
        for k in kept:
            if k.label != item.label:
                continue
            score = 1.0 if k.body == item.body else jaccard(set(k.terms), set(item.terms))
            if score >= threshold and score > best_score:
                best, best_score = k, score
        if best is None:
            kept.append(item)
        else:
            twins.append((item, best))
    return kept, twins


def _cluster(part: list[_Item], window: timedelta, threshold: float) -> list[list[_Item]]:
    """Single-link groups of a partition's notes, each in time order."""
    terms = [set(i.terms) for i in part]
    entities = [i.entities for i in part]
    parent = list(range(len(part)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a in range(len(part)):
        for b in range(a + 1, len(part)):
            # Sorted by time: once b is out of a's window, every later b is too.
            if part[b].at - part[a].at > window:
                break
            if entities[a] & entities[b] or jaccard(terms[a], terms[b]) >= threshold:
                ra, rb = root(a), root(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[_Item]] = {}
    for i, item in enumerate(part):
        groups.setdefault(root(i), []).append(item)
    return [groups[r] for r in sorted(groups)]


def _unnamed(items: list[_Item], speakers: frozenset[str]) -> list[_Item]:
    """The items without the speakers' names among their terms and entities.

    Linking, topics and beliefs all see these: a name in every note says nothing about
    what a note is about.
    """
    return [replace(i, terms=i.terms - speakers, entities=i.entities - speakers) for i in items]


def _speakers(items: Iterable[_Item]) -> frozenset[str]:
    """The speaker labels of a partition, whole and word by word ("ana lima", "ana", "lima")."""
    out: set[str] = set()
    for item in items:
        if item.label:
            out.add(item.label)
            out.update(item.label.split())
    return frozenset(out)


def _chunks(
    component: list[_Item], window: timedelta, max_group: int, min_group: int
) -> list[list[_Item]]:
    """Cut a long-running topic into digests of at most max_group notes and one window.

    Single link chains a city named every week into one endless group; a digest should
    read as one episode. A short tail joins the chunk before it (so it may pass max_group
    by less than min_group), which keeps every note of a big component consolidated: a
    rerun then finds no leftovers to group.
    """
    chunks: list[list[_Item]] = []
    for item in component:
        if not chunks or len(chunks[-1]) >= max_group or item.at - chunks[-1][0].at > window:
            chunks.append([item])
        else:
            chunks[-1].append(item)
    out: list[list[_Item]] = []
    for chunk in chunks:
        if out and (len(chunk) < min_group or len(out[-1]) < min_group):
            out[-1].extend(chunk)
        else:
            out.append(chunk)
    return out


def _digest(
    group: list[_Item], members: list[_Item], witnesses: tuple[str, ...], max_chars: int
) -> Digest:
    """The extractive digest of one group: its most important, most central notes."""
    times = sorted((m.at, m.note.created_at) for m in members)
    return Digest(
        digest_id=digest_id(m.note.memory_id for m in members),
        text=_text(group, max_chars),
        source_ids=tuple(sorted(m.note.memory_id for m in members)),
        topic=_topic(group),
        witnesses=witnesses,
        # The max, not the mean: a digest that holds one vital fact must not rank below it.
        importance=max(m.note.importance for m in members),
        period=(times[0][1], times[-1][1]),
    )


def _text(group: list[_Item], max_chars: int) -> str:
    """Notes ranked by importance, then centrality, packed into max_chars, in time order."""

    def centrality(i: int) -> float:
        t = set(group[i].terms)
        return sum(jaccard(t, set(o.terms)) for j, o in enumerate(group) if j != i)

    ranked = sorted(
        range(len(group)),
        key=lambda i: (-group[i].note.importance, -centrality(i), group[i].at, i),
    )
    chosen: list[int] = []
    used = 0
    for i in ranked:
        line = " ".join(group[i].note.text.split())
        cost = len(line) + (1 if chosen else 0)  # lines are joined by "\n"
        if used + cost <= max_chars:
            chosen.append(i)
            used += cost
    if not chosen:  # not even the best note fits: cut it
        line = " ".join(group[ranked[0]].note.text.split())
        return line[: max(max_chars - 1, 0)].rstrip() + _ELLIPSIS if max_chars > 0 else ""
    return "\n".join(" ".join(group[i].note.text.split()) for i in sorted(chosen))


def _topic(group: list[_Item]) -> str:
    """The entity most members name (two at least), else the group's three commonest terms."""
    names: Counter[str] = Counter()
    surface: dict[str, str] = {}
    for item in group:
        for raw in sorted(set(item.note.entities)):
            key = normalize(raw).strip()
            if key:
                surface.setdefault(key, raw.strip())
        names.update(item.entities)
    ranked = sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))
    if ranked and ranked[0][1] >= 2:
        return surface[ranked[0][0]]
    df: Counter[str] = Counter()
    for item in group:
        df.update(item.terms)
    return " ".join(t for t, _ in sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))[:3])


def _beliefs(
    groups: list[list[_Item]], min_groups: int, min_importance: int, limit: int
) -> tuple[str, ...]:
    """Belief candidates from this sleep's digested groups, in time order.

    A note of importance >= min_importance is one; so is, for each entity named in at least
    min_groups groups, its most important note there (the latest on a tie: newer news wins).
    At most `limit` are kept, the most important (then newest) first: L3 is always in
    context, so it must stay short. Only digested notes count, so a rerun that digests
    nothing proposes nothing.
    """
    chosen: dict[str, _Item] = {}
    spread: dict[str, list[_Item]] = {}
    for group in groups:
        for item in group:
            if item.note.importance >= min_importance:
                chosen[item.note.memory_id] = item
            for entity in item.entities:
                spread.setdefault(entity, []).append(item)
    for entity in sorted(spread):
        named_in = sum(1 for g in groups if any(entity in i.entities for i in g))
        if named_in >= min_groups:
            best = max(spread[entity], key=lambda i: (i.note.importance, i.at, i.note.memory_id))
            chosen[best.note.memory_id] = best
    best_first = sorted(
        chosen.values(), key=lambda i: (-i.note.importance, -i.at.timestamp(), i.note.memory_id)
    )
    kept = best_first[:limit]
    lines: list[str] = []
    for item in sorted(kept, key=lambda i: (i.at, i.note.memory_id)):
        line = " ".join(item.note.text.split())
        if line not in lines:
            lines.append(line)
    return tuple(lines)
