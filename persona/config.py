"""Settings: defaults, then the config file, then `PERSONA_*` environment variables.

Where files live depends on how persona runs. From a checkout: data (the DB) in `data/`,
the config file `data/config.toml`. Installed from a wheel: the per-user data folder
(`$XDG_DATA_HOME/persona`, `~/.local/share/persona`; platformdirs' choice elsewhere) and
the per-user config file (`$XDG_CONFIG_HOME/persona/config.toml`), never the install
folder. `PERSONA_DATA_DIR`, `PERSONA_DB_PATH` and `PERSONA_CONFIG_FILE` win over both.

Each pipeline stage reads its own section (`settings.memory.top_k`). Sections are set in
the TOML file as tables (`[memory]`) and in the environment with a double underscore
(`PERSONA_MEMORY__TOP_K=3`). The flat names from before the sections (`memory_top_k`,
`PERSONA_LLM_PROVIDER`, `OPENAI_API_KEY`) still work; a nested name wins over a flat one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import unquote

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from persona import resources

PROMPTS_DIR = resources.prompts_dir()
ENV_PREFIX = "PERSONA_"

# Flat names from before the sections, as TOML keys or after ENV_PREFIX, and where each
# lives now. The one table both the environment and the TOML file are read through.
LEGACY_NAMES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "llm_provider": ("llm", "provider"),
        "llm_base_url": ("llm", "base_url"),
        "llm_api_key": ("llm", "api_key"),
        "narrative_model": ("llm", "narrative_model"),
        "classifier_model": ("llm", "classifier_model"),
        "llm_timeout_s": ("llm", "timeout_s"),
        "local_n_ctx": ("llm", "context_window"),
        "local_n_threads": ("llm", "local_n_threads"),
        # Not from 0.1.0, but flat is the name users expect: PERSONA_LOCAL_MODEL_PATH.
        "local_model_path": ("llm", "local_model_path"),
        "temperature": ("generation", "temperature"),
        "max_tokens": ("generation", "max_tokens"),
        "perception_use_classifier": ("perception", "use_classifier"),
        "classifier_timeout_s": ("perception", "classifier_timeout_s"),
        "classifier_retries": ("perception", "classifier_retries"),
        "safety_override_threshold": ("perception", "safety_override_threshold"),
        "memory_top_k": ("memory", "top_k"),
        "memory_recency_half_life_h": ("memory", "recency_half_life_h"),
        "memory_weight_lexical": ("memory", "weight_lexical"),
        "memory_weight_recency": ("memory", "weight_recency"),
        "memory_weight_importance": ("memory", "weight_importance"),
        "context_tokens": ("llm", "context_window"),
        "history_turns": ("gating", "history_turns"),
        # The names the security docs use: PERSONA_ACCESS_TOKEN, PERSONA_ALLOWED_HOSTS.
        "access_token": ("server", "access_token"),
        "operator_key": ("server", "operator_key"),
        "allowed_hosts": ("server", "allowed_hosts"),
    }
)

# Settings that say where things run, not how the persona behaves: left out of config_hash.
_NOT_BEHAVIOUR: dict[str, Any] = {
    "data_dir": True,
    "db_path": True,
    "host": True,
    "port": True,
    "server": True,
    # Deadlines bound how long a call may take, not what the persona says.
    "llm": {"api_key": True, "first_token_timeout_s": True, "turn_timeout_s": True},
}

_SECTION = ConfigDict(extra="forbid", frozen=True)


class LLMSettings(BaseModel):
    """Which backend generates text, and how it is reached."""

    model_config = _SECTION

    provider: Literal["local", "openai", "scripted"] = "local"
    base_url: str | None = None
    api_key: SecretStr | None = None
    narrative_model: str = "SmolLM2-135M-Instruct"
    classifier_model: str = "SmolLM2-135M-Instruct"
    # A total deadline per model call (connect to last token), not a per-read timeout.
    timeout_s: float = Field(default=120.0, gt=0)
    # How long a call may wait for its first token (a server that only sends keep-alives).
    first_token_timeout_s: float = Field(default=60.0, gt=0)
    # A deadline for a whole turn: every stage, classifier call and the reply.
    turn_timeout_s: float = Field(default=300.0, gt=0)
    # The one context length (prompt + reply, tokens). `local` loads the model with it
    # (unset: the model's own trained length, at most 4096); other backends budget with
    # it (unset: the backend's default).
    context_window: int | None = Field(default=None, ge=256)
    local_n_threads: int | None = None
    # A GGUF file for `local` instead of the packaged SmolLM2-135M (chat template and
    # trained context length are read from the file).
    local_model_path: Path | None = None


class GenerationSettings(BaseModel):
    """Sampling of the speaker's reply; unset: the backend's defaults for its model
    (`Backend.default_gen`). A request may override both."""

    model_config = _SECTION

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)


class PerceptionSettings(BaseModel):
    """How the user's message is read: intent, risk, the optional classifier call."""

    model_config = _SECTION

    use_classifier: bool = False
    classifier_timeout_s: float = Field(default=20.0, gt=0)
    classifier_retries: int = Field(default=1, ge=0, le=5)
    # The "escalated" flag, which is the safety override (crisis handling).
    safety_override_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    safety_intervened_threshold: float = Field(default=0.35, ge=0.0, le=1.0)
    safety_blocked_threshold: float = Field(default=0.85, ge=0.0, le=1.0)
    ooc_marker: str = Field(default="((", min_length=1)
    passes: int = Field(default=3, ge=1, le=10)


