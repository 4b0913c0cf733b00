"""The `persona` command line: rebuild and verify work on an existing database only."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_turn

from persona.cli import main
from persona.engine import Engine


@pytest.mark.parametrize("command", ["verify", "rebuild"])
def test_a_missing_database_is_refused_and_nothing_is_created(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    mistyped = tmp_path / "persna.db"
    monkeypatch.setenv("PERSONA_DB_PATH", str(mistyped))

    status = main([command, "--quiet"])

    out, err = capsys.readouterr()
    assert status == 2
    assert f"no database at {mistyped}" in err
    assert "ok" not in out and "rebuilt" not in out
    assert list(tmp_path.iterdir()) == []  # no DB, no WAL, no backup


async def test_verify_and_rebuild_an_existing_database(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    await run_turn(engine, "hello, I like old maps")
    monkeypatch.setenv("PERSONA_DB_PATH", str(engine.settings.db_path))

    assert main(["verify", "--quiet"]) == 0
    assert "verify ok" in capsys.readouterr().out
    assert main(["rebuild", "--quiet"]) == 0
    assert "rebuilt projections from" in capsys.readouterr().out


def test_bench_control_plane_exits_1_with_a_readable_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cases = tmp_path / "cases.toml"
    case = (
        '[[case]]\nname = "hi"\nturns = ["Hey, good morning! How are you?"]\n'
        '[[case.expect]]\npath = "{p}"\neq = "{v}"\n'
    )
    cases.write_text(case.format(p="dialogue_state", v="S1_CASUAL"), encoding="utf-8")

    assert main(["bench", "control-plane", "--cases", str(cases), "--write-baseline"]) == 0
    assert (tmp_path / "baseline.json").is_file()
    assert main(["bench", "control-plane", "--cases", str(cases)]) == 0
    assert "PASSED: 1/1 cases" in capsys.readouterr().out

    cases.write_text(case.format(p="dialogue_state", v="S6_SAFETY"), encoding="utf-8")
    assert main(["bench", "control-plane", "--cases", str(cases)]) == 1
    out = capsys.readouterr().out
    assert "FAIL hi" in out and 'expected eq "S6_SAFETY", got "S1_CASUAL"' in out
