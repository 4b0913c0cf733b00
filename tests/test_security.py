"""The service's guards through real HTTP: cross-site writes, Host, token, headers, body cap."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import LiveServer, wait_until

import persona.cli
from persona.cli import SHUTDOWN_ANSWER_S, main
from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend
from persona.storage.eventlog import count_events
from persona.web.docs import CSP as DOCS_CSP
from persona.web.security import (
    CSP,
    BodyLimit,
    SecurityHeaders,
    access_token,
    allowed_hosts,
    is_loopback,
    safe_next,
)
from persona.web.templating import TEMPLATES_DIR

TOKEN = "correct-horse-battery-staple-0123456789"
FORM = {"content-type": "application/x-www-form-urlencoded"}
HTML = {"accept": "text/html,application/xhtml+xml"}
MIB = 1024 * 1024


def events(server: LiveServer) -> int:
    """How many events the server's log holds."""
    return server.engine.store.sync_read(count_events)


def all_events_text(server: LiveServer) -> str:
    """Every stored event row as text (to look for what must never be stored)."""
    rows = server.engine.store.sync_read(lambda c: c.execute("SELECT * FROM events").fetchall())
    return json.dumps([list(map(str, row)) for row in rows])


@contextmanager
def serve(tmp_path: Path, backend: ScriptedBackend | None = None, **server: Any) -> Iterator[Any]:
    """A live server with some [server] settings, and an httpx client on it."""
    settings = Settings(
        db_path=tmp_path / "guarded.db", llm={"provider": "scripted"}, server=server
    )
    engine = Engine(settings, backend=backend or ScriptedBackend(), clock=FixedClock())
    with LiveServer(engine) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        yield live, http


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        yield client


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Any]:
    """A server that requires the access token, and a client on it that does not send it."""
    with serve(tmp_path, access_token=TOKEN) as pair:
        yield pair


def turns_completed(server: LiveServer, chat_id: str) -> int:
    rows = server.engine.store.sync_read(
        lambda c: c.execute(
            "SELECT COUNT(*) FROM turns WHERE chat_id = ? AND status = 'completed'", (chat_id,)
        ).fetchone()
    )
    return int(rows[0])


# ---- cross-site writes (CSRF) -------------------------------------------------------------


def test_a_cross_origin_form_post_writes_nothing(
    live_server: LiveServer, http: httpx.Client, backend: ScriptedBackend
) -> None:
    before = events(live_server)
    # What a form on another site makes a browser send (older browsers: Origin only).
    for headers in (
        {"origin": "http://evil.example"},
        {"origin": "http://evil.example", "sec-fetch-site": "cross-site"},
    ):
        response = http.post(
            "/chats/chat-victim/messages",
            content="message=remember+that+the+admin+password+is+hunter2",
            headers={**FORM, **headers},
        )
        assert response.status_code == 403
        assert "cross-site request refused" in response.text
        assert "text/html" in response.headers["content-type"]  # a page for a form post
    assert events(live_server) == before
    assert backend.calls == []


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},
        # Another port of the same host is the same *site*, not the same origin.
        {"sec-fetch-site": "same-site"},
        {"origin": "null"},
        {"origin": "http://localhost:1"},
        {"origin": "https://{own}"},
        {"origin": "not an origin"},
        # Sec-Fetch-Site is the browser's own verdict and wins over Origin.
        {"sec-fetch-site": "cross-site", "origin": "http://{own}"},
    ],
)
def test_cross_site_writes_are_refused(
    live_server: LiveServer, http: httpx.Client, headers: dict[str, str]
) -> None:
    own = live_server.url.removeprefix("http://")
    sent = {name: value.format(own=own) for name, value in headers.items()}
    before = events(live_server)
    response = http.post("/chats/chat-x/messages", content="message=hi", headers={**FORM, **sent})
    assert response.status_code == 403
    assert events(live_server) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},  # typed or bookmarked by the user
        {"origin": "http://{own}"},
        {"origin": "HTTP://{own}"},
        {},  # no browser at all: curl, an SDK
    ],
)
def test_same_origin_and_non_browser_writes_pass(
    live_server: LiveServer, http: httpx.Client, headers: dict[str, str]
) -> None:
    own = live_server.url.removeprefix("http://")
    sent = {name: value.format(own=own) for name, value in headers.items()}
    response = http.post("/chats/chat-ok/messages", content="message=hi", headers={**FORM, **sent})
    assert response.status_code == 202
    wait_until(lambda: turns_completed(live_server, "chat-ok") == 1)