class MemorySettings(BaseModel):
    """Memory retrieval: ranked lists fused by weighted reciprocal rank, best top_k kept
    (docs/memory.md)."""

    model_config = _SECTION

    top_k: int = Field(default=6, ge=0)
    recency_half_life_h: float = Field(default=72.0, gt=0)
    # How the lists are fused: "score" (weighted scores, lexical-led) or "rrf" (weighted
    # reciprocal rank). docs/memory.md has both formulas and what each measured.
    fusion: Literal["score", "rrf"] = "score"
    weight_lexical: float = Field(default=1.0, ge=0.0, description="rrf only")
    weight_recency: float = Field(default=0.02, ge=0.0)
    weight_importance: float = Field(default=0.02, ge=0.0)
    weight_entity: float = Field(default=0.5, ge=0.0)
    rrf_k: int = Field(default=60, ge=1)
    # BM25 weight of the words around a memory (its `context` column; its own words: 1).
    weight_context: float = Field(default=0.3, ge=0.0, le=1.0)
    fts_candidates: int = Field(default=50, ge=1)
    # Newest memories added as candidates without a lexical match (belief revision widens
    # it). 0 by default: unrelated recent memories crowded out relevant ones.
    recent_candidates: int = Field(default=0, ge=0)
    # A term matching more memories than this is dropped from the query (too common).
    max_term_matches: int = Field(default=2000, ge=1)
    # Dense vectors (off by default: the offline default has no embedding model). With a
    # model named, memories are embedded after the reply and the message before retrieval;
    # the `openai` backend asks its server's /embeddings, `local` loads this GGUF path.
    embedding_model: str | None = None
    weight_dense: float = Field(default=1.0, ge=0.0)
    dense_candidates: int = Field(default=50, ge=1)


class GatingSettings(BaseModel):
    """What fits into the prompt: the token budget and how it is shared."""

    model_config = _SECTION

    history_turns: int = Field(default=12, ge=0)
    # Priority bonus for memories the previous turn's workspace held.
    carry_bonus: float = Field(default=0.05, ge=0.0, le=1.0)
    # The workspace competition (pipeline/competition.py): K winners after the iterations.
    workspace_k: int = Field(default=7, ge=0)
    iterations: int = Field(default=8, ge=0)
    excitation: float = Field(default=0.3, ge=0.0, lt=1.0)
    inhibition: float = Field(default=0.25, ge=0.0)
    similarity: float = Field(default=0.5, gt=0.0, le=1.0)
    # A winner must end at least this active: a weak note is noise to a small model.
    min_activation: float = Field(default=0.25, ge=0.0, le=1.0)
    # Soft limit: the notes may take at most this share of the room history and notes share.
    notes_share: float = Field(default=0.5, gt=0.0, le=1.0)


