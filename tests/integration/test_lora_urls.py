"""LoRA adapters from URLs on the shared stack: an adapter served over plain http by a local
server on 127.0.0.1 (a host the stack's ``server.inputs.allowed_http_hosts`` lists) is registered
through ``POST /v1/admin/loras``, kept once in storage by content hash, pinned, and used by a
generation; a private address and a body that is not safetensors are refused naming ``source``."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
GEN = "/v1/models/sd15-tiny/generate"
ROUTES: dict[str, bytes] = {}
HITS: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        HITS.append(self.path)
        body = ROUTES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def adapter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny sd15 adapter (and a body that is no adapter) served on 127.0.0.1."""
    from genmedia.models import registry
    from genmedia.models.lora import build_tiny_adapter
    from genmedia.models.weights import resolve_source

    pipe = registry.family_module("sd15").load_pipeline(resolve_source("tiny://sd15"))
    path = tmp_path_factory.mktemp("lora-url") / "style.safetensors"
    ROUTES["/style.safetensors"] = build_tiny_adapter(pipe, "sd15", path, seed=7).read_bytes()
    ROUTES["/page.html"] = b"<html>no adapter here</html>"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _register(http: Any, aid: str, source: str) -> Any:
    return http.post(
        "/v1/admin/loras", json={"id": aid, "base_model": "sd15-tiny", "source": source}
    )


def _image_sha(http: Any, **body: Any) -> str:
    r = http.post(GEN, json={"prompt": "a fox", "seed": 5, "num_inference_steps": 2, **body})
    assert r.status_code == 200, r.text
    return str(r.json()["images"][0]["sha256"])


def test_an_adapter_from_an_allowed_http_url_is_stored_once_and_used(
    http: Any, serve_app: Any, adapter_server: str
) -> None:
    catalog = serve_app[1]
    if "127.0.0.1" not in catalog.server.inputs.allowed_http_hosts:
        r = _register(http, "url-style", f"{adapter_server}/style.safetensors")
        assert r.status_code == 422 and "allowed_http_hosts" in r.text, r.text
        pytest.skip("the shared stack does not list 127.0.0.1 in server.inputs.allowed_http_hosts")
    digest = hashlib.sha256(ROUTES["/style.safetensors"]).hexdigest()
    url = f"{adapter_server}/style.safetensors"
    HITS.clear()
    r = _register(http, "url-style", url)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["source"] == f"{url}#sha256={digest}" and body["sha256"] == digest
    assert body["status"] == "ready" and body["rank"] == 4
    # the same content again, pinned: the stored copy is used, nothing is downloaded
    r = _register(http, "url-style-pinned", body["source"])
    assert r.status_code == 201, r.text
    assert HITS == ["/style.safetensors"]
    stored = Path(catalog.server.storage.dir) / "_loras"
    assert [p.name for p in stored.iterdir()] == [f"sha256-{digest}.safetensors"]

    listed = {a["id"]: a for a in http.get("/v1/loras").json()["loras"]}
    assert listed["url-style"]["source"] == body["source"]  # admins see the URL
    with_url = _image_sha(http, loras=[{"id": "url-style"}])
    assert with_url != _image_sha(http)
    assert _image_sha(http, loras=[{"id": "url-style-pinned"}]) == with_url
    for aid in ("url-style", "url-style-pinned"):
        assert http.delete(f"/v1/admin/loras/{aid}").status_code == 200


def test_refused_adapter_urls_name_source(http: Any, adapter_server: str) -> None:
    cases = [
        ("http://10.0.0.1/a.safetensors", "10.0.0.1"),
        ("https://169.254.169.254/latest", "169.254.169.254"),
        (f"{adapter_server}/page.html", ""),  # not safetensors (or a host not allowed)
    ]
    for source, words in cases:
        r = _register(http, "url-bad", source)
        assert r.status_code == 422, (source, r.text)
        err = r.json()["error"]
        assert any(f["field"] == "source" for f in err.get("fields") or []), err
        assert words in err["message"], err
    assert "url-bad" not in {a["id"] for a in http.get("/v1/loras").json()["loras"]}