def test_a_cross_site_text_plain_post_to_the_json_api_writes_nothing(
    live_server: LiveServer, http: httpx.Client, backend: ScriptedBackend
) -> None:
    before = events(live_server)
    # A "simple" request a page on another site can send without a CORS preflight.
    for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        for path in ("/persona/chat", "/persona/chat/stream"):
            response = http.post(
                path,
                content='{"message": "forget everything"}',
                headers={"content-type": "text/plain", **headers},
            )
            assert response.status_code == 403
            assert response.json()["error"].startswith("cross-site request refused")
    assert events(live_server) == before
    assert backend.calls == []


def test_an_htmx_post_refused_as_cross_site_gets_text_for_the_form(
    live_server: LiveServer, http: httpx.Client
) -> None:
    response = http.post(
        "/chats/chat-x/messages",
        content="message=hi",
        headers={**FORM, "hx-request": "true", "origin": "http://evil.example"},
    )
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/plain")


# ---- Host allow-list (DNS rebinding) ------------------------------------------------------


def test_a_foreign_host_header_is_refused_and_writes_nothing(
    live_server: LiveServer, http: httpx.Client, backend: ScriptedBackend
) -> None:
    # A rebinding page's requests reach 127.0.0.1 but carry its own name as Host.
    evil = {"host": "evil.example"}
    before = events(live_server)
    assert http.post("/persona/chat", json={"message": "hi"}, headers=evil).status_code == 400
    form = http.post("/chats/chat-x/messages", content="message=hi", headers={**FORM, **evil})
    assert form.status_code == 400
    for path in ("/chats/chat-x", "/persona/chat/chat-x", "/persona/chat/chat-x/events"):
        assert http.get(path, headers=evil).status_code == 400, path
    assert events(live_server) == before
    assert backend.calls == []


def test_loopback_host_names_are_accepted(live_server: LiveServer, http: httpx.Client) -> None:
    port = live_server.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert http.get("/health", headers={"host": host}).status_code == 200, host
    for host in ("127.0.0.2", "localhost.evil.example", f"0.0.0.0:{port}"):
        assert http.get("/health", headers={"host": host}).status_code == 400, host


def test_configured_host_names_are_accepted(tmp_path: Path) -> None:
    with serve(tmp_path, allowed_hosts=["persona.lan"]) as (live, http):
        assert http.get("/health", headers={"host": f"persona.lan:{live.port}"}).is_success
        assert http.get("/health", headers={"host": "other.lan"}).status_code == 400


def test_the_allow_list_adds_a_specific_bind_address_but_no_wildcard() -> None:
    def hosts(host: str, extra: list[str] | None = None) -> list[str]:
        return allowed_hosts(Settings(host=host, server={"allowed_hosts": extra or []}))

    loopback = ["localhost", "127.0.0.1", "[::1]"]
    assert hosts("127.0.0.1") == loopback
    assert hosts("0.0.0.0") == hosts("::") == loopback
    assert hosts("192.168.1.20") == [*loopback, "192.168.1.20"]
    assert hosts("fd00::20") == [*loopback, "[fd00::20]"]
    assert hosts("0.0.0.0", ["Persona.LAN", "fd00::1"]) == [*loopback, "persona.lan", "[fd00::1]"]


# ---- the access token ---------------------------------------------------------------------


