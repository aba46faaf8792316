"""The browser playground (``/playground``) and the index (``/``) that links it with the docs.

Beside a request's way: static files shipped in the package (``static/playground/``: an HTML
page and plain ES modules, no build step, nothing fetched from the network). The page is a
client of the public API like any other: it sends the key the user typed as a Bearer header to
``/v1/models``, ``/v1/loras``, ``/v1/files`` and the queue routes, and reads the SSE stream.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

PLAYGROUND_URL = "/playground"
ASSETS_URL = "/playground/static"

# The page loads only its own files; outputs may come from a presigned (https) storage URL.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob: https:; media-src 'self' blob: https:; "
    "connect-src 'self' https:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

LINKS = {
    "playground": PLAYGROUND_URL,
    "docs": "/docs",
    "redoc": "/redoc",
    "openapi": "/openapi.json",
    "models": "/v1/models",
    "health": "/healthz",
}

router = APIRouter(include_in_schema=False)


def static_dir() -> Path:
    return Path(str(files("genmedia.deployments.api") / "static" / "playground"))


@cache
def _page() -> str:
    return (static_dir() / "index.html").read_text(encoding="utf-8")


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.api_route(PLAYGROUND_URL, methods=["GET", "HEAD"])
@router.api_route(PLAYGROUND_URL + "/", methods=["GET", "HEAD"])
async def playground(request: Request) -> HTMLResponse:
    """The page; ``{{root}}`` becomes the prefix the gateway is mounted under."""
    html = _page().replace("{{root}}", _root(request))
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-cache",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get("/")
async def index(request: Request) -> Response:
    """Where to go from the bare host: a page of links for a browser, JSON for anything else."""
    root = _root(request)
    links = {name: root + path for name, path in LINKS.items()}
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"service": request.app.title, "links": links})
    items = "".join(f'<li><a href="{url}">{name}</a></li>' for name, url in links.items())
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{request.app.title}</title></head><body>"
        f"<h1>{request.app.title}</h1><ul>{items}</ul></body></html>"
    )


def install_playground(app: FastAPI) -> None:
    """Adds ``/``, ``/playground`` and the page's static files to ``app``."""
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=static_dir()), name="playground-static")
