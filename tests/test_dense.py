"""Dense retrieval: the vector codec, `memory.embedded` and its projection, cosine search
scoped by the recall rule, the search cache, and each backend's `embed`."""

from __future__ import annotations

import base64
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from helpers import assert_rebuild_and_verify_agree, skip_without_local_model
from pydantic import ValidationError

from persona.config import Settings
from persona.events import (
    EventPayload,
    MemoryConsolidated,
    MemoryDeleted,
    MemoryEmbedded,
    MemoryPinned,
    MemoryWritten,
)
from persona.llm.base import Backend, EmbeddingUnsupported
from persona.llm.openai_backend import OpenAIBackend
from persona.llm.scripted import ScriptedBackend
from persona.pipeline import dense
from persona.projector import Projector
from persona.projector.replay import rebuild
from persona.storage.db import connect, run_in_transaction
from persona.storage.eventlog import NewEvent
from persona.storage.migrations import migrate
from persona.storage.store import WriteTx

P = "persona-1"
MODEL = "test-embed"


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    dense.clear_cache()
    yield
    dense.clear_cache()


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = connect(tmp_path / "dense.db")
    migrate(c)
    yield c
    c.close()


def append(conn: sqlite3.Connection, *payloads: EventPayload) -> None:
    events = [NewEvent(payload=p, stream_id=f"persona:{P}", actor="test") for p in payloads]
    run_in_transaction(
        conn, lambda c: WriteTx(c, Projector(), "2026-01-01T00:00:00.000000Z").append(events)
    )


def memory(conn: sqlite3.Connection, mid: str, vector: list[float], **fields: Any) -> None:
    """A memory (witnessed by sam unless told otherwise) and its vector."""
    written = {"witnesses": ["sam"], "content": mid, "importance": 0.5, **fields}
    append(
        conn,
        MemoryWritten(memory_id=mid, persona_id=P, **written),
        dense.embedded(mid, P, MODEL, vector),
    )


def search(conn: sqlite3.Connection, query: list[float], limit: int = 10, user: str = "sam"):  # type: ignore[no-untyped-def]
    return dense.search(conn, P, user, MODEL, query, limit)


def ids(hits: list[tuple[str, float]]) -> list[str]:
    return [memory_id for memory_id, _ in hits]


# ---- the codec and the event -------------------------------------------------------------


def test_a_vector_round_trips_as_base64_of_little_endian_float32():
    values = [1.0, -0.5, 3.25, 1e-3]
    text = dense.encode(values)
    assert base64.b64decode(text)[:4] == b"\x00\x00\x80\x3f"  # 1.0f, little-endian
    assert dense.decode(text).tolist() == pytest.approx(values, rel=1e-7)
    assert dense.decode(text).dtype.name == "float32"


def test_an_embedded_event_must_hold_dim_values():
    event = dense.embedded("m", P, MODEL, [0.1, 0.2, 0.3])
    assert event.dim == 3 and dense.decode(event.vector).shape == (3,)
    with pytest.raises(ValidationError, match="dim=4"):
        MemoryEmbedded(memory_id="m", persona_id=P, model=MODEL, dim=4, vector=event.vector)
    with pytest.raises(ValidationError, match="base64"):
        MemoryEmbedded(memory_id="m", persona_id=P, model=MODEL, dim=1, vector="not base64!")


def test_the_projection_keeps_one_vector_per_memory_and_survives_rebuild(conn, tmp_path):
    memory(conn, "m1", [1.0, 0.0])
    append(conn, dense.embedded("m1", P, MODEL, [0.0, 2.0]))  # re-embedded: replaces
    rows = conn.execute("SELECT memory_id, model, dim, vector FROM memory_vector").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("m1", MODEL, 2)]
    assert dense.decode(base64.b64encode(rows[0][3])).tolist() == [0.0, 2.0]
    assert_rebuild_and_verify_agree(tmp_path / "dense.db", tmp_path / "scratch.db")


# ---- search ------------------------------------------------------------------------------


def test_search_ranks_by_cosine_best_first_and_ties_by_memory_id(conn):
    memory(conn, "m-d", [0.0, 1.0])
    memory(conn, "m-c", [0.6, 0.8])
    memory(conn, "m-b", [3.0, 4.0])  # the same direction as m-c: the same cosine
    memory(conn, "m-long", [10.0, 0.0])  # length does not count, only the angle
    memory(conn, "m-a", [1.0, 0.0])
    hits = search(conn, [2.0, 0.0])
    assert ids(hits) == ["m-a", "m-long", "m-b", "m-c", "m-d"]
    assert [score for _, score in hits] == pytest.approx([1.0, 1.0, 0.6, 0.6, 0.0], abs=1e-6)
    assert ids(search(conn, [2.0, 0.0], limit=3)) == ["m-a", "m-long", "m-b"]
    assert search(conn, [2.0, 0.0], limit=0) == []