def test_without_the_token_the_api_gets_401_and_pages_go_to_the_login(locked: Any) -> None:
    live, http = locked
    before = events(live)
    for path in ("/persona/chat/chat-1", "/health", "/openapi.json", "/static/app.js", "/docs"):
        response = http.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert "authentication required" in response.json()["error"]
    post = http.post("/persona/chat", json={"message": "hi"})
    assert post.status_code == 401
    form = http.post("/chats/chat-1/messages", content="message=hi", headers=FORM)
    assert form.status_code == 401
    assert events(live) == before

    page = http.get("/chats/chat-1?persona_id=mira", headers=HTML)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fchats%2Fchat-1%3Fpersona_id%3Dmira"
    # The login page and the two files it loads are the only ones served to a stranger.
    for path in ("/login", "/static/app.css", "/static/favicon.svg"):
        assert http.get(path).status_code == 200, path


def test_an_htmx_request_without_the_token_sends_the_page_to_the_login(locked: Any) -> None:
    live, http = locked
    page = f"{live.url}/chats/chat-1"
    response = http.get("/chats/chat-1", headers={"hx-request": "true", "hx-current-url": page})
    assert response.status_code == 401
    assert response.headers["hx-redirect"] == "/login?next=%2Fchats%2Fchat-1"


def test_the_bearer_token_opens_every_route(locked: Any) -> None:
    live, http = locked
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert http.get("/health", headers=bearer).status_code == 200
    assert http.get("/health", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    assert http.get("/chats/chat-1", headers={**bearer, **HTML}).status_code == 200
    reply = http.post(
        "/persona/chat", json={"message": "hi", "session_id": "chat-b"}, headers=bearer
    )
    assert reply.status_code == 200 and reply.json()["reply"]
    for wrong in (
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer",
    ):
        assert http.get("/health", headers={"authorization": wrong}).status_code == 401, wrong
    # Never stored: not in any event of the turn the token let in.
    assert TOKEN not in all_events_text(live)


def test_both_live_streams_require_the_token(locked: Any) -> None:
    _, http = locked
    for path in ("/chats/chat-1/stream", "/persona/chat/chat-1/events"):
        assert http.get(path, headers={"accept": "text/event-stream"}).status_code == 401, path
        with http.stream("GET", path, headers={"authorization": f"Bearer {TOKEN}"}) as stream:
            assert stream.status_code == 200, path
            assert stream.headers["content-type"].startswith("text/event-stream")


def login(http: httpx.Client, token: str, target: str = "/", **headers: str) -> httpx.Response:
    """Submit the login form as the login page would."""
    return http.post(
        "/login",
        content=str(httpx.QueryParams({"token": token, "next": target})),
        headers={**FORM, "sec-fetch-site": "same-origin", **headers},
    )


def test_logging_in_sets_a_cookie_that_opens_pages_and_streams(locked: Any) -> None:
    live, http = locked
    form = http.get("/login", params={"next": "/chats/chat-1"})
    assert form.status_code == 200
    assert 'name="token"' in form.text and 'value="/chats/chat-1"' in form.text

    done = login(http, TOKEN, "/chats/chat-1")
    assert done.status_code == 303
    assert done.headers["location"] == "/chats/chat-1"
    cookie = done.headers["set-cookie"]
    assert cookie.startswith("persona_login=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert TOKEN not in cookie  # derived from the token, not the token
    assert http.cookies["persona_login"]

    page = http.get("/chats/chat-1", headers=HTML)
    assert page.status_code == 200
    assert 'action="/logout"' in page.text
    assert TOKEN not in page.text
    with http.stream("GET", "/chats/chat-1/stream") as stream:
        assert stream.status_code == 200
    # The form posts with the cookie too (same-origin, as the page sends it).
    sent = http.post(
        "/chats/chat-1/messages",
        content="message=hi",
        headers={**FORM, "sec-fetch-site": "same-origin"},
    )
    assert sent.status_code == 202
    wait_until(lambda: turns_completed(live, "chat-1") == 1)

    out = http.post("/logout", headers={"sec-fetch-site": "same-origin"})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert "persona_login" not in http.cookies
    assert http.get("/chats/chat-1", headers=HTML).status_code == 303
    assert TOKEN not in all_events_text(live)


def test_a_wrong_token_gets_the_form_again_and_no_cookie(locked: Any) -> None:
    _, http = locked
    for wrong in ("guess", "", TOKEN.upper(), f"{TOKEN} "):
        response = login(http, wrong, "/chats/chat-1")
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
        assert "not the access token" in response.text
        assert 'value="/chats/chat-1"' in response.text  # still goes there once right
    assert not http.cookies
    # A cookie made up by hand is not a login either.
    forged = {"cookie": f"persona_login={'0' * 64}", **HTML}
    assert http.get("/chats/chat-1", headers=forged).status_code == 303


def test_a_cross_site_login_is_refused(locked: Any) -> None:
    _, http = locked
    response = login(http, TOKEN, "/", **{"sec-fetch-site": "cross-site"})
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


def test_login_over_https_sets_a_secure_cookie(locked: Any) -> None:
    _, http = locked
    # uvicorn believes X-Forwarded-Proto from 127.0.0.1 (a local TLS proxy).
    done = login(http, TOKEN, "/", **{"x-forwarded-proto": "https"})
    assert done.status_code == 303
    assert "Secure" in done.headers["set-cookie"]


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "///evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "evil.example",
        "javascript:alert(1)",
        "",
    ],
)
def test_login_never_redirects_off_site(locked: Any, target: str) -> None:
    _, http = locked
    assert login(http, TOKEN, target).headers["location"] == "/"
    http.cookies.clear()
    form = http.get("/login", params={"next": target})
    assert 'name="next" value="/"' in form.text


