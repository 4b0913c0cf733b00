"""The login page of the access token: a form that trades the token for a cookie.

The token is only ever compared: never logged, echoed into a page or written to the log.
The form is a state-changing POST like any other, so the cross-site guard covers it.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from persona.web.security import COOKIE, LOGIN_PATH, Access, safe_next
from persona.web.templating import templates

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)
LOGIN = "login.html"


def access_of(request: Request) -> Access | None:
    """The app's token checks; None when no token is configured."""
    access: Access | None = getattr(request.app.state, "access", None)
    return access


def login_form(request: Request, target: str, error: str | None, status: int) -> Response:
    """The login page; `target` is where a successful login goes."""
    context = {"next": target, "error": error}
    return templates.TemplateResponse(request, LOGIN, context, status_code=status)


@router.api_route(LOGIN_PATH, methods=["GET", "HEAD"])
async def login_page(request: Request, next: str = "/") -> Response:
    """The login form (straight on to `next` when there is no token or already logged in)."""
    access, target = access_of(request), safe_next(next)
    if access is None or access.cookie_ok(request.cookies.get(COOKIE)):
        return RedirectResponse(target, status_code=303)
    return login_form(request, target, None, 200)


@router.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    """Check the submitted token; set the login cookie and go on to `next`, or 401."""
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
    access, target = access_of(request), safe_next(form.get("next"))
    if access is None:
        return RedirectResponse(target, status_code=303)
    if not access.token_ok(form.get("token", "")):
        client = request.client.host if request.client else "unknown"
        log.warning("failed login from %s", client)
        return login_form(request, target, "That is not the access token.", 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        access.cookie_value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Clear the login cookie and show the login page."""
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(
        COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response
