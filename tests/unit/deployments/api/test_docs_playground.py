"""The pages the gateway serves to browsers, without Ray or a browser: ``/docs`` and ``/redoc``
load only the gateway's own files, ``/playground`` and its modules are in the package, and
``/`` links them. The same pages run in real Chromium in tests/integration."""

from __future__ import annotations

import re

import pytest

from genmedia.deployments.store.storage import LocalDirStorage
from tests.unit.deployments.api.test_api import make_client
from tests.unit.deployments.fakes import FakeScheduler


@pytest.fixture
def client(tmp_path):
    storage = LocalDirStorage(tmp_path)
    return make_client(FakeScheduler(storage), storage)


def _sources(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_the_gateways_files(client, page):
    r = client.get(page)
    assert r.status_code == 200
    assert "default-src 'self'" in r.headers["content-security-policy"]
    sources = _sources(r.text)
    assert sources and all(s.startswith("/") for s in sources), sources
    for src in sources:
        if src.startswith("/docs-assets/"):
            asset = client.get(src)
            assert asset.status_code == 200 and len(asset.content) > 1000, src
    assert "cdn.jsdelivr.net" not in r.text and "fonts.googleapis.com" not in r.text


def test_swagger_ui_knows_the_bearer_scheme(client):
    scheme = client.get("/openapi.json").json()["components"]["securitySchemes"]["APIKey"]
    assert scheme == {"type": "http", "scheme": "bearer", "description": scheme["description"]}
    assert "oauth2RedirectUrl" in client.get("/docs").text
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_playground_page_and_modules(client):
    r = client.get("/playground", headers={"Authorization": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "{{root}}" not in r.text
    for testid in ("api-key", "model-select", "prompt", "generate", "progress", "preview"):
        assert f'data-testid="{testid}"' in r.text
    for testid in ("cancel", "result", "error"):
        assert f'data-testid="{testid}"' in r.text
    for name in ("app.js", "api.js", "form.js", "result.js", "snippets.js", "style.css"):
        asset = client.get(f"/playground/static/{name}")
        assert asset.status_code == 200 and asset.content, name
    # every module the page imports is served
    app_js = client.get("/playground/static/app.js").text
    for module in re.findall(r'from "\./([a-z]+\.js)"', app_js):
        assert client.get(f"/playground/static/{module}").status_code == 200
    assert client.get("/playground/").status_code == 200


def test_index_links_playground_and_docs(client):
    body = client.get("/").json()
    assert body["links"]["playground"] == "/playground" and body["links"]["docs"] == "/docs"
    html = client.get("/", headers={"Accept": "text/html"}).text
    assert '<a href="/playground">playground</a>' in html
