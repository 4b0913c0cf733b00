"""The retrieval bench runs end to end on tiny stores and reports every row (speed is
never asserted)."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from persona.events import MemoryWritten

BENCH = Path(__file__).resolve().parent.parent / "bench" / "memory_retrieval.py"
UNLIMITED = 10**9


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("memory_retrieval", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_reports_every_class_cap_and_part(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    report = bench.main(
        ["--sizes", "120,60", "--messages", "24", "--caps", f"3,{UNLIMITED}", "--json", str(out)]
    )

    assert json.loads(out.read_text(encoding="utf-8")) == report
    assert [r["memories"] for r in report["results"]] == [120, 60]
    for result in report["results"]:
        # Seeded through the projector: every memory landed, plus the persona's core one.
        assert result["memories_in_store"] == result["memories"] + 1
        assert result["append"]["events"] == result["memories"]
        assert result["append"]["events_per_s"] > 0
        by_class = result["retrieval_ms"]
        assert list(by_class) == ["all", *bench.CLASSES]
        assert by_class["all"]["n"] == 24
        assert sum(by_class[c]["n"] for c in bench.CLASSES) == 24
        for stat in by_class.values():
            assert 0 < stat["p50"] <= stat["p95"] <= stat["max"]
        # Questions about what was said find seeded memories; unseen topics find none.
        assert by_class["question"]["candidates"] > 0
        assert by_class["unseen"]["candidates"] == 0

    largest, smaller = report["results"]
    assert "caps" not in smaller and "breakdown_ms" not in smaller
    caps = largest["caps"]
    assert list(caps) == ["3", str(UNLIMITED)]
    # A cap of 3 drops the terms that match more memories; no cap drops none.
    assert caps["3"]["dropped"] > 0
    assert caps[str(UNLIMITED)]["dropped"] == 0
    assert caps[str(UNLIMITED)]["candidates"] > caps["3"]["candidates"]
    assert list(largest["breakdown_ms"]) == ["common_terms", "search", "core", "pinned", "retrieve"]

    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert "| memories | class | n | p50 | p95 | max | candidates | dropped / terms |" in lines
    for cls in ("all", *bench.CLASSES):
        assert any(line.startswith(f"| 120 | {cls} | ") for line in lines), cls
        assert any(line.startswith(f"| 60 | {cls} | ") for line in lines), cls
    assert any(line.startswith("| 3 | ") for line in lines)
    assert any(line.startswith("| unlimited | ") for line in lines)
    assert "| batches of 2,000 | 120 |" in printed
    assert "SQLite" in printed and "CPUs" in printed


def test_seeded_memories_are_chats_of_forty_without_speaker_labels(bench: ModuleType) -> None:
    events = bench.memory_events(100, random.Random(1))
    payloads = [e.payload for e in events]
    assert all(isinstance(p, MemoryWritten) for p in payloads)
    chats = [p.chat_id for p in payloads]
    assert chats.count(chats[0]) == bench.CHAT_LENGTH == 40
    assert len(set(chats)) == 3
    for p in payloads:
        # Who spoke is data (`said`), never words in the searched text.
        assert "User said:" not in p.content and "replied:" not in p.content
        assert [u.role for u in p.said] == ["user", "persona"]
        assert p.content == f"{p.said[0].text}\n{p.said[1].text}"
        assert p.witnesses == [bench.USER_ID]
    times = [e.chat_time for e in events]
    assert times == sorted(times) and len(set(times)) == len(times)
    # Deterministic: the same seed gives the same text.
    again = bench.memory_events(100, random.Random(1))
    assert [e.payload for e in again] == payloads


def test_messages_take_turns_over_the_classes(bench: ModuleType) -> None:
    msgs = bench.messages(14, random.Random(3))
    assert [cls for cls, _ in msgs] == [*bench.CLASSES * 3][:14]
    by_class = dict(msgs)
    assert bench.PERSONA_NAME in by_class["persona_name"]
    assert " said " in by_class["said"] or " say " in by_class["said"]
    assert bench.messages(14, random.Random(3)) == msgs


def test_percentile_interpolates_between_ranks(bench: ModuleType) -> None:
    assert bench.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert bench.percentile([float(v) for v in range(1, 101)], 95) == pytest.approx(95.05)
    assert bench.percentile([7.0], 95) == 7.0