class SleepSettings(BaseModel):
    """Sleep consolidation (docs/memory.md): when it runs and how it groups."""

    model_config = _SECTION

    # Inactivity: a persona idle this long (chat clock) sleeps at the next chance.
    idle_after_h: float = Field(default=6.0, gt=0)
    # Context pressure: unconsolidated L1 memories over this count trigger a sleep.
    pressure_l1: int = Field(default=400, ge=1)
    min_group: int = Field(default=3, ge=2)
    max_chars: int = Field(default=600, ge=80)
    # "extractive" needs no model; "narrative" asks the narrative model to word each
    # digest (and falls back to the extractive text on any model failure).
    method: Literal["extractive", "narrative"] = "extractive"
    # How often (wall seconds) the running server checks whether a sleep is due; 0: never
    # on its own (`persona sleep` and POST /persona/sleep still run one).
    check_every_s: float = Field(default=60.0, ge=0.0)


class DialogueSettings(BaseModel):
    """The dialogue state machine's thresholds (docs/control-plane.md gives the reasons)."""

    model_config = _SECTION

    # A state's smoothed score must reach `enter` to enter it and fall below `exit` to leave.
    enter: float = Field(default=0.45, gt=0.0, le=1.0)
    exit: float = Field(default=0.25, ge=0.0, le=1.0)
    # Turns a state holds before the smoothed scores may move it.
    min_dwell: int = Field(default=2, ge=1)
    # One clear message (raw state score, lead over the next state) enters its state at once.
    dominant: float = Field(default=0.70, gt=0.0, le=1.0)
    dominant_margin: float = Field(default=0.40, ge=0.0, le=1.0)
    # A dominant message may not return to the state left within this many turns.
    return_block: int = Field(default=4, ge=0)
    # S6_SAFETY holds this many turns after the last override, then leaves only below the risk.
    safety_dwell: int = Field(default=3, ge=0)
    safety_exit_risk: float = Field(default=0.35, ge=0.0, le=1.0)
    # At or below this reward average replies turn careful: shorter, with a style hint.
    careful_reward: float = Field(default=-0.2, ge=-1.0, le=0.0)
    careful_tokens: float = Field(default=0.6, gt=0.0, le=1.0)


class GlobalStateSettings(BaseModel):
    """The global state's thresholds (NORMAL / OVERLOADED / REFLECTIVE / SAFETY_LOCK)."""

    model_config = _SECTION

    # OVERLOADED: the message's share of the prompt room enters at `overload_enter` and
    # holds while it is at or above `overload_exit`.
    overload_enter: float = Field(default=0.5, gt=0.0, le=1.0)
    overload_exit: float = Field(default=0.3, ge=0.0, le=1.0)
    # REFLECTIVE on low coherence: smoothed C below `reflective_enter` (after
    # `reflective_after` turns), holding until it is back at `reflective_exit`.
    reflective_enter: float = Field(default=0.1, ge=0.0, le=1.0)
    reflective_exit: float = Field(default=0.2, ge=0.0, le=1.0)
    reflective_after: int = Field(default=3, ge=0)
    # OVERLOADED and REFLECTIVE hold at least this many turns once entered.
    min_dwell: int = Field(default=2, ge=1)


class SubjectivitySettings(BaseModel):
    """The subjectivity mode's score weights and bands (S0..S3)."""

    model_config = _SECTION

    # Score = weighted telemetry (weights sum to 1).
    weight_c: float = Field(default=0.3, ge=0.0, le=1.0)
    weight_n: float = Field(default=0.1, ge=0.0, le=1.0)
    weight_m: float = Field(default=0.25, ge=0.0, le=1.0)
    weight_s: float = Field(default=0.15, ge=0.0, le=1.0)
    weight_r: float = Field(default=0.2, ge=0.0, le=1.0)
    # Weight of the newest turn in the score's moving average.
    smoothing: float = Field(default=0.5, gt=0.0, le=1.0)
    # Going up needs the band's threshold, going down falls `hysteresis` below it.
    reflective: float = Field(default=0.45, gt=0.0, le=1.0)
    autonomous: float = Field(default=0.65, gt=0.0, le=1.0)
    hysteresis: float = Field(default=0.05, ge=0.0, le=0.5)
    # S3_SAFE below `safe_enter` (or under SAFETY_LOCK); left at `safe_exit` after min_dwell.
    safe_enter: float = Field(default=0.2, ge=0.0, le=1.0)
    safe_exit: float = Field(default=0.3, ge=0.0, le=1.0)
    min_dwell: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> SubjectivitySettings:
        total = self.weight_c + self.weight_n + self.weight_m + self.weight_s + self.weight_r
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"the subjectivity weights must sum to 1 (they sum to {total:g})")
        return self


