"""``/docs`` (Swagger UI) and ``/redoc`` served without a network: their scripts and styles come
from the gateway itself, not from a CDN.

Beside a request's way: these pages read ``/openapi.json`` and call the ``/v1`` routes like any
client. The files are those the ``fastapi-offline`` package ships (Swagger UI, Apache-2.0; ReDoc,
MIT; the package itself MIT), mounted at ``/docs-assets``. "Authorize" works because ``deps.py``
declares the API key as an HTTP bearer security scheme.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# The pages load nothing from elsewhere: ReDoc's sidebar asks a CDN for its logo, which the
# browser then refuses at once instead of waiting on a network that may not be there. Both
# pages start from an inline script; ReDoc renders with inline styles and a blob: worker.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

# Swagger UI's settings: no online validator badge (it would call out), keys kept only while
# the tab lives, "Try it out" answers show their duration.
SWAGGER_PARAMETERS = {
    "validatorUrl": None,
    "persistAuthorization": False,
    "displayRequestDuration": True,
}


def assets_dir() -> Path:
    """The folder holding swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and
    favicon.png."""
    return Path(str(files("fastapi_offline") / "static"))


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def install_docs(app: FastAPI) -> None:
    """Adds the offline ``/docs``, ``/redoc`` and their assets to ``app`` (built with
    ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )
        page.headers["Content-Security-Policy"] = CSP
        return page

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CSP
        return page
