"""One contract every backend keeps: scripted always, local and openai on the real model.

The local and openai cases run SmolLM2-135M offline (openai through llama-cpp-python's
server on loopback); they are skipped, with the reason, only when those packages are absent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from helpers import skip_without_local_model
from pydantic import ValidationError

from persona.config import Settings
from persona.llm import make_backend
from persona.llm.base import Backend, ChatMessage, GenOptions
from persona.llm.registry import BACKENDS
from persona.llm.scripted import ScriptedBackend

BACKEND_NAMES = [
    "scripted",
    pytest.param("local", marks=[pytest.mark.slow, pytest.mark.local_model]),
    pytest.param("openai", marks=pytest.mark.slow),
]


def _local_backend() -> Backend:
    skip_without_local_model()
    from persona.llm.local import LocalBackend

    return LocalBackend(Settings.model_validate({"llm": {"provider": "local"}}))


@pytest_asyncio.fixture(params=BACKEND_NAMES)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "scripted":
        backend: Backend = ScriptedBackend()
    elif request.param == "local":
        backend = _local_backend()
    else:
        from persona.llm.openai_backend import OpenAIBackend

        base_url = request.getfixturevalue("llama_server")
        settings = {"llm": {"provider": "openai", "base_url": base_url}}
        backend = OpenAIBackend(Settings.model_validate(settings))
    yield backend
    await backend.aclose()


PROMPT = [ChatMessage(role="user", content="Write a short story about a lighthouse keeper.")]
GREEDY = GenOptions(temperature=0.0, max_tokens=24)


class TestBackendContract:
    """What the pipeline and the SSE route rely on, whichever backend is configured."""

    async def test_chunks_concatenate_to_full_text(self, backend: Backend) -> None:
        response = backend.stream(PROMPT, GREEDY)
        chunks = [chunk async for chunk in response]
        assert chunks and all(chunks)
        assert "".join(chunks) == response.full_text
        assert response.done

    async def test_records_timings_and_usage(self, backend: Backend) -> None:
        response = backend.stream(PROMPT, GREEDY)
        await response.text()
        assert response.first_token_s is not None and response.total_s is not None
        assert 0 <= response.first_token_s <= response.total_s
        assert response.usage.prompt_tokens > 0
        assert response.usage.completion_tokens > 0

    async def test_replay_yields_same_chunks_without_generating(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        response = backend.stream(PROMPT, GREEDY)
        first = [chunk async for chunk in response]

        def no_second_generation(*args: object) -> AsyncIterator[str]:
            raise AssertionError("replay must not call the backend")

        monkeypatch.setattr(backend, "_stream", no_second_generation)
        assert [chunk async for chunk in response] == first
        assert await response.text() == "".join(first)

    async def test_complete_returns_text(self, backend: Backend) -> None:
        text = await backend.complete(PROMPT, GREEDY)
        assert isinstance(text, str) and text.strip()

    async def test_count_tokens_grows_with_text(self, backend: Backend) -> None:
        short = backend.count_tokens("The lighthouse keeper waved.")
        longer = backend.count_tokens("The lighthouse keeper waved. " * 10)
        assert 0 < short < longer
        assert backend.count_tokens("") == 0

    async def test_gen_options_reject_unknown_keys(self, backend: Backend) -> None:
        with pytest.raises(ValidationError):
            GenOptions.model_validate({"temperature": 0.1, "top_q": 0.9})
        with pytest.raises(ValidationError):
            GenOptions(max_tokens=0)

    async def test_max_tokens_bounds_the_reply(self, backend: Backend) -> None:
        unbounded = await backend.stream(PROMPT, GREEDY).text()
        response = backend.stream(PROMPT, GenOptions(temperature=0.0, max_tokens=4))
        text = await response.text()
        # Real backends stream at least one token per chunk; scripted one word per chunk.
        assert 0 < len(response.chunks) <= 4
        assert len(text) < len(unbounded)


def test_registry_lists_builtin_backends_in_order() -> None:
    assert [name for name, _ in BACKENDS] == ["local", "openai", "scripted"]
    assert isinstance(make_backend(Settings(llm={"provider": "scripted"})), ScriptedBackend)


def test_unknown_backend_is_an_error_not_a_fallback() -> None:
    scripted = Settings(llm={"provider": "scripted"})
    nope = scripted.llm.model_copy(update={"provider": "nope"})
    settings = scripted.model_copy(update={"llm": nope})
    with pytest.raises(ValueError, match="nope"):
        make_backend(settings)