class FailureSettings(BaseModel):
    """Failure detection: identity health, collapse level and auto-recovery."""

    model_config = _SECTION

    # A "lost" turn: coherence below `low_coherence` and memory below `low_memory`.
    low_coherence: float = Field(default=0.15, ge=0.0, le=1.0)
    low_memory: float = Field(default=0.2, ge=0.0, le=1.0)
    # Runs that count fully toward the collapse risk.
    lost_run: int = Field(default=3, ge=1)
    degenerate_run: int = Field(default=2, ge=1)
    # At this collapse level the dialogue state is forced to S4_META; at 4 the mode is S3_SAFE.
    recovery_level: int = Field(default=3, ge=1, le=4)
    # Below this health the speaker is told to disclose uncertainty about the past.
    disclose_health: float = Field(default=0.5, ge=0.0, le=1.0)


class MetacognitionSettings(BaseModel):
    """The turn's self-assessment signals."""

    model_config = _SECTION

    reward_ema: float = Field(default=0.3, gt=0.0, le=1.0)
    novelty_window: int = Field(default=20, ge=1)
    # Weight of the newest turn in the smoothed telemetry (per chat).
    telemetry_smoothing: float = Field(default=0.5, gt=0.0, le=1.0)
    dialogue: DialogueSettings = Field(default_factory=DialogueSettings)
    global_state: GlobalStateSettings = Field(default_factory=GlobalStateSettings)
    subjectivity: SubjectivitySettings = Field(default_factory=SubjectivitySettings)
    failure: FailureSettings = Field(default_factory=FailureSettings)
    # Below this turn confidence the turn counts as uncertain (docs/control-plane.md).
    revision_threshold: float = Field(default=0.4, ge=0.0, le=1.0)


class RelationshipSettings(BaseModel):
    """The persona-user relationship."""

    model_config = _SECTION

    # How fast the affinity follows the reward signal.
    affinity_rate: float = Field(default=0.2, gt=0.0, le=1.0)


class IdentitySettings(BaseModel):
    """Traits, values and temporal identity (docs/control-plane.md, "Traits and values")."""

    model_config = _SECTION

    # Weight of this turn's reading in the short-term trait state (an EMA).
    trait_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    # How far one reward moves the per-user baseline toward (+1) or away from (-1) the state.
    baseline_rate: float = Field(default=0.05, gt=0.0, le=1.0)
    # Value learning rate before inertia and the stability budget scale it.
    value_rate: float = Field(default=0.1, gt=0.0, le=1.0)
    # 0..1: how much of each value change the identity resists.
    inertia: float = Field(default=0.5, ge=0.0, lt=1.0)
    # Stability budget spent per unit of value drift, and by one safety shock.
    drift_cost: float = Field(default=2.0, ge=0.0)
    shock_cost: float = Field(default=0.3, ge=0.0, le=1.0)
    # Budget regained per hour of chat time between turns.
    recover_per_hour: float = Field(default=0.1, ge=0.0)
    # Phases by budget, and the turns a shock locks drift.
    reconstruction_below: float = Field(default=0.5, ge=0.0, le=1.0)
    degraded_below: float = Field(default=0.2, ge=0.0, le=1.0)
    shock_lock_turns: int = Field(default=2, ge=0)


# The shortest access token accepted: a one-character login would guard nothing.
MIN_TOKEN_CHARS = 16


