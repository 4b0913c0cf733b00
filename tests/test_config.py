"""Configuration: defaults, TOML sections, env vars, legacy flat names; masking; config_hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from persona import cli
from persona.config import LEGACY_NAMES, PROMPTS_DIR, Settings, mask_url, url_credentials
from persona.pipeline.prompts import PromptSet

PROMPTS = {"system.j2": "You are {{ persona.name }}.", "turn_context.j2": "{{ memories }}"}


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """Write the TOML config file the settings read."""
    path = tmp_path / "config.toml"
    monkeypatch.setenv("PERSONA_CONFIG_FILE", str(path))

    def write(text: str) -> None:
        path.write_text(text, encoding="utf-8")

    return write


def test_defaults_are_safe():
    s = Settings()
    assert (s.host, s.port, s.llm.provider, s.llm.api_key) == ("127.0.0.1", 8000, "local", None)
    # Unset: the backend's defaults for its model (Backend.default_gen).
    assert (s.generation.temperature, s.generation.max_tokens) == (None, None)
    assert s.llm.local_model_path is None
    assert s.perception.use_classifier is False
    assert s.perception.safety_override_threshold == 0.6
    assert (s.memory.top_k, s.memory.fts_candidates, s.memory.recent_candidates) == (6, 50, 0)
    assert (s.gating.history_turns, s.gating.carry_bonus) == (12, 0.05)
    assert s.llm.context_window is None  # the backend's own: the local model's length
    assert (s.metacognition.reward_ema, s.metacognition.novelty_window) == (0.3, 20)
    assert s.relationship.affinity_rate == 0.2


def test_toml_sections_then_nested_env_vars(config_file, monkeypatch):
    config_file(
        'port = 9001\n[llm]\nprovider = "openai"\n'
        "[generation]\ntemperature = 0.2\n[memory]\ntop_k = 3\n"
    )
    s = Settings()
    assert (s.port, s.llm.provider, s.generation.temperature, s.memory.top_k) == (
        9001,
        "openai",
        0.2,
        3,
    )
    monkeypatch.setenv("PERSONA_PORT", "9002")
    monkeypatch.setenv("PERSONA_LLM__BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("PERSONA_MEMORY__TOP_K", "5")
    s = Settings()
    assert (s.port, s.llm.base_url, s.memory.top_k) == (9002, "http://127.0.0.1:11434/v1", 5)
    # Sections merge key by key: what the environment does not set still comes from the file.
    assert s.llm.provider == "openai" and s.generation.temperature == 0.2


def test_init_kwargs_beat_env_and_merge_with_it(monkeypatch):
    monkeypatch.setenv("PERSONA_MEMORY__TOP_K", "5")
    monkeypatch.setenv("PERSONA_MEMORY__FTS_CANDIDATES", "7")
    s = Settings(memory={"top_k": 1})
    assert (s.memory.top_k, s.memory.fts_candidates) == (1, 7)


# Legacy env name, raw value, where it lands, parsed value: written out here, not derived
# from LEGACY_NAMES, so a wrong row in that table fails.
LEGACY_ENV = [
    ("PERSONA_LLM_PROVIDER", "openai", "llm.provider", "openai"),
    ("PERSONA_LLM_BASE_URL", "http://h:1/v1", "llm.base_url", "http://h:1/v1"),
    ("PERSONA_NARRATIVE_MODEL", "llama3.2", "llm.narrative_model", "llama3.2"),
    ("PERSONA_CLASSIFIER_MODEL", "qwen", "llm.classifier_model", "qwen"),
    ("PERSONA_LLM_TIMEOUT_S", "30", "llm.timeout_s", 30.0),
    ("PERSONA_LOCAL_N_CTX", "4096", "llm.context_window", 4096),
    ("PERSONA_LOCAL_N_THREADS", "3", "llm.local_n_threads", 3),
    ("PERSONA_LOCAL_MODEL_PATH", "/models/q.gguf", "llm.local_model_path", Path("/models/q.gguf")),
    ("PERSONA_TEMPERATURE", "0.1", "generation.temperature", 0.1),
    ("PERSONA_MAX_TOKENS", "99", "generation.max_tokens", 99),
    # Both old context settings became the one llm.context_window (set alike here).
    ("PERSONA_CONTEXT_TOKENS", "4096", "llm.context_window", 4096),
    ("PERSONA_HISTORY_TURNS", "4", "gating.history_turns", 4),
    ("PERSONA_MEMORY_TOP_K", "2", "memory.top_k", 2),
    ("PERSONA_MEMORY_RECENCY_HALF_LIFE_H", "12", "memory.recency_half_life_h", 12.0),
    ("PERSONA_MEMORY_WEIGHT_LEXICAL", "0.5", "memory.weight_lexical", 0.5),
    ("PERSONA_MEMORY_WEIGHT_RECENCY", "0.3", "memory.weight_recency", 0.3),
    ("PERSONA_MEMORY_WEIGHT_IMPORTANCE", "0.2", "memory.weight_importance", 0.2),
    ("PERSONA_SAFETY_OVERRIDE_THRESHOLD", "0.9", "perception.safety_override_threshold", 0.9),
    ("PERSONA_PERCEPTION_USE_CLASSIFIER", "true", "perception.use_classifier", True),
    ("PERSONA_CLASSIFIER_TIMEOUT_S", "5", "perception.classifier_timeout_s", 5.0),
    ("PERSONA_CLASSIFIER_RETRIES", "3", "perception.classifier_retries", 3),
    ("PERSONA_ALLOWED_HOSTS", "a.lan, b.lan", "server.allowed_hosts", ["a.lan", "b.lan"]),
]


def _get(settings: Settings, dotted: str) -> object:
    section, field = dotted.split(".")
    return getattr(getattr(settings, section), field)


def test_legacy_flat_env_names_still_work(monkeypatch):
    for name, raw, _, _ in LEGACY_ENV:
        monkeypatch.setenv(name, raw)
    s = Settings()
    assert {dotted: _get(s, dotted) for _, _, dotted, _ in LEGACY_ENV} == {
        dotted: value for _, _, dotted, value in LEGACY_ENV
    }


def test_every_legacy_name_is_covered_and_lands_on_a_real_field():
    # The secrets are checked on their own (a SecretStr does not compare by value).
    assert {name.removeprefix("PERSONA_").lower() for name, *_ in LEGACY_ENV} | {
        "llm_api_key",
        "access_token",
        "operator_key",
    } == set(LEGACY_NAMES)
    targets = list(LEGACY_NAMES.values())
    # Only the two old context lengths share a home: they could disagree, now they can't.
    shared = [t for t in set(targets) if targets.count(t) > 1]
    assert shared == [("llm", "context_window")] and len(set(targets)) == len(targets) - 1
    for section, field in targets:
        section_model = Settings.model_fields[section].annotation
        assert isinstance(section_model, type) and issubclass(section_model, BaseModel)
        assert field in section_model.model_fields


def test_legacy_flat_toml_keys_still_work(config_file):
    config_file(
        'llm_provider = "openai"\nmemory_top_k = 3\ntemperature = 0.2\n'
        'perception_use_classifier = true\nllm_base_url = "http://h:1/v1"\n'
        '[llm]\nnarrative_model = "llama3.2"\n'
    )
    s = Settings()
    assert (s.llm.provider, s.llm.base_url, s.llm.narrative_model) == (
        "openai",
        "http://h:1/v1",
        "llama3.2",
    )
    assert (s.memory.top_k, s.generation.temperature, s.perception.use_classifier) == (
        3,
        0.2,
        True,
    )


def test_nested_names_beat_legacy_ones(config_file, monkeypatch):
    # In one TOML file, the section wins over the flat key.
    config_file("memory_top_k = 3\n[memory]\ntop_k = 4\n")
    assert Settings().memory.top_k == 4
    # Any env var beats the file, a legacy one included.
    monkeypatch.setenv("PERSONA_MEMORY_TOP_K", "2")
    assert Settings().memory.top_k == 2
    # In the environment, the nested name wins over the legacy one.
    monkeypatch.setenv("PERSONA_MEMORY__TOP_K", "1")
    assert Settings().memory.top_k == 1


def test_openai_api_key_is_read_and_never_printed(monkeypatch, capsys):
    assert cli.main(["config"]) == 0
    assert json.loads(capsys.readouterr().out)["llm"]["api_key"] is None

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret-value")
    s = Settings()
    assert s.llm.api_key is not None
    assert s.llm.api_key.get_secret_value() == "sk-test-very-secret-value"
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "very-secret" not in out
    printed = json.loads(out)
    assert printed["llm"]["api_key"] == "****"
    assert printed["memory"]["top_k"] == 6 and printed["port"] == 8000
    assert printed["config_hash"] == s.config_hash(PromptSet.load().sources)

    monkeypatch.setenv("PERSONA_LLM_API_KEY", "sk-persona-key")
    assert Settings().llm.api_key.get_secret_value() == "sk-persona-key"
    monkeypatch.setenv("PERSONA_LLM__API_KEY", "sk-nested-key")
    assert Settings().llm.api_key.get_secret_value() == "sk-nested-key"


def test_config_masks_url_credentials_and_whole_secrets(monkeypatch, capsys):
    monkeypatch.setenv("PERSONA_LLM__BASE_URL", "http://ada:pa%40ss-w0rd@llm.lan:8080/v1")
    monkeypatch.setenv("PERSONA_LLM__API_KEY", "x")
    monkeypatch.setenv("PERSONA_ACCESS_TOKEN", "tok-very-secret-0123")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out)
    assert printed["llm"]["base_url"] == "http://****@llm.lan:8080/v1"
    assert printed["llm"]["api_key"] == "****"  # the whole value, however short
    assert printed["server"]["access_token"] == "****"
    for secret in ("ada", "pa%40ss", "pa@ss", "w0rd", "tok-very-secret-0123"):
        assert secret not in out, secret
    # A one-letter key masks only itself: every other value is printed as it is.
    assert printed["llm"]["narrative_model"] == "SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("url", "masked", "bare", "password"),
    [
        ("http://user:pass@host/v1", "http://****@host/v1", "http://host/v1", "pass"),
        ("https://tok@h:1/v1?a=b", "https://****@h:1/v1?a=b", "https://h:1/v1?a=b", None),
        ("http://u:p%40s@[::1]:80/v1", "http://****@[::1]:80/v1", "http://[::1]:80/v1", "p@s"),
        ("http://host/v1?", "http://host/v1?", "http://host/v1?", None),
        ("http://host/a@b", "http://host/a@b", "http://host/a@b", None),  # @ in the path
        ("persona.lan", "persona.lan", "persona.lan", None),  # not a URL
    ],
)
def test_url_user_info_is_masked_and_split_off(url, masked, bare, password):
    assert mask_url(url) == masked
    assert url_credentials(url) == (bare, password)


def test_config_hash_covers_behaviour_not_placement(tmp_path):
    base = Settings().config_hash(PROMPTS)
    assert Settings().config_hash(PROMPTS) == base
    for behaviour in (
        {"generation": {"temperature": 0.1}},
        {"memory": {"top_k": 2}},
        {"gating": {"carry_bonus": 0.5}},
        {"metacognition": {"reward_ema": 0.5}},
        {"relationship": {"affinity_rate": 0.5}},
        {"perception": {"use_classifier": True}},
        {"llm": {"narrative_model": "other", "base_url": "http://h:1/v1"}},
        {"default_persona_file": "personas/other.toml"},
    ):
        assert Settings(**behaviour).config_hash(PROMPTS) != base, behaviour
    placement = Settings(
        port=1234,
        host="0.0.0.0",
        db_path=tmp_path / "x.db",
        data_dir=tmp_path,
        llm={"api_key": "sk-other"},
    )
    assert placement.config_hash(PROMPTS) == base


def test_config_hash_covers_prompt_text(tmp_path):
    s = Settings()
    assert s.config_hash(PROMPTS) != s.config_hash({**PROMPTS, "system.j2": "You are Bob."})
    assert s.config_hash(PROMPTS) != s.config_hash({**PROMPTS, "extra.j2": ""})

    base = s.config_hash(PromptSet.load().sources)
    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, prompts)
    assert s.config_hash(PromptSet.load(prompts).sources) == base
    (prompts / "system.j2").write_text("You are someone else.", encoding="utf-8")
    assert s.config_hash(PromptSet.load(prompts).sources) != base


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ('colour = "blue"\n', "colour"),
        ("[memory]\ntopk = 3\n", "memory.topk"),
        ("[memroy]\ntop_k = 3\n", "memroy"),
    ],
)
def test_unknown_toml_keys_are_refused(config_file, toml, where):
    config_file(toml)
    with pytest.raises(ValidationError) as refused:
        Settings()
    errors = refused.value.errors()
    assert [(".".join(map(str, e["loc"])), e["type"]) for e in errors] == [
        (where, "extra_forbidden")
    ]
    assert where in str(refused.value) and "Extra inputs are not permitted" in str(refused.value)


def test_unknown_nested_env_key_is_refused(monkeypatch):
    monkeypatch.setenv("PERSONA_MEMORY__TOPK", "3")
    with pytest.raises(ValidationError, match=r"memory\.topk"):
        Settings()


@pytest.mark.parametrize(
    ("section", "field", "bad", "good"),
    [
        ("llm", "timeout_s", 0, 1),
        ("llm", "context_window", 255, 256),
        ("generation", "temperature", 2.1, 2.0),
        ("generation", "max_tokens", 0, 1),
        ("generation", "max_tokens", 4097, 4096),
        ("perception", "classifier_timeout_s", 0, 0.1),
        ("perception", "classifier_retries", 6, 5),
        ("perception", "safety_override_threshold", 1.1, 1.0),
        ("memory", "top_k", -1, 0),
        ("memory", "recency_half_life_h", 0, 0.5),
        ("memory", "fts_candidates", 0, 1),
        ("memory", "recent_candidates", -1, 0),
        ("gating", "history_turns", -1, 0),
        ("gating", "carry_bonus", 1.01, 1.0),
        ("gating", "carry_bonus", -0.01, 0.0),
        ("metacognition", "reward_ema", 0, 0.01),
        ("metacognition", "reward_ema", 1.01, 1.0),
        ("metacognition", "novelty_window", 0, 1),
        ("relationship", "affinity_rate", 0, 0.01),
        ("relationship", "affinity_rate", 1.01, 1.0),
    ],
)
def test_bounds_are_enforced(section, field, bad, good):
    assert getattr(getattr(Settings(**{section: {field: good}}), section), field) == good
    with pytest.raises(ValidationError, match=rf"{section}\.{field}"):
        Settings(**{section: {field: bad}})


def test_the_subjectivity_weights_must_sum_to_one():
    moved = {"weight_c": 0.2, "weight_n": 0.2}  # 0.1 from C to N: still 1
    sub = Settings(metacognition={"subjectivity": moved}).metacognition.subjectivity
    assert (sub.weight_c, sub.weight_n) == (0.2, 0.2)
    with pytest.raises(ValidationError, match=r"sum to 1\.1"):
        Settings(metacognition={"subjectivity": {"weight_n": 0.2}})


def test_legacy_names_keep_their_bounds(monkeypatch):
    monkeypatch.setenv("PERSONA_CONTEXT_TOKENS", "100")
    with pytest.raises(ValidationError, match=r"llm\.context_window"):
        Settings()


def test_access_token_and_allowed_hosts_read_from_their_documented_names(monkeypatch):
    monkeypatch.setenv("PERSONA_ACCESS_TOKEN", "tok-123-long-enough-token")
    monkeypatch.setenv("PERSONA_ALLOWED_HOSTS", '["persona.lan"]')
    s = Settings()
    assert s.server.access_token is not None
    assert s.server.access_token.get_secret_value() == "tok-123-long-enough-token"
    assert s.server.allowed_hosts == ["persona.lan"]


def test_config_hash_names_the_server_but_not_the_password_in_its_url():
    def hashed(url: str) -> str:
        return Settings.model_validate({"llm": {"base_url": url}}).config_hash({})

    assert hashed("http://u:one@h:1/v1") == hashed("http://u:two@h:1/v1")
    assert hashed("http://u:one@h:1/v1") != hashed("http://u:one@other:1/v1")


@pytest.mark.parametrize("token", [" ", "x", "short-token-15c", " " * 20])
def test_a_short_or_blank_access_token_is_refused(monkeypatch, token):
    # 15 characters and anything blank would guard nothing; 16 is the shortest accepted.
    monkeypatch.setenv("PERSONA_ACCESS_TOKEN", token)
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings()


def test_an_empty_access_token_means_none_and_16_characters_is_enough(monkeypatch):
    monkeypatch.setenv("PERSONA_ACCESS_TOKEN", "")
    assert Settings().server.access_token is not None  # set, but empty: no token
    monkeypatch.setenv("PERSONA_ACCESS_TOKEN", "a" * 16)
    assert Settings().server.access_token.get_secret_value() == "a" * 16


@pytest.mark.parametrize("password", ["s3cr#t", "s3cr/t", "s3cr?t", "p@ss"])
def test_url_passwords_with_delimiters_are_masked_whole(password):
    url = f"http://me:{password}@host:8080/v1"
    shown = json.dumps(Settings.model_validate({"llm": {"base_url": url}}).masked())
    assert password not in shown and "s3cr" not in shown
    assert "http://****@host:8080/v1" in shown
