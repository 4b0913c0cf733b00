"""The branch-switch bench runs end to end on a tiny tree: every move lands where it was
asked and leaves exactly the leaf's path active (speed is never asserted)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from persona.clock import FixedClock
from persona.config import LLMSettings
from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend

BENCH = Path(__file__).resolve().parent.parent / "bench" / "branch_switch.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("branch_switch", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny(bench: ModuleType) -> object:
    return bench.Shape(
        main_turns=12, branches=3, branch_turns=3, memories=80, other_chat_turns=10, fact_every=4
    )


async def test_tiny_run_lands_every_move_on_its_leaf(bench: ModuleType) -> None:
    shape = tiny(bench)
    # full_check: after every move the active turns are the leaf's path and every memory
    # of the chat follows its turn (the moves assert their leaf themselves).
    report = await bench.run_bench(shape, ops=8, modes=("api", "fold"), full_check=True)

    d = report["dataset"]
    assert d["chat_turns"] == 12 + 3 * 3
    assert d["chat_leaves"] == 4  # the main path and three side branches
    assert d["chat_max_depth"] == 11 + 2  # a branch forks at the last turn, 3 turns long
    assert abs(d["memories"] - 80) <= 3  # every chat's memories, rounded to whole turns
    assert d["edge_log"] > 0 and d["memory_access"] > 0
    for mode in ("api", "fold"):
        by_op = report["results"][mode]
        assert list(by_op) == ["branch", "rewind", "undo"]
        for stat in by_op.values():
            assert stat["n"] == 8
            assert 0 < stat["p50"] <= stat["p95"] <= stat["max"]
            assert stat["moved_max"] >= 1
        assert by_op["rewind"]["moved_max"] <= bench.MAX_REWIND
    table = bench.render_markdown(report)
    assert table.count("| branch switch |") == 2


def test_forks_spread_over_the_main_path(bench: ModuleType) -> None:
    depths = bench.fork_depths(bench.FULL)
    assert len(depths) == 99 and len(set(depths)) == 99
    assert (
        depths[0] == 1 and depths[-1] == bench.FULL.main_turns - 1
    )  # the last turn has an edit too
    assert bench.FULL.chat_turns == 1_000


async def test_the_path_check_catches_a_turn_off_the_path(
    bench: ModuleType, tmp_path: Path
) -> None:
    templates = await bench.capture_templates(tmp_path)
    settings = bench._BenchSettings(
        db_path=tmp_path / "tree.db", llm=LLMSettings(provider="scripted")
    )
    engine = Engine(settings, backend=ScriptedBackend(), clock=FixedClock(bench.START))
    await engine.start()
    try:
        chat = await bench.build(engine, tiny(bench), templates, random.Random(1))
        await engine.store.read(bench.check_path)  # as built: consistent

        def flip(tx: object) -> None:
            tx.conn.execute(  # type: ignore[attr-defined]
                "UPDATE turns SET active = 1 - active WHERE turn_id = ?", (chat.main[-1],)
            )

        await engine.store.transact(flip)
        with pytest.raises(AssertionError, match="off the leaf's path"):
            await engine.store.read(bench.check_path)
    finally:
        await engine.stop()
