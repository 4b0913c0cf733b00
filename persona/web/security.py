"""The web service's guards: security headers, Host allow-list, body cap, token, cross-site.

Pure ASGI middleware that never reads a request body itself (BodyLimit counts what the
app reads), so a refusal costs little and writes nothing. `install` adds them in the
order that matters (outermost first):

1. SecurityHeaders: only adds headers as responses go out, so every answer carries them,
   the refusals of the guards below included.
2. TrustedHostMiddleware (Starlette's): a Host not on the allow-list gets 400 (DNS rebinding).
3. BodyLimit: a body over `server.max_body_bytes` gets 413 before or while it is read.
4. AccessGuard (only with `server.access_token`): bearer header or login cookie.
5. CrossSiteGuard: a state-changing request from another site gets 403 (CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from persona.chat_io import MAX_IMPORT_BYTES
from persona.config import Settings
from persona.web.templating import templates

# The Host names of this machine's loopback, as a Host header carries them.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Everything else may change state and is checked for its site.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self';"
    " object-src 'none'"
)
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Not no-referrer: under it browsers send `Origin: null` on same-origin form posts,
    # which the cross-site check (for a browser without Sec-Fetch-Site) must refuse.
    "referrer-policy": "same-origin",
}
LOGIN_PATH = "/login"
COOKIE = "persona_login"
# Reachable without the token: the login page itself and the two static files it loads
# (its stylesheet and icon; it loads no script). Nothing else is served to a stranger.
PUBLIC_PATHS = frozenset({LOGIN_PATH, "/static/app.css", "/static/favicon.svg"})
_COOKIE_LABEL = b"persona login cookie v1"


# ---- names and addresses --------------------------------------------------------------------


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether a bind address or name is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    address = _address(host)
    return address is not None and address.is_loopback


def host_header_name(host: str) -> str:
    """A name or address as a Host header carries it (an IPv6 literal in brackets)."""
    name = host.strip().lower()
    if ":" in name and not name.startswith("["):
        return f"[{name}]"
    return name


def allowed_hosts(settings: Settings) -> list[str]:
    """Host names accepted: loopback, `server.allowed_hosts`, and a specific bind address."""
    names = [*LOOPBACK_HOSTS, *settings.server.allowed_hosts]
    address = _address(settings.host)
    # 0.0.0.0 or :: is every interface, not a name a client uses: those go in allowed_hosts.
    if settings.host.strip() and not (address is not None and address.is_unspecified):
        names.append(settings.host)
    return list(dict.fromkeys(host_header_name(name) for name in names))


# ---- the access token -------------------------------------------------------------------------


def access_token(settings: Settings) -> str | None:
    """The configured token; an empty one counts as none (it would let anyone in)."""
    secret = settings.server.access_token
    token = secret.get_secret_value() if secret is not None else ""
    return token or None


class Access:
    """Checks a bearer header, a login cookie or a login form against the access token.

    The cookie holds an HMAC of a fixed label keyed by the token, not the token itself:
    a stolen cookie does not reveal the token, and changing the token logs everyone out.
    """

    def __init__(self, token: str):
        self._token = token.encode("utf-8")
        self.cookie_value = hmac.new(self._token, _COOKIE_LABEL, hashlib.sha256).hexdigest()

    def token_ok(self, submitted: str) -> bool:
        """Whether a submitted token is the token (constant time)."""
        return hmac.compare_digest(submitted.encode("utf-8"), self._token)

    def bearer_ok(self, authorization: str | None) -> bool:
        """Whether an `Authorization: Bearer <token>` header carries the token."""
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def cookie_ok(self, cookie: str | None) -> bool:
        """Whether a login cookie is the one a login with this token set."""
        return cookie is not None and hmac.compare_digest(
            cookie.encode("utf-8", "replace"), self.cookie_value.encode("ascii")
        )


def safe_next(target: str | None) -> str:
    """A path on this site to go to after logging in; anything else becomes `/`.

    Refuses absolute and protocol-relative URLs and the tricks browsers normalise into one
    (backslashes, control characters such as a tab inside `/\\t/evil.example`).
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


# ---- refusals ---------------------------------------------------------------------------------


def is_page(scope: Scope) -> bool:
    """Whether a path is one of the HTML screens (else the JSON API, the docs or a file)."""
    path: str = scope["path"]
    return path in ("/", "/memory", LOGIN_PATH, "/logout") or path.startswith(
        ("/chats/", "/memory/")
    )


# On a refusal: the server closes the connection rather than read the rest of the body.
CLOSE = {"connection": "close"}


def refusal(scope: Scope, status: int, title: str, message: str) -> Response:
    """A refusal in the route's own kind: JSON for the API, text for htmx, else a page."""
    if not is_page(scope):
        return JSONResponse({"error": message}, status_code=status, headers=CLOSE)
    if Headers(scope=scope).get("hx-request"):
        # htmx shows it under the message box.
        return PlainTextResponse(message, status_code=status, headers=CLOSE)
    page = templates.env.get_template("error.html").render(
        status_code=status, title=title, message=message
    )
    return HTMLResponse(page, status_code=status, headers=CLOSE)


# ---- middleware -------------------------------------------------------------------------------