def test_search_sees_only_what_this_user_may_recall(conn):
    memory(conn, "sams", [1.0, 0.0])
    memory(conn, "anas", [1.0, 0.0], witnesses=["ana"])
    memory(conn, "shared", [0.9, 0.1], witnesses=["ana"], shared=True)
    memory(conn, "deleted", [1.0, 0.0])
    memory(conn, "pinned", [1.0, 0.0])
    memory(conn, "superseded", [1.0, 0.0])
    memory(conn, "core", [1.0, 0.0], tier="L3", kind="belief")
    append(
        conn,
        MemoryDeleted(memory_id="deleted", persona_id=P),
        MemoryPinned(memory_id="pinned", persona_id=P, pinned=True),  # in context already
        MemoryConsolidated(persona_id=P, trigger="command", superseded=["superseded"]),
    )
    assert ids(search(conn, [1.0, 0.0])) == ["sams", "shared"]
    assert ids(search(conn, [1.0, 0.0], user="ana")) == ["anas", "shared"]
    assert ids(search(conn, [1.0, 0.0], user="nobody")) == ["shared"]


def test_the_recall_rule_holds_past_a_crowd_of_closer_memories_of_others(conn):
    # Nearly every candidate of the first rounds belongs to ana: sam's still come back.
    for i in range(300):
        memory(conn, f"ana-{i:03d}", [1.0, 0.001 * i], witnesses=["ana"])
    memory(conn, "sam-far", [0.0, 1.0])
    memory(conn, "sam-near", [0.5, 0.5])
    memory(conn, "sam-close", [1.0, 0.0015])  # among the first candidates, alone
    assert ids(search(conn, [1.0, 0.0], limit=1)) == ["sam-close"]
    assert ids(search(conn, [1.0, 0.0], limit=3)) == ["sam-close", "sam-near", "sam-far"]
    assert ids(search(conn, [1.0, 0.0], limit=3, user="ana")) == ["ana-000", "ana-001", "ana-002"]


def test_a_query_of_another_size_is_refused(conn):
    memory(conn, "m", [1.0, 0.0])
    with pytest.raises(ValueError, match="3 dimensions"):
        search(conn, [1.0, 0.0, 0.0])


def test_only_vectors_of_the_model_asked_are_compared(conn):
    memory(conn, "m1", [1.0, 0.0])
    memory(conn, "m2", [0.0, 1.0])
    assert ids(search(conn, [1.0, 0.0])) == ["m1", "m2"]
    for i in range(4):  # enough vectors that a search of one takes the candidate rounds
        memory(conn, f"z{i}", [0.0, 1.0])
    assert ids(search(conn, [1.0, 0.0], limit=1)) == ["m1"]
    append(conn, dense.embedded("m1", P, "other-model", [1.0, 0.0, 0.0]))  # moved on
    assert ids(search(conn, [1.0, 0.0], limit=1)) == ["m2"]
    assert ids(search(conn, [1.0, 0.0])) == ["m2", "z0", "z1", "z2", "z3"]
    assert ids(dense.search(conn, P, "sam", "other-model", [1.0, 0.0, 0.0], 5)) == ["m1"]


# ---- the cache ---------------------------------------------------------------------------


def test_the_cache_sees_new_and_replaced_vectors(conn):
    memory(conn, "m1", [1.0, 0.0])
    memory(conn, "m2", [0.0, 1.0])
    assert ids(search(conn, [1.0, 0.1])) == ["m1", "m2"]
    memory(conn, "m3", [1.0, 0.05])  # written after the cache was filled
    assert ids(search(conn, [1.0, 0.1])) == ["m3", "m1", "m2"]
    for i in range(3):  # enough vectors that a search of one takes the candidate rounds
        memory(conn, f"z{i}", [-1.0, 0.0])
    assert ids(search(conn, [1.0, 0.1], limit=1)) == ["m3"]
    append(conn, dense.embedded("m3", P, MODEL, [0.0, 1.0]))  # older rows replaced
    assert ids(search(conn, [1.0, 0.1], limit=1)) == ["m1"]
    append(conn, dense.embedded("m2", P, MODEL, [1.0, 0.1]))
    assert ids(search(conn, [1.0, 0.1], limit=1)) == ["m2"]
    append(conn, dense.embedded("m2", P, MODEL, [0.0, 1.0]))  # the newest row replaced
    assert ids(search(conn, [1.0, 0.1], limit=1)) == ["m1"]
    append(conn, dense.embedded("m2", P, MODEL, [1.0, 0.1]))
    assert ids(search(conn, [1.0, 0.1])) == ["m2", "m1", "m3", "z0", "z1", "z2"]


