"""Layers with one direction, read-only stages, snapshot reads, and the documented meta."""

from __future__ import annotations

import ast
import asyncio
import threading
from pathlib import Path

import pytest
from helpers import run_turn

from persona.events import ChatStarted
from persona.pipeline.prompts import PromptSet
from persona.storage import queries
from persona.storage.eventlog import NewEvent

PACKAGE = Path(__file__).resolve().parent.parent / "persona"


def _imports(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (PACKAGE / folder).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        found[str(path.relative_to(PACKAGE))] = names
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("events", ("persona.storage", "persona.projector", "persona.pipeline", "persona.web")),
        ("storage", ("persona.projector", "persona.pipeline", "persona.web", "persona.engine")),
        ("projector", ("persona.pipeline", "persona.web", "persona.engine")),
        ("pipeline", ("persona.web", "persona.projector", "persona.engine")),
    ],
)
def test_imports_point_one_way(folder, forbidden):
    offenders = {
        module: sorted(n for n in names if n.startswith(forbidden))
        for module, names in _imports(folder).items()
    }
    assert {m: n for m, n in offenders.items() if n} == {}


def test_the_web_layer_takes_domain_errors_from_their_own_module():
    for module, names in _imports("web").items():
        assert "persona.pipeline.turn" not in names, module


async def test_stages_get_a_read_only_view_of_storage(engine):
    view = engine.runner.env.store
    assert hasattr(view, "read") and not hasattr(view, "append")
    assert not hasattr(view, "transact")


async def test_one_read_is_one_snapshot_even_across_a_commit(engine):
    inside, written = threading.Event(), threading.Event()

    def two_queries(conn):
        first = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        inside.set()
        assert written.wait(10)
        second = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return first, second

    reading = asyncio.ensure_future(engine.store.read(two_queries))
    await asyncio.get_running_loop().run_in_executor(None, inside.wait, 10)
    await engine.store.append(
        [
            NewEvent(
                payload=ChatStarted(chat_id="s", persona_id="default", user_id="u", title="t"),
                stream_id="chat:s",
                actor="test",
            )
        ]
    )
    written.set()
    first, second = await reading
    assert first == second  # the commit landed between the queries, unseen by this read


async def test_reads_run_in_parallel_on_the_pool(engine):
    barrier = threading.Barrier(2, timeout=10)

    def meet(conn):
        barrier.wait()  # a single reader thread would never let the second read arrive
        return conn.execute("SELECT 1").fetchone()[0]

    assert await asyncio.gather(engine.store.read(meet), engine.store.read(meet)) == [1, 1]


def test_openapi_documents_meta_and_meta_v1(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"Meta", "MetaV1", "Telemetry", "GateDecision"} <= set(components)
    chat = schema["paths"]["/persona/chat"]["post"]["responses"]["200"]
    ref = chat["content"]["application/json"]["schema"]["$ref"]
    body = components[ref.rsplit("/", 1)[1]]
    assert body["properties"]["meta"]["$ref"].endswith("/Meta")
    assert set(components["MetaV1"]["required"]) >= {"trace_id", "intent", "telemetry", "safety"}


async def test_config_hash_covers_the_prompts_the_speaker_renders(engine, tmp_path):
    runner = engine.runner
    assert runner.config_hash == engine.settings.config_hash(runner.prompts.sources)
    folder = tmp_path / "prompts"
    folder.mkdir()
    for name, text in runner.prompts.sources.items():
        (folder / name).write_text(text)
    loaded = PromptSet.load(folder)
    (folder / "system.j2").write_text("You are someone else entirely.")
    # What was loaded is what renders: a later edit on disk changes neither.
    assert loaded.sources == runner.prompts.sources
    result = await run_turn(engine, "hello")
    assert result["meta"]["config_hash"] == runner.config_hash
    persona = await engine.store.read(queries.get_persona, "default")
    assert "someone else" not in loaded.render("system.j2", persona=persona, traits="")