class ServerSettings(BaseModel):
    """How the web service guards itself: who may reach it and how much it accepts."""

    model_config = _SECTION

    # Required on every route when set (bearer header or the login cookie); required to
    # bind anything but loopback.
    access_token: SecretStr | None = None
    # Required (header x-persona-operator-key) by POST /persona/operator/override;
    # without it the endpoint answers 403.
    operator_key: SecretStr | None = None
    # Host header names accepted besides the loopback names (DNS-rebinding guard);
    # "*" accepts any (only sensible behind a proxy that checks Host itself).
    allowed_hosts: list[str] = Field(default_factory=list)
    # Bind a non-loopback address without an access token (logged loudly at start).
    insecure_expose: bool = False
    # Request bodies larger than this are refused with 413 before they are read.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Turns waiting or running per chat; more are refused with 429 and Retry-After.
    chat_queue_limit: int = Field(default=8, ge=1)
    # Turns waiting or running across all chats (a flood spread over many new chat ids);
    # more are refused with 429 too.
    turn_limit: int = Field(default=64, ge=1)
    # Turns running at once (model calls in flight); the others wait their turn, queued.
    concurrent_turns: int = Field(default=4, ge=1)
    # Events buffered per live stream; a subscriber further behind is dropped (it
    # reconnects and catches up from the log).
    subscriber_buffer: int = Field(default=1024, ge=16)
    # At shutdown, in-flight turns get this long before their model calls are cancelled
    # (and the turns recorded as failed).
    shutdown_grace_s: float = Field(default=5.0, ge=0)

    @field_validator("access_token")
    @classmethod
    def long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        """A token a guess cannot find: at least MIN_TOKEN_CHARS (empty means none)."""
        token = value.get_secret_value() if value is not None else ""
        if token and len(token.strip()) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"access_token must be at least {MIN_TOKEN_CHARS} characters"
                " (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def split_hosts(cls, value: Any) -> Any:
        """`a.lan,b.lan` or a JSON list, from the environment."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


def default_data_dir() -> Path:
    """`data/` of the checkout, else the per-user data folder (never site-packages)."""
    root = resources.checkout_root()
    if root is not None:
        return root / "data"
    return platformdirs.user_data_path("persona", appauthor=False)


def config_file() -> Path:
    """The TOML file read: $PERSONA_CONFIG_FILE, else the checkout's or the user's."""
    if path := os.environ.get("PERSONA_CONFIG_FILE"):
        return Path(path)
    root = resources.checkout_root()
    if root is not None:
        return root / "data" / "config.toml"
    # The user's config folder, not the data folder: the file may itself move data_dir.
    return platformdirs.user_config_path("persona", appauthor=False) / "config.toml"


def _db_in_data_dir(data: dict[str, Any]) -> Path:
    return Path(data.get("data_dir") or default_data_dir()) / "persona.db"


def nest_legacy(data: Mapping[str, Any]) -> dict[str, Any]:
    """Move legacy flat keys into their sections; a value already in the section wins."""
    out = {key: value for key, value in data.items() if key not in LEGACY_NAMES}
    for name, (section, field) in LEGACY_NAMES.items():
        if name not in data:
            continue
        nested = out.get(section, {})
        if not isinstance(nested, Mapping):
            out[name] = data[name]  # `llm = 3`: left for validation to refuse
            continue
        out[section] = {field: data[name], **nested}
    return out


class LegacyEnvSource(PydanticBaseSettingsSource):
    """`PERSONA_<legacy flat name>` and `OPENAI_API_KEY`, moved into their sections."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every name at once

    def __call__(self) -> dict[str, Any]:
        env = {key.lower(): value for key, value in os.environ.items()}
        prefix = ENV_PREFIX.lower()
        flat = {name: env[prefix + name] for name in LEGACY_NAMES if prefix + name in env}
        if "openai_api_key" in env:
            flat.setdefault("llm_api_key", env["openai_api_key"])
        return nest_legacy(flat)


class SectionedTomlSource(TomlConfigSettingsSource):
    """The TOML file, with legacy flat top-level keys moved into their sections."""

    def __call__(self) -> dict[str, Any]:
        return nest_legacy(super().__call__())