def test_safe_next_keeps_paths_on_this_site() -> None:
    assert safe_next("/chats/chat-1?persona_id=mira") == "/chats/chat-1?persona_id=mira"
    assert safe_next("/") == "/"
    assert safe_next(None) == "/"
    assert safe_next("//evil.example") == "/"
    assert safe_next("/%2F/evil.example") == "/%2F/evil.example"  # a path, not a host


def test_an_empty_token_counts_as_none() -> None:
    assert access_token(Settings(server={"access_token": ""})) is None
    assert access_token(Settings(server={"access_token": TOKEN})) == TOKEN
    assert access_token(Settings()) is None


# ---- security headers ---------------------------------------------------------------------


def assert_guarded(response: httpx.Response, csp: str = CSP) -> None:
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    assert response.headers.get("content-security-policy") == csp, where
    assert response.headers.get("x-frame-options") == "DENY", where
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("referrer-policy") == "same-origin", where


def test_every_response_carries_the_security_headers(
    live_server: LiveServer, http: httpx.Client
) -> None:
    cross = {"origin": "http://evil.example"}
    for response in (
        http.get("/chats/chat-1"),
        http.get("/"),
        http.get("/persona/chat/chat-none"),  # 404 JSON
        http.get("/static/app.css"),
        http.get("/health", headers={"host": "evil.example"}),  # 400 from the Host check
        http.post("/chats/chat-1/messages", content="message=hi", headers={**FORM, **cross}),
        http.post("/persona/chat", content=b"x" * (2 * MIB)),  # 413
        http.get("/chats/bad%20id"),  # 422 error page
    ):
        assert_guarded(response)
    for path in ("/docs", "/redoc"):
        assert_guarded(http.get(path), DOCS_CSP)
    assert "frame-ancestors 'none'" in DOCS_CSP


def test_login_refusals_carry_the_security_headers(locked: Any) -> None:
    _, http = locked
    for response in (
        http.get("/health"),
        http.get("/chats/chat-1", headers=HTML),
        http.get("/login"),
        login(http, "wrong"),
    ):
        assert_guarded(response)


