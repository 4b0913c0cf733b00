"""Where files are: the checkout's folders and data/, or per-user folders when installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import persona
from persona import resources, version
from persona.config import Settings, config_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Behave as a wheel install does (no checkout), with per-user folders under tmp_path."""
    monkeypatch.setattr(resources, "checkout_root", lambda: None)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("PERSONA_CONFIG_FILE")
    return tmp_path


def test_a_checkout_reads_its_own_folders_and_data(monkeypatch):
    monkeypatch.delenv("PERSONA_CONFIG_FILE")
    assert resources.checkout_root() == ROOT
    assert resources.templates_dir() == ROOT / "templates"
    assert resources.static_dir() == ROOT / "static"
    assert resources.migrations_dir() == ROOT / "migrations"
    assert resources.personas_dir() == ROOT / "data" / "personas"
    assert resources.prompts_dir() == ROOT / "persona" / "prompts"
    s = Settings()
    assert (s.data_dir, s.db_path) == (ROOT / "data", ROOT / "data" / "persona.db")
    assert config_file() == ROOT / "data" / "config.toml"
    assert s.default_persona_path() == ROOT / "data" / "personas" / "default.toml"


def test_installed_assets_are_the_packaged_copies(installed):
    packaged = Path(persona.__file__).resolve().parent / "_assets"
    assert resources.templates_dir() == packaged / "templates"
    assert resources.static_dir() == packaged / "static"
    assert resources.migrations_dir() == packaged / "migrations"
    assert resources.personas_dir() == packaged / "personas"


@pytest.mark.skipif(sys.platform != "linux", reason="XDG folders are the Linux convention")
def test_installed_data_and_config_are_per_user(installed):
    config = installed / "xdg-config" / "persona" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("port = 1234\n", encoding="utf-8")
    s = Settings()
    assert s.data_dir == installed / "xdg-data" / "persona"
    assert s.db_path == installed / "xdg-data" / "persona" / "persona.db"
    assert config_file() == config
    assert s.port == 1234
    assert version.build_sha.__wrapped__() == "unknown"


def test_env_paths_win_and_the_db_follows_the_data_dir(installed, monkeypatch):
    monkeypatch.setenv("PERSONA_DATA_DIR", str(installed / "mine"))
    assert Settings().db_path == installed / "mine" / "persona.db"
    monkeypatch.setenv("PERSONA_DB_PATH", str(installed / "elsewhere.db"))
    assert Settings().db_path == installed / "elsewhere.db"
    monkeypatch.setenv("PERSONA_CONFIG_FILE", str(installed / "c.toml"))
    assert config_file() == installed / "c.toml"


def test_a_user_copy_of_the_default_persona_wins(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.default_persona_path() == resources.personas_dir() / "default.toml"
    own = tmp_path / "personas" / "default.toml"
    own.parent.mkdir()
    own.write_text("", encoding="utf-8")
    assert s.default_persona_path() == own
    # A file outside personas/ has no bundled fallback: it is the user's to provide.
    assert Settings(data_dir=tmp_path, default_persona_file="x.toml").default_persona_path() == (
        tmp_path / "x.toml"
    )