class Settings(BaseSettings):
    """Every setting of the process; behaviour-changing ones feed `config_hash`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    # Follows data_dir unless set itself.
    db_path: Path = Field(default_factory=_db_in_data_dir)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    default_persona_file: str = "personas/default.toml"

    llm: LLMSettings = Field(default_factory=LLMSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    perception: PerceptionSettings = Field(default_factory=PerceptionSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    gating: GatingSettings = Field(default_factory=GatingSettings)
    sleep: SleepSettings = Field(default_factory=SleepSettings)
    metacognition: MetacognitionSettings = Field(default_factory=MetacognitionSettings)
    relationship: RelationshipSettings = Field(default_factory=RelationshipSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: explicit kwargs, env vars (nested, then legacy flat
        # names), then the TOML file. Sources are deep-merged section by section.
        return (
            init_settings,
            env_settings,
            LegacyEnvSource(settings_cls),
            SectionedTomlSource(settings_cls, toml_file=config_file()),
        )

    def default_persona_path(self) -> Path:
        """The default persona's file: the user's copy in data_dir, else the bundled one."""
        own = self.data_dir / self.default_persona_file
        relative = PurePosixPath(self.default_persona_file)
        if own.is_file() or relative.parts[:1] != ("personas",):
            return own
        return resources.personas_dir().joinpath(*relative.parts[1:])

    def behaviour(self) -> dict[str, Any]:
        """The settings that change what the persona does, as plain JSON values."""
        data = self.model_dump(mode="json", exclude=_NOT_BEHAVIOUR)
        if data["llm"]["base_url"]:  # which server, not its password (a secret, rotated)
            data["llm"]["base_url"] = mask_url(data["llm"]["base_url"])
        return data

    def config_hash(self, prompts: Mapping[str, str]) -> str:
        """sha256 of the canonical JSON of behaviour settings plus the prompt templates."""
        canonical = json.dumps(
            {"settings": self.behaviour(), "prompts": dict(prompts)},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def masked(self) -> dict[str, Any]:
        """Every setting for display: secrets masked whole, credentials in URLs masked."""
        data = _mask_urls(self.model_dump(mode="json"))
        data["llm"]["api_key"] = MASK if self.llm.api_key else None
        data["server"]["access_token"] = MASK if self.server.access_token else None
        data["server"]["operator_key"] = MASK if self.server.operator_key else None
        return data


MASK = "****"
_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def _userinfo(url: str) -> tuple[str, str] | None:
    """(the URL without its user-info, the user-info), or None when it has none."""
    scheme = _HAS_SCHEME.match(url)
    if not scheme:
        return None
    # Up to the last "@", not urlsplit's netloc: an unencoded "#", "?" or "/" in a
    # password would end the netloc early and leave the rest in clear. But "@" may also
    # sit in a path ("http://host/a@b", "http://host:8080/a@b"): a candidate with a "/"
    # is user-info only when a ":" before that "/" is not followed by a port.
    rest = url[scheme.end() :]
    userinfo, at, hostpath = rest.rpartition("@")
    if not at:
        return None
    head = re.split(r"[/?#]", userinfo, maxsplit=1)[0]
    if head != userinfo and not re.fullmatch(r"[^:]*:(?!\d*$).*", head):
        return None  # the "@" is in the path, query or fragment
    return url[: scheme.end()] + hostpath, userinfo


def url_credentials(url: str) -> tuple[str, str | None]:
    """Split the user-info off a URL: (the URL without it, its password decoded or None).

    `http://user:pass@host/v1` gives (`http://host/v1`, `pass`); a URL without user-info
    comes back unchanged.
    """
    split = _userinfo(url)
    if split is None:
        return url, None
    bare, userinfo = split
    _, colon, password = userinfo.partition(":")
    return bare, unquote(password) if colon else None


def mask_url(url: str) -> str:
    """The URL with any user-info replaced by ****, the rest as given."""
    split = _userinfo(url)
    if split is None:
        return url
    scheme, _, rest = split[0].partition("://")
    return f"{scheme}://{MASK}@{rest}"


def _mask_urls(value: Any) -> Any:
    """Mask user-info in every URL-valued string of a dumped settings tree."""
    if isinstance(value, dict):
        return {key: _mask_urls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_urls(item) for item in value]
    if isinstance(value, str):
        return mask_url(value)
    return value


def get_settings(**overrides: Any) -> Settings:
    """Load settings from all sources; keyword overrides win (tests use them)."""
    return Settings(**overrides)
