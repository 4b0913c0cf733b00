"""Backend for any OpenAI-compatible server (OpenAI, Ollama, vLLM, llama.cpp, LM Studio)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit

from openai import APIStatusError, AsyncOpenAI, OpenAI

from persona.config import MASK, Settings, url_credentials
from persona.controls import strip_controls
from persona.llm.base import (
    NORMAL_FINISHES,
    Backend,
    ChatMessage,
    Deadlines,
    GenOptions,
    LLMError,
    Usage,
)
from persona.llm.tokenize import ENCODING, tiktoken_counter

# Servers echo keys back masked ("sk-abc***wxyz"); even a fragment should not reach logs.
_KEYLIKE = re.compile(r"\bsk-[\w*.\-]+")
_NO_KEY = "not-needed"  # the SDK insists on a key; local servers ignore it
# Sampling for served chat models (gpt-4o-mini, llama3.2 on Ollama, …): a light
# frequency penalty against loops, room for a few paragraphs.
SERVER_GEN = GenOptions(temperature=0.7, max_tokens=400, frequency_penalty=0.3)


class OpenAIBackend(Backend):
    """Stream chat completions over HTTP with the official `openai` SDK.

    The key is sent only as a bearer token: `llm.api_key`, else the password of a
    `http://user:password@host/v1` base URL. User-info never stays in the URL (the HTTP
    client would send it as Basic auth, in clear, instead of the key).
    """

    name: ClassVar[str] = "openai"
    supports_structured: ClassVar[bool] = True
    supports_embeddings: ClassVar[bool] = True
    # Standard json_schema response_format (OpenAI, vLLM, Ollama, LM Studio, llama-server);
    # servers that reject it get llama-cpp-python's json_object + schema instead.
    structured_mode: ClassVar[str] = "json_schema"
    max_stop: ClassVar[int] = 4  # OpenAI refuses more
    # OpenAI's documented chat framing: about 3 tokens per message and 3 to prime the
    # reply. Other servers' templates differ: the prompt count is an estimate here.
    message_overhead: ClassVar[int] = 3
    prompt_overhead: ClassVar[int] = 3
    # Used when llm.context_window is unset: small enough for most served models.
    DEFAULT_WINDOW: ClassVar[int] = 4096

    def __init__(self, settings: Settings):
        self.window = settings.llm.context_window or self.DEFAULT_WINDOW
        self.model = settings.llm.narrative_model
        self.tokenizer_name = ENCODING
        base_url, url_password = (
            url_credentials(settings.llm.base_url) if settings.llm.base_url else (None, None)
        )
        configured = settings.llm.api_key.get_secret_value() if settings.llm.api_key else ""
        # A proxy's key is often given as the URL's password: without an api_key it is
        # the bearer key. The user name is dropped (servers here take one bearer key).
        self._key = configured or url_password or ""
        # The whole key, wherever it stands as a token of its own (never inside a word).
        self._key_re = (
            re.compile(rf"(?<![\w\-]){re.escape(self._key)}(?![\w\-])") if self._key else None
        )
        self.deadlines = Deadlines.from_settings(settings.llm)
        self._client_args: dict[str, Any] = {
            "base_url": base_url,
            "api_key": self._key or _NO_KEY,
            # Per read: a socket guard only. The call's total and first-token deadlines
            # are LLMResponse's (self.deadlines).
            "timeout": settings.llm.timeout_s,
            "max_retries": 0,  # retrying is the caller's decision, not the transport's
        }
        self._where = _host_of(base_url)
        self._client = AsyncOpenAI(**self._client_args)
        self._sync_client: OpenAI | None = None
        self._schema_in_json_object = False  # learnt from the server's first refusal
        self._count = tiktoken_counter()

    def _error(self, exc: Exception) -> LLMError:
        """Map an SDK or transport error to LLMError with a message free of secrets."""
        detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if self._key_re is not None:
            detail = self._key_re.sub(MASK, detail)
        # Upstream text may hold control characters: the error is stored and shown.
        detail = _KEYLIKE.sub(MASK, " ".join(strip_controls(detail).split()))[:300]
        status = getattr(exc, "status_code", None)
        code = f" {status}" if status else ""
        return LLMError(f"openai backend ({self._where}): {type(exc).__name__}{code}: {detail}")

    def default_gen(self) -> GenOptions:
        return SERVER_GEN

    def _request(self, messages: list[ChatMessage], options: GenOptions) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [m.model_dump() for m in messages],
            "temperature": options.temperature,
            "max_tokens": options.max_tokens,
        }
        # Only standard parameters: llama.cpp's repeat_penalty and top_k are not OpenAI's.
        for name in ("top_p", "frequency_penalty", "presence_penalty", "seed"):
            if (value := getattr(options, name)) is not None:
                request[name] = value
        if options.stop:
            request["stop"] = list(options.stop[: self.max_stop])
        return request

    async def _stream(
        self, messages: list[ChatMessage], options: GenOptions, usage: Usage
    ) -> AsyncGenerator[str, None]:
        # An estimate until (unless) the server reports usage in its last chunk.
        usage.prompt_tokens = self.count_prompt(messages)
        try:
            stream = await self._client.chat.completions.create(
                **self._request(messages, options),
                stream=True,
                stream_options={"include_usage": True},  # servers that ignore it still work
            )
        except Exception as exc:
            raise self._error(exc) from None
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage.prompt_tokens = chunk.usage.prompt_tokens
                    usage.completion_tokens = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].finish_reason:
                    usage.finish_reason = chunk.choices[0].finish_reason
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except Exception as exc:
            raise self._error(exc) from None
        finally:
            await stream.close()

    async def complete(self, messages: list[ChatMessage], options: GenOptions) -> str:
        """Generate a whole reply in one non-streaming request, within the call deadline."""
        try:
            async with asyncio.timeout(self.deadlines.total_s) as deadline:
                response = await self._client.chat.completions.create(
                    **self._request(messages, options), stream=False
                )
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise LLMError(
                    f"openai backend ({self._where}): the call deadline"
                    f" ({self.deadlines.total_s:g}s) passed"
                ) from None
            raise self._error(exc) from None
        choices = getattr(response, "choices", None)  # a non-JSON body parses to a str
        if not choices:
            raise LLMError(f"openai backend ({self._where}): reply without choices")
        finish = choices[0].finish_reason
        if finish not in NORMAL_FINISHES:
            raise LLMError(
                f"openai backend ({self._where}): the reply ended without a normal finish"
                f" (finish_reason={finish!r})"
            )
        return choices[0].message.content or ""

    async def embed(self, texts: list[str], model: str) -> list[list[float]]:
        """Ask the server's `/embeddings` for one vector per text, within the call deadline."""
        if not texts:
            return []
        try:
            async with asyncio.timeout(self.deadlines.total_s) as deadline:
                # Plain floats: some compatible servers do not implement base64.
                response = await self._client.embeddings.create(
                    model=model, input=texts, encoding_format="float"
                )
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise LLMError(
                    f"openai backend ({self._where}): the embedding deadline"
                    f" ({self.deadlines.total_s:g}s) passed"
                ) from None
            raise self._error(exc) from None
        data = sorted(getattr(response, "data", None) or [], key=lambda d: d.index)
        if len(data) != len(texts):
            raise LLMError(
                f"openai backend ({self._where}): {len(data)} embeddings for {len(texts)} texts"
            )
        return [list(d.embedding) for d in data]

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def context_window(self) -> int:
        return self.window

    def structured_create(self) -> Callable[..., Any]:
        """Return a sync `chat.completions.create` (instructor runs it in a thread)."""
        from persona.llm.structured import schema_as_json_object

        if self._sync_client is None:
            self._sync_client = OpenAI(**self._client_args)
        sync_create = self._sync_client.chat.completions.create

        def create(**kwargs: Any) -> Any:
            fallback = schema_as_json_object(kwargs.get("response_format"))
            if fallback and self._schema_in_json_object:
                kwargs["response_format"] = fallback
            try:
                return sync_create(**kwargs)
            except APIStatusError as exc:
                refused = fallback and "response_format" in str(exc) and exc.status_code != 401
                if not refused or self._schema_in_json_object:
                    raise self._error(exc) from None
            except Exception as exc:
                raise self._error(exc) from None
            self._schema_in_json_object = True
            return create(**kwargs)

        return create

    async def aclose(self) -> None:
        await self._client.close()
        if self._sync_client is not None:
            self._sync_client.close()


def _host_of(base_url: str | None) -> str:
    """Name the server in errors without any credentials a URL might carry."""
    if not base_url:
        return "default OpenAI endpoint"
    try:
        parts = urlsplit(url_credentials(base_url)[0])
        port = parts.port
    except ValueError:  # a malformed port: say so without echoing any of the URL
        return "a malformed base_url"
    return f"{parts.hostname or '?'}{f':{port}' if port else ''}"
