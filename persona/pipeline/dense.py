"""Dense retrieval: memory vectors as events, and cosine search over a persona's vectors.

Vectors travel in `memory.embedded` events as base64 of little-endian float32 and are
projected into `memory_vector`. A search scores every vector of the persona and model with
one matrix product over a process-level cache of unit-length rows, refreshed by reading
only the rows written since (rowids only grow: see the projector's `memory_embedded`);
which memories the user may recall is decided by SQL on the best candidates, with the same
rule as full-text recall (`persona.storage.queries._RECALLABLE`).
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from persona.events.memory import MemoryEmbedded
from persona.storage.queries import _RECALLABLE

Vector = NDArray[np.float32]
_F32 = np.dtype("<f4")
# Candidates checked against the recall rule, as multiples of `limit`: the first round
# is enough when most memories are the user's; a persona shared by many users needs the
# second; past that, one SQL pass over every recallable memory is cheaper.
OVERFETCH = (4, 32)


def encode(vector: Sequence[float] | Vector) -> str:
    """base64 of the vector as little-endian float32 (a `memory.embedded` payload)."""
    return base64.b64encode(np.asarray(vector, dtype=_F32).tobytes()).decode("ascii")


def decode(text: str | bytes) -> Vector:
    """The float32 vector of an `encode`d string."""
    return _from_blob(base64.b64decode(text, validate=True))


def _from_blob(raw: bytes) -> Vector:
    if len(raw) % 4:
        raise ValueError(f"a float32 vector needs a multiple of 4 bytes, not {len(raw)}")
    return np.frombuffer(raw, dtype=_F32).astype(np.float32)


def embedded(
    memory_id: str, persona_id: str, model: str, vector: Sequence[float]
) -> MemoryEmbedded:
    """The `memory.embedded` event of one memory's vector."""
    return MemoryEmbedded(
        memory_id=memory_id,
        persona_id=persona_id,
        model=model,
        dim=len(vector),
        vector=encode(vector),
    )


@dataclass
class _Vectors:
    """One persona's vectors of one model: unit rows, their memory ids, which are live."""

    dim: int = 0
    matrix: Vector = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    ids: list[str] = field(default_factory=list)  # append-only: row i never changes
    alive: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    row_of: dict[str, int] = field(default_factory=dict)
    n: int = 0
    # The newest memory_vector row read (any persona) and its memory id: a table that
    # no longer has it was rebuilt (or its newest row replaced) and is read again.
    last_rowid: int = 0
    last_id: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        self.dim, self.n, self.last_rowid, self.last_id = 0, 0, 0, None
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.ids, self.row_of = [], {}
        self.alive = np.zeros(0, dtype=bool)

    def add(self, memory_id: str, vector: Vector) -> None:
        """Append a unit row (a memory embedded again: the old row dies)."""
        if self.dim == 0:
            self.dim = len(vector)
            self.matrix = np.zeros((64, self.dim), dtype=np.float32)
            self.alive = np.zeros(64, dtype=bool)
        if len(vector) != self.dim:
            return  # another shape under the same model name: not comparable
        old = self.row_of.get(memory_id)
        if old is not None:
            self.alive[old] = False
        if self.n == len(self.matrix):
            # Grow into new arrays: a search holding the old ones keeps a consistent view.
            self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
            self.alive = np.concatenate([self.alive, np.zeros_like(self.alive)])
        norm = float(np.linalg.norm(vector))
        self.matrix[self.n] = vector / norm if norm else vector
        self.alive[self.n] = True
        self.ids.append(memory_id)
        self.row_of[memory_id] = self.n
        self.n += 1

    def drop(self, memory_id: str) -> None:
        """The memory's vector moved to another model."""
        row = self.row_of.pop(memory_id, None)
        if row is not None:
            self.alive[row] = False


