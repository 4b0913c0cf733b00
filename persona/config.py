"""Settings: defaults, then `data/config.toml`, then `PERSONA_*` environment variables."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "data" / "config.toml"

# Settings that say where things run, not how the persona behaves: left out of config_hash.
_NOT_BEHAVIOUR = {"db_path", "host", "port", "llm_api_key", "config_file", "data_dir"}


def _config_file() -> Path:
    return Path(os.environ.get("PERSONA_CONFIG_FILE", str(DEFAULT_CONFIG_FILE)))


class Settings(BaseSettings):
    """Every setting of the process; behaviour-changing ones feed `config_hash`."""

    model_config = SettingsConfigDict(env_prefix="PERSONA_", extra="forbid", populate_by_name=True)

    data_dir: Path = PROJECT_ROOT / "data"
    db_path: Path = PROJECT_ROOT / "data" / "persona.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    llm_provider: Literal["local", "openai", "scripted"] = "local"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("PERSONA_LLM_API_KEY", "OPENAI_API_KEY")
    )
    narrative_model: str = "SmolLM2-135M-Instruct"
    classifier_model: str = "SmolLM2-135M-Instruct"
    llm_timeout_s: float = Field(default=120.0, gt=0)
    local_n_ctx: int = Field(default=2048, ge=256)
    local_n_threads: int | None = None

    default_persona_file: str = "personas/default.toml"
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=200, ge=1, le=4096)
    context_tokens: int = Field(default=2048, ge=256)
    history_turns: int = Field(default=12, ge=0)
    memory_top_k: int = Field(default=6, ge=0)
    memory_recency_half_life_h: float = Field(default=72.0, gt=0)
    memory_weight_lexical: float = 0.6
    memory_weight_recency: float = 0.25
    memory_weight_importance: float = 0.15
    safety_override_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    perception_use_classifier: bool = False
    classifier_timeout_s: float = Field(default=20.0, gt=0)
    classifier_retries: int = Field(default=1, ge=0, le=5)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: explicit kwargs, env vars, then the TOML file.
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_config_file()),
        )

    def behaviour(self) -> dict[str, Any]:
        """The settings that change what the persona does, as plain JSON values."""
        data = self.model_dump(mode="json")
        return {k: v for k, v in sorted(data.items()) if k not in _NOT_BEHAVIOUR}

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of behaviour settings plus every prompt template."""
        prompts = {p.name: p.read_text(encoding="utf-8") for p in sorted(PROMPTS_DIR.glob("*.j2"))}
        canonical = json.dumps(
            {"settings": self.behaviour(), "prompts": prompts},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def masked(self) -> dict[str, Any]:
        """Every setting for display, with secrets masked."""
        data = self.model_dump(mode="json")
        data["llm_api_key"] = "****" if self.llm_api_key else None
        return data


def get_settings(**overrides: Any) -> Settings:
    """Load settings from all sources; keyword overrides win (tests use them)."""
    return Settings(**overrides)
