"""The API docs pages (Swagger UI, ReDoc) on vendored assets, so they work offline."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

# static/VENDORED.md says where each file comes from and under which license.
SWAGGER_JS = "/static/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "/static/swagger-ui/swagger-ui.css"
REDOC_JS = "/static/redoc/redoc.standalone.js"
FAVICON = "/static/favicon.svg"
# Only this server's files: the bundles' own outside links (ReDoc's footer logo) stay
# unfetched, online or not. Their inline bootstrap script and styles, data: icons and
# ReDoc's blob: search worker are allowed. Like every page, never framed by another site.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:;"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)


def _openapi_url(request: Request) -> str:
    return request.app.openapi_url or "/openapi.json"


@router.api_route("/docs", methods=["GET", "HEAD"])
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for the OpenAPI schema."""
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} · API",
        swagger_js_url=SWAGGER_JS,
        swagger_css_url=SWAGGER_CSS,
        swagger_favicon_url=FAVICON,
        # No schema is ever sent to the public online validator.
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers["Content-Security-Policy"] = CSP
    return page


@router.api_route("/redoc", methods=["GET", "HEAD"])
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc for the OpenAPI schema."""
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} · API",
        redoc_js_url=REDOC_JS,
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = CSP
    return page