async def test_a_csp_of_the_response_is_kept_and_gains_frame_ancestors() -> None:
    sent: list[dict[str, Any]] = []

    def app_with(csp: bytes | None) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            headers = [(b"content-security-policy", csp)] if csp else []
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

        return app

    async def record(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    for csp in (b"default-src 'self'", b"default-src 'self'; frame-ancestors 'self'", None):
        await SecurityHeaders(app_with(csp))(scope, _no_body, record)
    policies = [dict(m["headers"])[b"content-security-policy"] for m in sent[::2]]
    assert policies == [
        b"default-src 'self'; frame-ancestors 'none'",
        b"default-src 'self'; frame-ancestors 'self'",
        CSP.encode(),
    ]


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


INLINE = [
    (r"<script(?![^>]*\bsrc=)[^>]*>", "an inline script"),
    (r"<style\b", "a <style> element"),
    (r"\sstyle\s*=", "a style attribute"),
    (r"\son[a-z]+\s*=", "an event handler attribute"),
    (r"javascript:", "a javascript: URL"),
]


def assert_no_inline_code(text: str, where: str) -> None:
    for pattern, what in INLINE:
        assert not re.search(pattern, text, re.IGNORECASE), f"{what} in {where}"


def test_no_page_needs_inline_script_or_style(live_server: LiveServer, http: httpx.Client) -> None:
    reply = http.post("/persona/chat", json={"message": "hi", "session_id": "chat-csp"})
    assert reply.status_code == 200
    page = http.get("/chats/chat-csp").text
    assert page.count("<meter") == 5 + len(reply.json()["meta"]["intent"]) + 1  # the bars
    assert_no_inline_code(page, "the chat page")
    assert_no_inline_code(http.get("/chats/bad%20id").text, "the error page")
    for template in Path(TEMPLATES_DIR).glob("*.html"):
        assert_no_inline_code(template.read_text(encoding="utf-8"), template.name)


def test_the_login_page_needs_nothing_the_token_guards(locked: Any) -> None:
    _, http = locked
    page = http.get("/login").text
    assert_no_inline_code(page, "the login page")
    assets = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sorted(assets) == ["/static/app.css", "/static/favicon.svg"]
    for url in assets:
        assert http.get(url).status_code == 200, url


# ---- the body cap -------------------------------------------------------------------------


class Upload:
    """A streamed body of `total` bytes in 64 KiB chunks, counting what was pulled."""

    CHUNK = b"m" * (64 * 1024)

    def __init__(self, total: int):
        self.total = total
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < self.total:
            self.sent += len(self.CHUNK)
            yield self.CHUNK


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/persona/chat", "/chats/chat-big/messages"])
def test_a_large_streamed_body_gets_413_and_writes_nothing(
    live_server: LiveServer, http: httpx.Client, declared: bool, path: str
) -> None:
    upload = Upload(64 * MIB)
    headers = {"content-type": "application/json"}
    if declared:
        headers["content-length"] = str(upload.total)
    before = events(live_server)

    response = http.post(path, content=iter(upload), headers=headers)

    assert response.status_code == 413
    assert response.json()["error"] == "request body too large (at most 1048576 bytes)"
    assert_guarded(response)
    assert events(live_server) == before
    # The server closed the connection instead of reading the upload to its end.
    assert upload.sent < upload.total


def test_a_refused_request_does_not_read_its_upload(
    live_server: LiveServer, http: httpx.Client, locked: Any
) -> None:
    """Refused before its body is read, a chunked upload is not read on: the server hangs up."""
    _, locked_http = locked
    for client, headers, status in (
        (http, {"origin": "http://evil.example"}, 403),
        (http, {"origin": "http://evil.example", "hx-request": "true"}, 403),
        (locked_http, {}, 401),
    ):
        upload = Upload(64 * MIB)
        response = client.post(
            "/chats/chat-x/messages", content=iter(upload), headers={**FORM, **headers}
        )
        assert response.status_code == status
        assert upload.sent < upload.total


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_the_cap_is_exact(tmp_path: Path, declared: bool) -> None:
    with serve(tmp_path, max_body_bytes=4096) as (_, http):
        for size, refused in ((4096, False), (4097, True)):
            body = b'{"message": "hi", "pad": "' + b"x" * (size - 28) + b'"}'
            assert len(body) == size
            chunks = [body[i : i + 1000] for i in range(0, size, 1000)]
            content: Any = body if declared else iter(chunks)
            response = http.post("/persona/chat", content=content)
            # At the cap the body reaches the app (which refuses the unknown field).
            assert (response.status_code == 413) is refused, (size, response.text)


async def test_the_app_never_receives_more_than_the_cap() -> None:
    """Fed in 1000-byte chunks (no Content-Length), the app sees at most the cap."""
    seen = 0
    sent: list[dict[str, Any]] = []
    chunks = iter([b"x" * 1000] * 50)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def reads_everything(scope: Any, receive: Any, send: Any) -> None:
        nonlocal seen
        try:
            while True:
                seen += len((await receive())["body"])
        except Exception:
            # An app that swallows the error and answers anyway is not heard.
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"bad"})

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    await BodyLimit(reads_everything, max_bytes=4096)(scope, receive, send)

    assert seen == 4000
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]
    assert (b"connection", b"close") in sent[0]["headers"]


