"""The one small interface every LLM backend implements."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from persona.config import LLMSettings

# The finishes that make a whole reply: the model ended (or a stop sequence matched), or it
# ran into max_tokens. A stream that ends with no finish reason (a dropped connection, a
# body that was not SSE, a bare [DONE]) or with any other ("content_filter") is broken.
NORMAL_FINISHES = frozenset({"stop", "length"})


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


class EmbeddingUnsupported(LLMError):
    """The backend has no way to embed text (dense retrieval needs another backend)."""


@dataclass(frozen=True)
class Deadlines:
    """How long one model call may take (None: unbounded).

    `total_s` runs from the request to the last token; `first_token_s` bounds the wait for
    the first one (a server that sends only keep-alives). Per-read timeouts cannot do
    either: a trickle of bytes resets them forever.
    """

    total_s: float | None = None
    first_token_s: float | None = None

    @classmethod
    def from_settings(cls, llm: LLMSettings) -> Deadlines:
        """`llm.timeout_s` as the total, `llm.first_token_timeout_s` for the first token."""
        return cls(total_s=llm.timeout_s, first_token_s=llm.first_token_timeout_s)


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
    # Enforced by LLMResponse around `_stream`, whatever the backend (see Deadlines).
    deadlines: Deadlines = Deadlines()
    supports_structured: ClassVar[bool] = False
    # Whether `embed` works (dense retrieval needs it).
    supports_embeddings: ClassVar[bool] = False
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
        """Yield text chunks; fill `usage` when the backend knows it. Raise LLMError.

        `usage.finish_reason` must say how the generation ended: without "stop" or
        "length" the reply is broken (LLMResponse raises). Closing the generator (a
        deadline, a consumer that left) must stop the generation.
        """
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

    async def embed(self, texts: list[str], model: str) -> list[list[float]]:
        """One vector per text, in order, from the embedding model `model`. Raise LLMError."""
        raise EmbeddingUnsupported(f"{self.name} backend cannot embed text")

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
        """Stream the reply once (then replay it); raise LLMError unless it ends normally.

        The backend's deadlines bound each wait for its next chunk, measured from the
        request: the first-token deadline until a token arrives, the total one always.
        Expiry closes the backend's stream (its HTTP response, its worker thread).
        """
        if self.done:
            for chunk in self.chunks:
                yield chunk
            return
        self.started_at = time.perf_counter()
        limits = self.backend.deadlines
        now = asyncio.get_running_loop().time()
        total_at = now + limits.total_s if limits.total_s else None
        first_at = now + limits.first_token_s if limits.first_token_s else None
        # aclosing: a consumer that stops early closes the backend's stream now, not at GC.
        async with aclosing(self.backend._stream(self.messages, self.options, self.usage)) as it:
            while True:
                waiting_first = (
                    self.first_token_s is None
                    and first_at is not None
                    and (total_at is None or first_at < total_at)
                )
                # Each wait alone, never across a yield: the consumer's own time is not
                # cancelled here, it only brings the deadline closer.
                try:
                    async with asyncio.timeout_at(first_at if waiting_first else total_at) as t:
                        chunk = await anext(it)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if not t.expired():
                        raise
                    raise self._deadline_error(waiting_first) from None
                if not chunk:
                    continue
                if self.first_token_s is None:
                    self.first_token_s = time.perf_counter() - self.started_at
                self.chunks.append(chunk)
                yield chunk
        self.total_s = time.perf_counter() - self.started_at
        if self.usage.finish_reason not in NORMAL_FINISHES:
            raise LLMError(
                f"{self.backend.name} backend: the reply ended without a normal finish"
                f" (finish_reason={self.usage.finish_reason!r}"
                f" after {len(self.full_text)} characters)"
            )
        if not self.usage.completion_tokens:
            self.usage.completion_tokens = self.backend.count_tokens(self.full_text)
        self.done = True

    def _deadline_error(self, first_token: bool) -> LLMError:
        limits, name = self.backend.deadlines, self.backend.name
        if first_token:
            return LLMError(
                f"{name} backend: no token within the first-token deadline"
                f" ({limits.first_token_s:g}s)"
            )
        return LLMError(
            f"{name} backend: the call deadline ({limits.total_s:g}s) passed"
            f" after {len(self.full_text)} characters"
        )

    @property
    def full_text(self) -> str:
        return "".join(self.chunks)

    async def text(self) -> str:
        """Drain the stream (if not done yet) and return the whole reply."""
        async for _ in self:
            pass
        return self.full_text
