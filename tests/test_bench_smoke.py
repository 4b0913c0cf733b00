"""The turn-overhead bench runs end to end and reports every row (speed is never asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from persona.pipeline.runner import DEFAULT_STAGES

BENCH = Path(__file__).resolve().parent.parent / "bench" / "turn_overhead.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("turn_overhead", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_reports_every_stage_and_throughput(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    report = bench.main(["--sizes", "20,5", "--turns", "3", "--json", str(out)])

    assert json.loads(out.read_text(encoding="utf-8")) == report
    assert [r["memories"] for r in report["results"]] == [20, 5]
    for result in report["results"]:
        # Seeded through the projector: every memory landed, plus the persona's core one.
        assert result["memories_in_store"] == result["memories"] + 1
        assert result["turns"] == 3
        assert result["append"]["events"] == result["memories"]
        assert result["append"]["events_per_s"] > 0
        stages = result["stages_ms"]
        assert set(stages) == set(bench.COLUMNS)
        for stage in (*bench.STAGES, "turn_wall", "outside_llm"):
            assert 0 < stages[stage]["p50"] <= stages[stage]["p95"], stage
        # outside_llm is the wall time less the speaker's, turn by turn.
        assert stages["outside_llm"]["p50"] < stages["turn_wall"]["p50"]
    # Retrieval had seeded text to match, not just the recency fallback.
    assert report["results"][0]["mean_lexical_hits"] > 0

    rebuild = report["rebuild"]
    assert rebuild["memories"] == 20
    # 20 memory.written + persona.created + at least chat/turn events of 5 turns (2 warm-up).
    assert rebuild["events"] > 20 + 5 * 5
    assert rebuild["events_per_s"] > 0

    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| memories |"))
    for stage in bench.STAGES:
        assert f" {stage} |" in header
    assert header.endswith("| speaker | turn (wall) | outside_llm (wall) |")
    assert any(line.startswith("| 20 | ") for line in printed.splitlines())
    assert any(line.startswith("| 5 | ") for line in printed.splitlines())
    assert "| rebuild (full replay) | 20 |" in printed
    assert "SQLite" in printed and "CPUs" in printed


def test_every_pipeline_stage_has_a_column(bench: ModuleType) -> None:
    expected = [stage.name for stage in DEFAULT_STAGES] + ["post", "writes", "overhead_total"]
    assert list(bench.STAGES) == expected


def test_percentile_interpolates_between_ranks(bench: ModuleType) -> None:
    assert bench.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert bench.percentile([float(v) for v in range(1, 101)], 95) == pytest.approx(95.05)
    assert bench.percentile([7.0], 95) == 7.0