class SecurityHeaders:
    """Add CSP, frame, sniffing and referrer headers to every response.

    A response with its own CSP (the API docs need inline bootstrap code) keeps it, with
    `frame-ancestors 'none'` added when it lacks one.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                own = headers.get("content-security-policy")
                if own is None:
                    headers["content-security-policy"] = CSP
                elif "frame-ancestors" not in own:
                    headers["content-security-policy"] = f"{own}; frame-ancestors 'none'"
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(Exception):
    """Raised from `receive` once a body passed the cap (the 413 has gone out already)."""


def _caused_by_cutoff(exc: BaseException) -> bool:
    """Whether an error is BodyTooLarge or grew out of it (wrapped, chained or grouped)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BodyTooLarge):
            return True
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


# The import route's own path: its body is a whole chat's export (persona.chat_io).
IMPORT_PATH = "/persona/chats/import"


class BodyLimit:
    """Refuse a request body over `max_bytes` with 413, never holding more than the cap.

    A declared Content-Length over the cap is refused before anything is read. A body
    without one (chunked) is counted as the app reads it: the chunk that passes the cap
    is not handed on; the 413 goes out, the app's own answer is dropped, and the
    connection closes so the rest of the upload is never read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        # Routes that take a bigger body (a chat's export to import), with their own cap.
        self.larger = dict(larger or {})

    def too_large(self, limit: int) -> Response:
        """The 413 answer, closing the connection so the rest of the upload is never read."""
        return JSONResponse(
            {"error": f"request body too large (at most {limit} bytes)"},
            status_code=413,
            headers=CLOSE,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self.too_large(limit)(scope, receive, send)
            return

        received = 0
        app_started = cut_off = False

        async def counted_receive() -> Message:
            nonlocal received, cut_off
            if cut_off:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut_off = True
                    if not app_started:
                        await self.too_large(limit)(scope, receive, send)
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if cut_off:
                return  # the 413 answered this request
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception as exc:
            # A response the app had already begun cannot become a 413: let the server
            # drop the connection instead.
            if not (cut_off and not app_started and _caused_by_cutoff(exc)):
                raise


class AccessGuard:
    """Require the access token on every route but the login page and its two files.

    Bearer header or login cookie. A browser opening a page without either is sent to
    the login page; anything else gets 401 with `WWW-Authenticate: Bearer`.
    """

    def __init__(self, app: ASGIApp, access: Access):
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if self.access.bearer_ok(conn.headers.get("authorization")):
            await self.app(scope, receive, send)
            return
        if self.access.cookie_ok(conn.cookies.get(COOKIE)):
            scope["persona.login"] = True  # pages offer to log out
            await self.app(scope, receive, send)
            return
        await self.unauthenticated(conn)(scope, receive, send)

    def unauthenticated(self, conn: HTTPConnection) -> Response:
        """Where a request without the token goes: the login page, or a 401."""
        here = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
        hx_request = conn.headers.get("hx-request")
        opens_page = conn.scope["method"] in ("GET", "HEAD") and not hx_request
        if opens_page and "text/html" in conn.headers.get("accept", ""):
            return RedirectResponse(login_url(here), status_code=303)
        headers = {"www-authenticate": "Bearer", **CLOSE}
        if hx_request:
            # htmx follows this header: the page itself goes to the login page.
            current = urlsplit(conn.headers.get("hx-current-url", ""))
            back = current.path + (f"?{current.query}" if current.query else "")
            headers["hx-redirect"] = login_url(back)
        body = {"error": "authentication required: send Authorization: Bearer <token>"}
        return JSONResponse(body, status_code=401, headers=headers)


def login_url(target: str) -> str:
    """The login page that returns to `target` (a path on this site) afterwards."""
    return f"{LOGIN_PATH}?{urlencode({'next': safe_next(target)})}"


def _origin(scheme: str, netloc: str) -> str:
    """scheme://host[:port] in lower case, without the scheme's default port."""
    netloc = netloc.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and netloc.endswith(default):
        netloc = netloc.removesuffix(default)
    return f"{scheme}://{netloc}"


def same_site_request(scope: Scope) -> bool:
    """Whether a request may change state: sent by this site's pages, or by no browser.

    `Sec-Fetch-Site` when the browser sends it (same-origin, or none for a user's own
    action); else `Origin`, which must be this server's own origin (`null` is not);
    a request with neither comes from no browser (curl, an SDK) and passes.
    """
    headers = Headers(scope=scope)
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # `null`, or nothing like an origin
    own = _origin(scope.get("scheme", "http"), headers.get("host", ""))
    return _origin(parts.scheme, parts.netloc) == own


class CrossSiteGuard:
    """Refuse a state-changing request from another site with 403 (CSRF), before any write."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS or same_site_request(scope):
            await self.app(scope, receive, send)
            return
        message = "cross-site request refused: this server takes changes only from its own pages"
        await refusal(scope, 403, "Forbidden", message)(scope, receive, send)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the guards to the app, outermost first as the module docstring lists them."""
    token = access_token(settings)
    app.state.access = Access(token) if token else None
    # add_middleware puts each one outside those added before it: innermost first.
    app.add_middleware(CrossSiteGuard)
    if app.state.access is not None:
        app.add_middleware(AccessGuard, access=app.state.access)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.server.max_body_bytes,
        larger={IMPORT_PATH: max(MAX_IMPORT_BYTES, settings.server.max_body_bytes)},
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings))
    app.add_middleware(SecurityHeaders)
