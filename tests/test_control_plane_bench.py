"""The control-plane bench: every case holds, the baseline matches, and it can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona.bench.control_plane import (
    CaseError,
    default_cases_path,
    dumps,
    load_cases,
    run_bench,
)

CASES = default_cases_path()

ONE_CASE = """
[[case]]
name = "capital"
lang = "en"
turns = ["What is the capital of France?"]
[[case.expect]]
path = "dialogue_state"
eq = "{state}"
"""


def test_the_bench_passes_every_case_and_matches_its_baseline() -> None:
    report = run_bench(CASES)

    assert report.ok, report.render()


def test_the_cases_cover_both_languages_and_every_state() -> None:
    cases = load_cases(CASES)
    assert len(cases) >= 64
    assert {c.lang for c in cases} == {"en", "ja"}
    assert sum(c.lang == "ja" for c in cases) >= 20
    states = {e.value for c in cases for e in c.expects if e.path == "dialogue_state"}
    assert {f"S{i}" for i in range(7)} <= {s[:2] for s in states}
    tags = {t for c in cases for t in c.tags}
    assert {"no-fire", "veiled", "hysteresis", "dwell", "reward"} <= tags
    assert {"operator", "freeze", "silent", "subjectivity", "global", "overloaded"} <= tags
    assert {"reflective", "failure", "continuity", "revision", "values"} <= tags
    # Each of these is held in both languages.
    for tag in ("freeze", "silent", "overloaded", "failure", "continuity", "values"):
        assert {c.lang for c in cases if tag in c.tags} == {"en", "ja"}, tag
    # Operator overrides between turns, and scripted replies, are exercised.
    kinds = {s.operator["kind"] for c in cases for s in c.steps if s.operator}
    assert {"freeze_updates", "global_state", "subjectivity_mode"} <= kinds
    assert any(s.reply for c in cases for s in c.steps)
    globals_ = {e.value for c in cases for e in c.expects if e.path == "global_state"}
    assert {"SILENT", "SAFETY_LOCK", "OVERLOADED", "REFLECTIVE", "NORMAL"} <= globals_
    modes = {e.value for c in cases for e in c.expects if e.path == "subjectivity_mode"}
    assert {"S0_REACTIVE", "S1_REFLECTIVE", "S2_AUTONOMOUS", "S3_SAFE"} <= modes


def test_a_wrong_expectation_fails_the_bench(tmp_path: Path) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text(ONE_CASE.format(state="S2_TASK"), encoding="utf-8")
    assert run_bench(cases, write_baseline=True).ok
    assert run_bench(cases).ok

    cases.write_text(ONE_CASE.format(state="S1_CASUAL"), encoding="utf-8")
    report = run_bench(cases)

    assert not report.ok
    assert not report.baseline_diffs  # the run is the same; only the expectation is wrong
    text = report.render()
    assert 'dialogue_state: expected eq "S1_CASUAL", got "S2_TASK"' in text
    assert "FAILED: 0/1 cases" in text


def test_a_baseline_value_off_by_more_than_the_tolerance_fails(tmp_path: Path) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text(ONE_CASE.format(state="S2_TASK"), encoding="utf-8")
    run_bench(cases, write_baseline=True)
    baseline_path = tmp_path / "baseline.json"
    baseline = json.loads(baseline_path.read_text(encoding="utf-8"))
    intent = baseline["capital"][0]["meta_v1"]["intent"]

    intent["smalltalk"] += 1e-7  # within the tolerance
    baseline_path.write_text(dumps(baseline), encoding="utf-8")
    assert run_bench(cases).ok

    intent["smalltalk"] += 1e-3
    baseline["capital"][0]["meta_v1"]["dialogue_state"] = "S0_NEUTRAL"
    baseline_path.write_text(dumps(baseline), encoding="utf-8")
    report = run_bench(cases)

    assert not report.ok
    text = report.render()
    assert "capital turn 1: meta_v1.intent.smalltalk: baseline" in text
    assert 'capital turn 1: meta_v1.dialogue_state: baseline "S0_NEUTRAL", now "S2_TASK"' in text


def test_the_baseline_is_byte_stable(tmp_path: Path) -> None:
    cases = tmp_path / "cases.toml"
    first = load_cases(CASES)[:3]
    source = CASES.read_text(encoding="utf-8")
    # The first three cases of the real file, a multi-turn one among them.
    cut = source.index(f'name = "{load_cases(CASES)[3].name}"')
    cases.write_text(source[: source.rindex("[[case]]", 0, cut)], encoding="utf-8")
    assert [c.name for c in load_cases(cases)] == [c.name for c in first]
    run_bench(cases, write_baseline=True)
    once = (tmp_path / "baseline.json").read_bytes()
    run_bench(cases, write_baseline=True)

    assert (tmp_path / "baseline.json").read_bytes() == once
    assert b"trace_id" not in once and b"timing_ms" not in once


@pytest.mark.parametrize(
    "text, error",
    [
        ('[[case]]\nname = "x"\nturns = ["hi"]\n', "no expectations"),
        ('[[case]]\nname = "x"\nturns = []\n[[case.expect]]\npath = "a"\neq = 1\n', "no turns"),
        (
            '[[case]]\nname = "x"\nturns = ["hi"]\n[[case.expect]]\nturn = 2\npath = "a"\neq = 1\n',
            "no turn 2",
        ),
        (
            '[[case]]\nname = "x"\n'
            'turns = [{message = "hi", operator = {kind = "freeze", reason = "r"}}]\n'
            '[[case.expect]]\npath = "a"\neq = 1\n',
            "an operator override the endpoint refuses",
        ),
    ],
)
def test_a_malformed_case_is_refused(tmp_path: Path, text: str, error: str) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text(text, encoding="utf-8")
    with pytest.raises(CaseError, match=error):
        load_cases(cases)
