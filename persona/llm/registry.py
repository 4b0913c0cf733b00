"""The built-in backends, in order, and the factory that picks one from settings."""

from __future__ import annotations

from collections.abc import Callable

from persona.config import Settings
from persona.llm.base import Backend


def _local(settings: Settings) -> Backend:
    from persona.llm.local import LocalBackend  # imports llama_cpp only when chosen

    return LocalBackend(settings)


def _openai(settings: Settings) -> Backend:
    from persona.llm.openai_backend import OpenAIBackend

    return OpenAIBackend(settings)


def _scripted(settings: Settings) -> Backend:
    from persona.llm.base import Deadlines
    from persona.llm.scripted import ScriptedBackend

    window = settings.llm.context_window or 2048
    return ScriptedBackend(context_window=window, deadlines=Deadlines.from_settings(settings.llm))


BACKENDS: tuple[tuple[str, Callable[[Settings], Backend]], ...] = (
    ("local", _local),
    ("openai", _openai),
    ("scripted", _scripted),
)


def make_backend(settings: Settings) -> Backend:
    """Build the backend named by `settings.llm.provider`; errors propagate, no fallback."""
    for name, factory in BACKENDS:
        if name == settings.llm.provider:
            return factory(settings)
    known = ", ".join(name for name, _ in BACKENDS)
    raise ValueError(f"unknown llm.provider {settings.llm.provider!r} (known: {known})")
