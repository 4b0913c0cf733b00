"""Configuration: defaults, TOML file, env vars; masked output; config_hash."""

from __future__ import annotations

import json

from persona import cli
from persona.config import Settings


def test_defaults_are_safe():
    s = Settings()
    assert s.host == "127.0.0.1" and s.port == 8000 and s.llm_provider == "local"


def test_toml_file_then_env_vars(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('port = 9001\nllm_provider = "openai"\ntemperature = 0.2\n')
    monkeypatch.setenv("PERSONA_CONFIG_FILE", str(config))
    s = Settings()
    assert (s.port, s.llm_provider, s.temperature) == (9001, "openai", 0.2)
    monkeypatch.setenv("PERSONA_PORT", "9002")
    monkeypatch.setenv("PERSONA_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    s = Settings()
    assert s.port == 9002 and s.llm_base_url == "http://127.0.0.1:11434/v1"
    assert s.temperature == 0.2  # still from the file


def test_openai_api_key_is_read_and_never_printed(monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret-value")
    s = Settings()
    assert s.llm_api_key is not None
    assert s.llm_api_key.get_secret_value() == "sk-test-very-secret-value"
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "very-secret" not in out
    printed = json.loads(out)
    assert printed["llm_api_key"] == "****"
    assert printed["config_hash"] == Settings().config_hash()
    monkeypatch.setenv("PERSONA_LLM_API_KEY", "sk-persona-key")
    assert Settings().llm_api_key.get_secret_value() == "sk-persona-key"


def test_config_hash_covers_behaviour_not_placement(tmp_path, monkeypatch):
    base = Settings().config_hash()
    assert Settings(temperature=0.1).config_hash() != base
    assert Settings(memory_top_k=2).config_hash() != base
    assert Settings(port=1234, db_path=tmp_path / "x.db").config_hash() == base
    assert Settings(llm_api_key="other").config_hash() == base


def test_config_hash_covers_prompt_templates(tmp_path, monkeypatch):
    from persona import config as config_module

    base = Settings().config_hash()
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for p in config_module.PROMPTS_DIR.glob("*.j2"):
        (prompts / p.name).write_text(p.read_text())
    monkeypatch.setattr(config_module, "PROMPTS_DIR", prompts)
    assert Settings().config_hash() == base
    (prompts / "system.j2").write_text("You are someone else.")
    assert Settings().config_hash() != base
