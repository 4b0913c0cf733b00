"""What the user-facing change endpoints share (memories, chats): the refusal that writes
nothing, its JSON answer, the documented error responses, and reading a form."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import JSONResponse

from persona.web.pages import FormError
from persona.web.schemas import ErrorBody

Responses = dict[int | str, dict[str, Any]]

AUTH: Responses = {
    401: {"model": ErrorBody, "description": "An access token is configured and was not sent"},
}


def write_responses(not_found: str, invalid: str, conflict: str | None = None) -> Responses:
    """The documented errors of a change endpoint (the reasons in its own words)."""
    out: Responses = {
        **AUTH,
        400: {"model": ErrorBody, "description": "Invalid JSON or UTF-8"},
        403: {"model": ErrorBody, "description": "Sent from another site's page (CSRF guard)"},
        404: {"model": ErrorBody, "description": not_found},
        413: {"model": ErrorBody, "description": "The body is over the size cap"},
        422: {"model": ErrorBody, "description": invalid},
    }
    if conflict is not None:
        out[409] = {"model": ErrorBody, "description": conflict}
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))


class Refused(Exception):
    """A change that cannot be made; `status` is the HTTP answer. Raised inside the write
    transaction, so nothing of it is written."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def refused(exc: Refused) -> JSONResponse:
    """A refusal as the API answers it."""
    return JSONResponse(status_code=exc.status, content={"error": str(exc)})


async def read_form(request: Request, max_bytes: int) -> dict[str, str]:
    """An urlencoded form of at most `max_bytes` (raises FormError: 415, 413, 400)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    body = await request.body()
    if body and content_type != "application/x-www-form-urlencoded":
        raise FormError(415, ["send the form urlencoded (application/x-www-form-urlencoded)"])
    if len(body) > max_bytes:
        raise FormError(413, ["the form is too long"])
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise FormError(400, ["the form is not valid UTF-8"]) from None
