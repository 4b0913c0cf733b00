"""The one small interface every LLM backend implements."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    """One message of a chat prompt, in the OpenAI shape every backend accepts."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class GenOptions(BaseModel):
    """Generation options; unknown keys are an error, not silently ignored.

    A None sampling option leaves the backend's own engine default in place. Each backend
    maps the options it knows (llama.cpp: `repeat_penalty`, `top_k`; OpenAI-compatible
    servers: `frequency_penalty`, `presence_penalty`) and ignores the others.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=256, ge=1, le=4096)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    repeat_penalty: float | None = Field(default=None, ge=0.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: tuple[str, ...] = Field(default=(), max_length=16)
    seed: int | None = None

    def with_overrides(self, **overrides: Any) -> GenOptions:
        """These options with every override that is not None on top (validated)."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return GenOptions.model_validate({**self.model_dump(), **given})


class LLMError(RuntimeError):
    """The backend failed to produce (the rest of) a reply."""


@dataclass
class Usage:
    """Token counts of one generation, as the backend reports them (or counts them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Why generation ended, when the backend says: "stop" (the model ended or a stop
    # sequence matched) or "length" (it ran into max_tokens).
    finish_reason: str | None = None

    def hit_cap(self, max_tokens: int) -> bool:
        """Whether the reply ran into the token cap (counted when the backend did not say)."""
        if self.finish_reason is not None:
            return self.finish_reason == "length"
        return self.completion_tokens >= max_tokens


class Backend:
    """Base class for backends: subclasses implement `_stream` and `count_tokens`.

    Capabilities are class attributes so callers can ask without trying:
    `supports_structured` says whether `structured_create` works.
    """

    name: ClassVar[str] = "base"
    supports_structured: ClassVar[bool] = False
    # Whether a system message may follow the conversation (strict chat templates refuse).
    late_system_ok: ClassVar[bool] = False
    # How many stop sequences the backend passes on (OpenAI's API takes at most four).
    max_stop: ClassVar[int] = 16
    model: str = ""
    tokenizer_name: str = ""

    def default_gen(self) -> GenOptions:
        """Sampling defaults that suit this backend's model; settings and requests override
        them (see `persona.web.turns.build_request`)."""
        return GenOptions()

    def stream(self, messages: list[ChatMessage], options: GenOptions) -> LLMResponse:
        """Start generating a reply; iterate the response to receive text chunks."""
        return LLMResponse(self, messages, options)

    async def complete(self, messages: list[ChatMessage], options: GenOptions) -> str:
        """Generate a whole reply without streaming (default: drain the stream)."""
        response = self.stream(messages, options)
        return await response.text()

    def _stream(
        self, messages: list[ChatMessage], options: GenOptions, usage: Usage
    ) -> AsyncGenerator[str, None]:
        """Yield text chunks; fill `usage` when the backend knows it. Raise LLMError."""
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Count tokens of `text` with this backend's own tokenizer."""
        raise NotImplementedError

    # Tokens one message adds beyond its text (role markers); 0 where the backend counts
    # a prompt as the sum of its texts (the scripted backend reports usage that way).
    message_overhead: ClassVar[int] = 0
    # Tokens the server adds to every prompt (the reply's priming).
    prompt_overhead: ClassVar[int] = 0

    def count_prompt(self, messages: list[ChatMessage]) -> int:
        """Count the whole prompt as the model receives it (chat template included)."""
        text = sum(self.count_tokens(m.content) for m in messages)
        return text + self.message_overhead * len(messages) + self.prompt_overhead

    def context_window(self) -> int:
        """How many tokens the model attends to, prompt and reply together."""
        raise NotImplementedError

    def structured_create(self) -> Callable[..., Any]:
        """Return an OpenAI-style `chat.completions.create` callable for instructor."""
        raise NotImplementedError(f"{self.name} backend has no structured output")

    async def warm(self) -> None:
        """Load whatever the first turn would otherwise wait for (default: nothing)."""

    async def aclose(self) -> None:
        """Release resources (threads, HTTP clients)."""


@dataclass
class LLMResponse:
    """Buffers what streamed, records timings and usage, and can be replayed."""

    backend: Backend
    messages: list[ChatMessage]
    options: GenOptions
    chunks: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    started_at: float = 0.0
    first_token_s: float | None = None
    total_s: float | None = None
    done: bool = False

    async def __aiter__(self) -> AsyncIterator[str]:
        if self.done:
            for chunk in self.chunks:
                yield chunk
            return
        self.started_at = time.perf_counter()
        # aclosing: a consumer that stops early closes the backend's stream now, not at GC.
        async with aclosing(self.backend._stream(self.messages, self.options, self.usage)) as it:
            async for chunk in it:
                if not chunk:
                    continue
                if self.first_token_s is None:
                    self.first_token_s = time.perf_counter() - self.started_at
                self.chunks.append(chunk)
                yield chunk
        self.total_s = time.perf_counter() - self.started_at
        if not self.usage.completion_tokens:
            self.usage.completion_tokens = self.backend.count_tokens(self.full_text)
        self.done = True

    @property
    def full_text(self) -> str:
        return "".join(self.chunks)

    async def text(self) -> str:
        """Drain the stream (if not done yet) and return the whole reply."""
        async for _ in self:
            pass
        return self.full_text
