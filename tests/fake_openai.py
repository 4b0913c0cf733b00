"""A fake OpenAI-compatible server on loopback whose every answer a test (or bench) chooses.

`POST /v1/chat/completions` (streamed or not) takes the next queued mode (`normal` when
the queue is empty); `GET /v1/models` lists one model; `POST /v1/embeddings` answers
small deterministic vectors. Every request is kept (`requests`)
with its headers, so a test can check what auth a client sent. Bodies are close-delimited
(HTTP/1.0): a stream can simply stop, as a dropped upstream does.

Modes: normal, length, content_filter (finish reasons); truncated (three chunks, then the
connection closes: no finish reason, no [DONE]); json_body and text_body (a 200 that is
not SSE); bare_done (only `data: [DONE]`); pings (`: ping` comments forever, no token);
trickle (a token every `interval_s`, never finishing); slow_first (`delay_s` before the
first token); echo_auth (the reply is the Authorization header received); error (status
and message of an API error).
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MODEL = "fake-model"
TEXT = "Hello there, it is good to see you again."
# Modes that never end by themselves: they stop when the client goes or the server stops.
ENDLESS = ("pings", "trickle")
KINDS = (
    "normal",
    "length",
    "content_filter",
    "truncated",
    "json_body",
    "text_body",
    "bare_done",
    "pings",
    "trickle",
    "slow_first",
    "echo_auth",
    "error",
)
_WORDS = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class Mode:
    """How the fake answers one chat completion request."""

    kind: str
    text: str = TEXT
    delay_s: float = 1.0  # slow_first: the wait before the first token
    interval_s: float = 0.05  # pings, trickle: the wait between sends
    status: int = 400  # error
    message: str = "bad request"  # error
    raw: bool = False  # error: the message as a text/plain body instead of OpenAI's JSON

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown mode {self.kind!r} (known: {', '.join(KINDS)})")


@dataclass
class Seen:
    """One request the fake received, and whether its client hung up mid-answer."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    mode: str
    client_gone: threading.Event = field(default_factory=threading.Event)


class FakeOpenAI:
    """Serve on 127.0.0.1 in a thread; use as a context manager (it stops every thread)."""

    def __init__(self) -> None:
        self._modes: deque[Mode] = deque()
        self._lock = threading.Lock()
        self.requests: list[Seen] = []
        self.stopping = threading.Event()
        self._handlers: list[threading.Thread] = []  # one thread per request
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-openai", daemon=True
        )

    @property
    def url(self) -> str:
        """The server's root URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        """The URL an OpenAI client is given (`…/v1`)."""
        return f"{self.url}/v1"

    def enqueue(self, *modes: str | Mode) -> None:
        """Queue how the next chat completion requests are answered, in order."""
        with self._lock:
            self._modes.extend(Mode(m) if isinstance(m, str) else m for m in modes)

    def _next(self) -> Mode:
        with self._lock:
            return self._modes.popleft() if self._modes else Mode("normal")

    def chat_requests(self) -> list[Seen]:
        """The chat completion requests received so far."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()  # endless answers end at their next wait
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        for handler in self._handlers:
            handler.join(timeout=10)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeOpenAI


def _chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(text: str, finish: str) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],
        "usage": _usage(10, len(_WORDS.findall(text))),
    }
    return json.dumps(body).encode()


