"""The app factory: thin wiring of routers, guards, templates, static files and error shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from persona.config import Settings
from persona.engine import Engine
from persona.errors import (
    ChatConflict,
    MessageTooLong,
    PersonaNotFound,
    QueueFull,
    ShuttingDown,
)
from persona.resources import static_dir
from persona.version import ENGINE_VERSION
from persona.web import (
    api,
    chat_io,
    chats,
    docs,
    login,
    memory,
    operator,
    pages,
    security,
    sleep,
    tree,
)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse(status_code=400, content={"error": "request body is not valid JSON"})
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]
    fields = ", ".join(".".join(str(p) for p in d["loc"][1:]) or "body" for d in detail)
    # The first problem in words, so a client that shows only `error` says what is wrong.
    first = str(detail[0]["msg"]).removeprefix("Value error, ") if detail else ""
    error = f"invalid request: {fields}" + (f" ({first})" if first else "")
    return JSONResponse(status_code=422, content={"error": error, "detail": detail})


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route, included routers opened (FastAPI wraps an included router)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def allowed_methods(request: Request) -> str:
    """Every method some route of this path answers (Starlette names only the first
    matching route's), for a 405's Allow header."""
    path = request.url.path
    by_format: dict[str, set[str]] = {}
    for route in _routes(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods = set(getattr(route, "methods", None) or ())
            by_format.setdefault(str(getattr(route, "path_format", "")), set()).update(methods)
    # A path spelled out ("/persona/chat/stream") wins over a template it also fits
    # ("/persona/chat/{session_id}"): the template's methods are another resource's.
    static = {f: m for f, m in by_format.items() if "{" not in f}
    chosen = static or by_format
    return ", ".join(sorted(set().union(*chosen.values()))) if chosen else ""


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 400 and "parsing the body" in message:
        message = "request body could not be decoded (invalid JSON or UTF-8)"
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": message},
        headers=headers or None,
    )


def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"error": str(exc)})


def _conflict(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"error": str(exc)})


def _too_long(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MessageTooLong)
    return JSONResponse(
        status_code=413,
        content={
            "error": str(exc),
            "message_tokens": exc.message_tokens,
            "limit_tokens": exc.limit_tokens,
        },
    )


def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return JSONResponse(
        status_code=429,
        content={"error": str(exc)},
        headers={"Retry-After": str(exc.retry_after_s)},
    )


def _shutting_down(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=503, content={"error": str(exc)}, headers={"Retry-After": "5"})


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app around an engine (made from settings when not given)."""
    if engine is None:
        engine = Engine(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="Persona OS",
        version=ENGINE_VERSION,
        description="A local-first home for long-running LLM personas.",
        lifespan=lifespan,
        # Served by persona.web.docs from vendored assets instead of a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    handlers: dict[Any, Any] = {
        RequestValidationError: _validation_error,
        StarletteHTTPException: _http_error,
        PersonaNotFound: _not_found,
        ChatConflict: _conflict,
        MessageTooLong: _too_long,
        QueueFull: _queue_full,
        ShuttingDown: _shutting_down,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(docs.router)
    app.include_router(login.router)
    app.include_router(operator.router)
    app.include_router(memory.router)
    app.include_router(sleep.router)
    app.include_router(chats.router)
    app.include_router(tree.router)
    app.include_router(chat_io.router)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    security.install(app, engine.settings)
    return app