async def test_an_unrelated_error_after_the_cutoff_is_not_hidden() -> None:
    chunks = iter([b"x" * 1000] * 10)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def fails_on_its_own(scope: Any, receive: Any, send: Any) -> None:
        try:
            while True:
                await receive()
        except Exception:
            pass
        raise ValueError("a bug of the app's own")

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    with pytest.raises(ValueError, match="a bug of the app's own"):
        await BodyLimit(fails_on_its_own, max_bytes=2048)(scope, receive, send)


# ---- persona serve: loopback unless a token guards it -------------------------------------


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Record the uvicorn servers `serve` runs instead of binding anything."""
    import uvicorn

    calls: list[dict[str, Any]] = []

    def run(server: uvicorn.Server, sockets: Any = None) -> None:
        config = server.config
        calls.append(
            {
                "app": config.app,
                "host": config.host,
                "port": config.port,
                "timeout_graceful_shutdown": config.timeout_graceful_shutdown,
            }
        )

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setenv("PERSONA_DB_PATH", str(tmp_path / "serve.db"))
    monkeypatch.setenv("PERSONA_LLM_PROVIDER", "scripted")
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "persona.lan"])
def test_serve_refuses_a_non_loopback_address_without_a_token(
    uvicorn_runs: list[dict[str, Any]], capsys: pytest.CaptureFixture, host: str
) -> None:
    assert main(["serve", "--host", host]) == 2
    err = capsys.readouterr().err
    assert f"refusing to listen on {host}" in err
    assert "PERSONA_ACCESS_TOKEN" in err and "PERSONA_SERVER__INSECURE_EXPOSE=true" in err
    assert uvicorn_runs == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost", None])
def test_serve_binds_loopback_without_a_token(
    uvicorn_runs: list[dict[str, Any]], host: str | None
) -> None:
    assert main(["serve", "--host", host] if host else ["serve"]) == 0
    assert [call["host"] for call in uvicorn_runs] == [host or "127.0.0.1"]


def test_serve_exposes_with_a_token_and_bounds_the_shutdown(
    uvicorn_runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONA_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("PERSONA_SERVER__SHUTDOWN_GRACE_S", "2.5")
    assert main(["serve", "--host", "192.168.1.20", "--port", "8123"]) == 0
    (call,) = uvicorn_runs
    assert (call["host"], call["port"]) == ("192.168.1.20", 8123)
    # The grace, then time for the cancelled turns' clients to be answered.
    assert call["timeout_graceful_shutdown"] == math.ceil(2.5) + SHUTDOWN_ANSWER_S
    # The app answers to the address it was bound to, and requires the token.
    http = TestClient(call["app"], base_url="http://192.168.1.20:8123")  # no lifespan
    assert http.get("/health").status_code == 401
    assert http.get("/health", headers={"host": "192.168.1.21"}).status_code == 400


def test_serve_exposes_without_a_token_only_when_told_and_says_so_loudly(
    uvicorn_runs: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("PERSONA_SERVER__INSECURE_EXPOSE", "true")
    assert main(["serve", "--host", "0.0.0.0"]) == 0
    assert [call["host"] for call in uvicorn_runs] == ["0.0.0.0"]
    (record,) = [r for r in caplog.records if r.name == persona.cli.log.name]
    assert record.levelname == "WARNING" and "INSECURE" in record.getMessage()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("localhost.evil.example", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
