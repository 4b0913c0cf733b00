"""structured_call with the scripted backend: retries, fallbacks and the timeout."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from persona.llm.base import Backend, ChatMessage, LLMError
from persona.llm.scripted import ScriptedBackend, as_json
from persona.llm.structured import structured_call


class Mood(BaseModel):
    """Every field has a default: the value structured_call falls back to."""

    mood: str = "neutral"
    intensity: int = 0


MESSAGES = [ChatMessage(role="user", content="How do I feel?")]


async def call(backend: Backend, timeout_s: float = 5.0, retries: int = 1) -> Any:
    return await structured_call(
        backend, Mood, MESSAGES, model="scripted", timeout_s=timeout_s, retries=retries
    )


async def test_valid_json_is_parsed_first_time() -> None:
    backend = ScriptedBackend()
    backend.enqueue_structured(as_json({"mood": "happy", "intensity": 3}))
    result = await call(backend)
    assert result.ok and result.error is None
    assert result.value == Mood(mood="happy", intensity=3)
    assert result.attempts == 1 == backend.structured_calls
    assert result.latency_ms >= 0


async def test_invalid_then_valid_succeeds_on_the_retry() -> None:
    backend = ScriptedBackend()
    backend.enqueue_structured("I feel great!", as_json({"mood": "great", "intensity": 5}))
    result = await call(backend)
    assert result.ok
    assert result.value == Mood(mood="great", intensity=5)
    assert result.attempts == 2


async def test_invalid_twice_gives_the_default() -> None:
    backend = ScriptedBackend()
    backend.enqueue_structured("nope", as_json({"mood": "sad", "intensity": "very"}), "unused")
    result = await call(backend)
    assert not result.ok
    assert result.value == Mood()
    assert result.attempts == 2 == backend.structured_calls
    assert result.error and "intensity" in result.error
    assert list(backend.structured_replies) == ["unused"]


async def test_an_empty_object_is_not_an_answer() -> None:
    backend = ScriptedBackend()
    backend.enqueue_structured("{}", as_json({"mood": "calm"}))
    result = await call(backend)
    assert not result.ok and result.value == Mood()
    assert result.error and "Field required" in result.error


async def test_retries_zero_means_one_attempt() -> None:
    backend = ScriptedBackend()
    backend.enqueue_structured("nope", as_json({"mood": "ok"}))
    result = await call(backend, retries=0)
    assert not result.ok and result.attempts == 1


async def test_backend_error_gives_the_default() -> None:
    backend = ScriptedBackend()
    backend.enqueue_structured(LLMError("server on fire"))
    result = await call(backend)
    assert not result.ok
    assert result.value == Mood()
    assert result.error and "server on fire" in result.error
    assert result.attempts == 1  # only parse failures are re-asked


async def test_backend_without_structured_output_gives_the_default() -> None:
    class Plain(ScriptedBackend):
        def structured_create(self) -> Callable[..., Any]:
            return Backend.structured_create(self)

    result = await call(Plain())
    assert not result.ok and result.value == Mood()
    assert result.error and "NotImplementedError" in result.error


async def test_timeout_gives_the_default_without_waiting_for_the_backend() -> None:
    asked, release, answered = threading.Event(), threading.Event(), threading.Event()

    class Stuck(ScriptedBackend):
        def structured_create(self) -> Callable[..., Any]:
            def create(**kwargs: Any) -> Any:
                asked.set()
                release.wait(30)  # a hung server; released below so the thread ends
                answered.set()
                raise LLMError("released")

            return create

    try:
        result = await call(Stuck(), timeout_s=0.2)
        # The call gave up while the server still hung: it returned before the gate opened.
        assert asked.is_set() and not answered.is_set()
    finally:
        release.set()
    assert not result.ok and result.value == Mood()
    assert result.error == "timeout after 0.2s"
    assert result.attempts == 1