_FINISH = {"length": "length", "content_filter": "content_filter"}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: tests read `requests`

    @property
    def fake(self) -> FakeOpenAI:
        return self.server.fake

    def setup(self) -> None:
        self.fake._handlers.append(threading.current_thread())
        super().setup()

    def _send(self, status: int, content_type: str, body: bytes | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body is not None:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.fake.requests.append(Seen("GET", self.path, _headers(self), {}, "models"))
        if self.path.rstrip("/").endswith("/models"):
            listing = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0}]}
            self._send(200, "application/json", json.dumps(listing).encode())
        else:
            self._send(404, "application/json", b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw or b"{}")
        if self.path.rstrip("/").endswith("/embeddings"):
            self.fake.requests.append(Seen("POST", self.path, _headers(self), body, "embeddings"))
            self._send(200, "application/json", json.dumps(_embeddings(body)).encode())
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, "application/json", b'{"error": {"message": "not found"}}')
            return
        mode = self.fake._next()
        seen = Seen("POST", self.path, _headers(self), body, mode.kind)
        self.fake.requests.append(seen)
        try:
            if mode.kind == "error" and mode.raw:
                self._send(mode.status, "text/plain", mode.message.encode())
            elif mode.kind == "error":
                error = {"error": {"message": mode.message, "type": "invalid_request_error"}}
                self._send(mode.status, "application/json", json.dumps(error).encode())
            elif body.get("stream"):
                self._stream(mode, body)
            else:
                self._whole(mode)
        except (BrokenPipeError, ConnectionResetError):
            seen.client_gone.set()

    def _wait(self, seconds: float) -> bool:
        """Sleep unless the server stops; whether to go on."""
        return not self.fake.stopping.wait(seconds)

    def _text(self, mode: Mode) -> str:
        if mode.kind == "echo_auth":
            return self.headers.get("Authorization") or "(no Authorization header)"
        return mode.text

    def _stream(self, mode: Mode, body: dict[str, Any]) -> None:
        kind, write = mode.kind, self.wfile.write
        if kind == "json_body":
            self._send(200, "application/json", _completion(mode.text, "stop"))
            return
        if kind == "text_body":
            self._send(200, "text/plain", mode.text.encode())
            return
        self._send(200, "text/event-stream")
        if kind == "bare_done":
            write(b"data: [DONE]\n\n")
            return
        if kind == "pings":
            while self._wait(mode.interval_s):
                write(b": ping\n\n")
            return
        write(_chunk(role=True))
        if kind == "trickle":
            while self._wait(mode.interval_s):
                write(_chunk("la "))
            return
        if kind == "slow_first" and not self._wait(mode.delay_s):
            return
        words = _WORDS.findall(self._text(mode))
        if kind == "truncated":
            for word in words[:3]:
                write(_chunk(word))
            return  # the connection closes: no finish reason, no [DONE]
        for word in words:
            write(_chunk(word))
        write(_chunk(finish=_FINISH.get(kind, "stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
            usage |= {"model": MODEL, "choices": [], "usage": _usage(10, len(words))}
            write(f"data: {json.dumps(usage)}\n\n".encode())
        write(b"data: [DONE]\n\n")

    def _whole(self, mode: Mode) -> None:
        kind = mode.kind
        if kind == "text_body":
            self._send(200, "text/plain", mode.text.encode())
        elif kind == "bare_done":
            self._send(200, "text/event-stream", b"data: [DONE]\n\n")
        elif kind == "truncated":
            whole = _completion(mode.text, "stop")
            self._send(200, "application/json")
            self.wfile.write(whole[: len(whole) // 2])  # then the connection closes
        elif kind in ENDLESS:
            self._send(200, "application/json")
            while self._wait(mode.interval_s):
                self.wfile.write(b" ")  # JSON may start with any amount of blank
        else:
            if kind == "slow_first" and not self._wait(mode.delay_s):
                return
            text = self._text(mode)
            self._send(200, "application/json", _completion(text, _FINISH.get(kind, "stop")))


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/embeddings`: each input's vector is [characters, words, 1.0], listed in
    reverse order (each item names its index, as the API's do)."""
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    vectors = [[float(len(t)), float(len(t.split())), 1.0] for t in texts]
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    usage = {"prompt_tokens": 0, "total_tokens": 0}
    return {"object": "list", "model": body["model"], "data": data[::-1], "usage": usage}


def _headers(handler: http.server.BaseHTTPRequestHandler) -> dict[str, str]:
    """Request headers by lower-case name (clients differ in how they spell them)."""
    return {name.lower(): value for name, value in handler.headers.items()}