def test_the_cache_reads_a_rebuilt_table_again(conn):
    memory(conn, "m1", [1.0, 0.0])
    memory(conn, "m2", [0.0, 1.0])
    memory(conn, "m3", [0.7, 0.7])
    assert ids(search(conn, [1.0, 0.0])) == ["m1", "m3", "m2"]
    rebuild(conn)  # the same log: the same table
    assert ids(search(conn, [1.0, 0.0])) == ["m1", "m3", "m2"]
    # A rebuild that folds differently (new code) leaves fewer, other rows.
    conn.execute("DELETE FROM memory_vector")
    blob = dense.decode(dense.encode([1.0, 0.0])).tobytes()
    conn.execute(
        "INSERT INTO memory_vector VALUES ('m2', ?, ?, 2, ?), ('m3', ?, ?, 2, ?)",
        (P, MODEL, blob, P, MODEL, dense.decode(dense.encode([0.0, 1.0])).tobytes()),
    )
    assert ids(search(conn, [1.0, 0.0])) == ["m2", "m3"]


def test_each_database_has_its_own_cache(conn, tmp_path):
    memory(conn, "m1", [1.0, 0.0])
    assert ids(search(conn, [1.0, 0.0])) == ["m1"]
    other = connect(tmp_path / "other.db")
    try:
        migrate(other)
        memory(other, "x1", [1.0, 0.0])
        assert ids(search(other, [1.0, 0.0])) == ["x1"]
    finally:
        other.close()


# ---- the backends ------------------------------------------------------------------------


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0
    )


async def test_the_scripted_embedding_is_deterministic_and_puts_similar_texts_closer():
    backend = ScriptedBackend()
    texts = [
        "My sister Ana moved to Lisbon last spring",
        "Ana, my sister, lives in Lisbon now",
        "I bought a new bicycle for the race",
    ]
    first = await backend.embed(texts, "m")
    assert first == await ScriptedBackend().embed(texts, "m")
    assert all(len(v) == 64 for v in first)
    assert sum(x * x for x in first[0]) == pytest.approx(1.0)
    assert _cosine(first[0], first[1]) > 0.5 > _cosine(first[0], first[2])
    assert backend.embed_calls == [(texts, "m")]
    # Only content words count: function words alone embed to nothing.
    assert await backend.embed(["it is what it is"], "m") == [[0.0] * 64]


async def test_a_backend_without_embeddings_says_so():
    class Plain(Backend):
        name = "plain"

    with pytest.raises(EmbeddingUnsupported, match="plain backend cannot embed"):
        await Plain().embed(["hi"], "m")


async def test_the_openai_backend_embeds_through_the_servers_embeddings_endpoint():
    with FakeOpenAI() as fake:
        settings = Settings.model_validate(
            {"llm": {"provider": "openai", "base_url": fake.base_url, "api_key": "k"}}
        )
        backend = OpenAIBackend(settings)
        try:
            vectors = await backend.embed(["one two three", "hello"], "embed-small")
            assert await backend.embed([], "embed-small") == []
        finally:
            await backend.aclose()
    # The fake answers out of order: each vector is put back with its text.
    assert vectors == [[13.0, 3.0, 1.0], [5.0, 1.0, 1.0]]
    (seen,) = [r for r in fake.requests if r.path.endswith("/embeddings")]
    assert seen.body["model"] == "embed-small" and seen.body["encoding_format"] == "float"


@pytest.mark.local_model
async def test_the_local_backend_embeds_with_a_gguf_and_pools_token_vectors(settings):
    skip_without_local_model()
    from persona.llm.local import LocalBackend, find_gguf

    backend = LocalBackend(settings)
    path = str(find_gguf())
    one, two = await backend.embed(["a dog in the park", "a dog in the park"], path)
    assert len(one) == 576 and one == two  # the packaged model pools no tokens itself
    assert await backend.embed(["a dog in the park"], path) == [one]