_caches: dict[tuple[str, str, str], _Vectors] = {}
_caches_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every cached matrix (the next search reads the table again)."""
    with _caches_lock:
        _caches.clear()


def _database_key(conn: sqlite3.Connection) -> str:
    for row in conn.execute("PRAGMA database_list").fetchall():
        if row[1] == "main":
            return str(row[2]) or f":memory:{id(conn)}"
    return f":memory:{id(conn)}"


def _cache(conn: sqlite3.Connection, persona_id: str, model: str) -> _Vectors:
    key = (_database_key(conn), persona_id, model)
    with _caches_lock:
        return _caches.setdefault(key, _Vectors())


def _refresh(conn: sqlite3.Connection, cache: _Vectors, persona_id: str, model: str) -> None:
    """Bring the cache up to the table as this connection sees it (caller holds the lock)."""
    top = conn.execute("SELECT rowid, memory_id FROM memory_vector ORDER BY rowid DESC LIMIT 1")
    newest = top.fetchone()
    if cache.last_rowid:
        kept = conn.execute(
            "SELECT memory_id FROM memory_vector WHERE rowid = ?", (cache.last_rowid,)
        ).fetchone()
        if kept is None or kept[0] != cache.last_id:
            cache.reset()  # rebuilt, shrunk, or its newest row replaced: read it all again
    if newest is None or newest[0] <= cache.last_rowid:
        return
    if cache.last_rowid == 0:
        # A full read goes through the (persona_id, model) index, not the whole table.
        rows = conn.execute(
            "SELECT memory_id, vector FROM memory_vector WHERE persona_id = ? AND model = ?"
            " AND rowid <= ? ORDER BY rowid",
            (persona_id, model, newest[0]),
        ).fetchall()
        for memory_id, blob in rows:
            cache.add(memory_id, _from_blob(blob))
    else:
        rows = conn.execute(
            "SELECT memory_id, persona_id = ? AND model = ?, vector FROM memory_vector"
            " WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
            (persona_id, model, cache.last_rowid, newest[0]),
        ).fetchall()
        for memory_id, ours, blob in rows:
            if ours:
                cache.add(memory_id, _from_blob(blob))
            else:
                cache.drop(memory_id)
    cache.last_rowid, cache.last_id = newest[0], newest[1]


def _recallable(
    conn: sqlite3.Connection, persona_id: str, user_id: str, memory_ids: list[str]
) -> set[str]:
    # CROSS JOIN keeps the candidates outside: one primary-key lookup each. With
    # `memory_id IN (...)` SQLite chose the persona index and read every memory (18 ms of
    # a 100k search).
    rows = conn.execute(
        "SELECT m.memory_id FROM json_each(?) j CROSS JOIN memory m ON m.memory_id = j.value"
        f" WHERE {_RECALLABLE}",
        (json.dumps(memory_ids), persona_id, user_id),
    )
    return {r[0] for r in rows}


def _all_recallable(
    conn: sqlite3.Connection, persona_id: str, user_id: str, model: str
) -> set[str]:
    rows = conn.execute(
        "SELECT m.memory_id FROM memory_vector v JOIN memory m ON m.memory_id = v.memory_id"
        f" WHERE v.persona_id = ? AND v.model = ? AND {_RECALLABLE}",
        (persona_id, model, persona_id, user_id),
    )
    return {r[0] for r in rows}


def _top(
    scores: Vector, mask: NDArray[np.bool_], k: int, ids: list[str]
) -> list[tuple[str, float]]:
    """The k best rows under `mask` and every row tied with the k-th (a tie at the cut is
    never split by the partition's whim), best first, ties by memory id."""
    count = int(mask.sum())
    if count == 0:
        return []
    masked = np.where(mask, scores, np.float32(-np.inf))
    k = min(k, count)
    cut = np.partition(masked, len(masked) - k)[len(masked) - k]
    rows = np.flatnonzero(mask & (masked >= cut)).tolist()
    rows.sort(key=lambda r: (-float(scores[r]), ids[r]))
    return [(ids[r], float(scores[r])) for r in rows]


def search(
    conn: sqlite3.Connection,
    persona_id: str,
    user_id: str,
    model: str,
    query: Sequence[float] | Vector,
    limit: int,
) -> list[tuple[str, float]]:
    """The `limit` recallable memories closest to `query` by cosine: (memory_id, cosine),
    best first, ties by memory id. Only vectors of `model` are compared."""
    if limit <= 0:
        return []
    cache = _cache(conn, persona_id, model)
    with cache.lock:
        _refresh(conn, cache, persona_id, model)
        n, dim, ids, row_of = cache.n, cache.dim, cache.ids, cache.row_of
        matrix, alive = cache.matrix[:n], cache.alive[:n].copy()
    if n == 0:
        return []
    q = np.asarray(query, dtype=np.float32)
    if q.shape != (dim,):
        raise ValueError(f"query has {q.size} dimensions, the {model!r} vectors {dim}")
    norm = float(np.linalg.norm(q))
    if norm:
        q = (q / norm).astype(np.float32)
    scores: Vector = matrix @ q
    live = int(alive.sum())
    for factor in OVERFETCH:
        if factor * limit >= live:
            break
        ranked = _top(scores, alive, factor * limit, ids)
        allowed = _recallable(conn, persona_id, user_id, [m for m, _ in ranked])
        kept = [hit for hit in ranked if hit[0] in allowed]
        if len(kept) >= limit:
            return kept[:limit]
    mask = np.zeros(n, dtype=bool)
    for memory_id in _all_recallable(conn, persona_id, user_id, model):
        row = row_of.get(memory_id)
        if row is not None and row < n:  # rows added after this snapshot are not in it
            mask[row] = True
    return _top(scores, mask & alive, limit, ids)[:limit]


def cosines(
    conn: sqlite3.Connection,
    persona_id: str,
    model: str,
    query: Sequence[float] | Vector,
    memory_ids: Sequence[str],
) -> dict[str, float]:
    """The cosine of `query` with each of these memories' stored `model` vectors (a memory
    with no vector, or one of another size, is left out)."""
    if not memory_ids:
        return {}
    q = np.asarray(query, dtype=np.float32)
    norm = float(np.linalg.norm(q))
    if norm:
        q = (q / norm).astype(np.float32)
    rows = conn.execute(
        "SELECT v.memory_id, v.vector FROM json_each(?) j"
        " CROSS JOIN memory_vector v ON v.memory_id = j.value"
        " WHERE v.persona_id = ? AND v.model = ?",
        (json.dumps(list(memory_ids)), persona_id, model),
    ).fetchall()
    out: dict[str, float] = {}
    for memory_id, blob in rows:
        vec = _from_blob(blob)
        if vec.shape != q.shape:
            continue
        size = float(np.linalg.norm(vec))
        out[str(memory_id)] = float(vec @ q) / size if size else 0.0
    return out
