"""The prompt templates the speaker renders, loaded once; their sources feed config_hash."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jinja2 import DictLoader, Environment, StrictUndefined

from persona.config import PROMPTS_DIR


@dataclass(frozen=True)
class PromptSet:
    """Every `*.j2` prompt of a directory: the exact text loaded, and a Jinja env over it.

    The environment renders from the loaded sources, never from disk again, so what
    `config_hash` covers is exactly what the model is shown.
    """

    sources: Mapping[str, str]
    env: Environment

    @classmethod
    def load(cls, directory: Path | None = None) -> PromptSet:
        """Read the prompt templates of `directory` (default: the package's prompts)."""
        folder = directory or PROMPTS_DIR
        sources = {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(folder).glob("*.j2"))}
        # Prompts are plain text for the model, not HTML: no autoescaping here.
        env = Environment(
            loader=DictLoader(sources),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )
        return cls(MappingProxyType(sources), env)

    def render(self, name: str, **context: Any) -> str:
        """Render one template, stripped."""
        return self.env.get_template(name).render(**context).strip()
