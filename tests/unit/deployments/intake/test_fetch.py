"""Input images given as URLs (``intake/fetch.py``, ``GatewayService._inputs``): fetched from a
local HTTP server on 127.0.0.1 that the config allows, under the webhook SSRF rules (a private
address, a redirect to one, plain http to another host, too many redirects and a body over the
limit are refused, naming the field and the rule), and stored once per content."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from genmedia.deployments.intake.fetch import UrlFetcher, is_fetch_url
from genmedia.deployments.intake.inputs import InputError
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.models.server_config import InputSettings
from tests.unit.deployments.api.test_api import make_client
from tests.unit.deployments.fakes import FakeScheduler


def _png(size: int = 64, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
ROUTES: dict[str, tuple[int, dict[str, str], bytes]] = {}
HITS: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        HITS.append(self.path)
        status, headers, body = ROUTES.get(self.path, (404, {}, b"no"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if headers.get("Transfer-Encoding") == "chunked":
            for i in range(0, len(body), 1000):
                part = body[i : i + 1000]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    ROUTES.clear()
    ROUTES["/a.png"] = (200, {"Content-Type": "image/png"}, PNG)
    ROUTES["/hop"] = (302, {"Location": "/a.png"}, b"")
    ROUTES["/to-private"] = (302, {"Location": "https://intranet.test/a.png"}, b"")
    ROUTES["/to-metadata"] = (307, {"Location": "http://169.254.169.254/latest"}, b"")
    ROUTES["/loop"] = (302, {"Location": "/loop"}, b"")
    ROUTES["/big"] = (200, {}, b"x" * 5000)
    ROUTES["/big-chunked"] = (200, {"Transfer-Encoding": "chunked"}, b"x" * 5000)
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()


def fake_resolve(host: str, port: int, *args: Any) -> list[Any]:
    """Names of the tests: intranet.test is private, localhost is loopback."""
    ips = {"intranet.test": "10.1.2.3", "localhost": "127.0.0.1", "public.test": "93.184.216.34"}
    if host not in ips:
        raise socket.gaierror(f"unknown host {host}")
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ips[host], port))]


def fetcher(max_bytes: int = 1 << 20, **settings: Any) -> UrlFetcher:
    settings.setdefault("allowed_http_hosts", ["127.0.0.1"])
    return UrlFetcher(InputSettings(**settings), max_bytes, resolve=fake_resolve)


def fetch(f: UrlFetcher, url: str) -> bytes:
    async def go() -> bytes:
        try:
            return await f.fetch(url, "image")
        finally:
            await f.aclose()

    return asyncio.run(go())


def refused(f: UrlFetcher, url: str) -> InputError:
    with pytest.raises(InputError) as e:
        fetch(f, url)
    assert e.value.field == "image"
    return e.value


def test_which_values_are_fetched() -> None:
    assert is_fetch_url("https://example.com/a.png")
    assert is_fetch_url(" HTTP://h/a.png")
    assert not is_fetch_url("http://gateway/v1/files/dev/a.png")  # this service's own file
    assert not is_fetch_url("upl_" + "0" * 32) and not is_fetch_url("iVBORw0KGgo=")


def test_an_allowed_http_host_is_fetched_and_redirects_are_followed(server: str) -> None:
    assert fetch(fetcher(), f"{server}/a.png") == PNG
    assert fetch(fetcher(), f"{server}/hop") == PNG


def test_http_to_a_host_not_allowed_is_refused(server: str) -> None:
    HITS.clear()
    e = refused(fetcher(), "http://public.test/a.png")  # public, but plain http
    assert e.limit == "scheme" and "allowed_http_hosts" in str(e)
    e = refused(fetcher(allowed_http_hosts=[]), f"{server}/a.png")
    assert e.limit == "public_address" and "loopback" in str(e)
    assert HITS == []


def test_a_private_or_loopback_address_is_refused_before_connecting(server: str) -> None:
    HITS.clear()
    e = refused(fetcher(), "https://intranet.test/a.png")
    assert e.limit == "public_address" and "10.1.2.3" in str(e) and "private" in str(e)
    port = server.rsplit(":", 1)[1]
    e = refused(fetcher(allowed_http_hosts=[]), f"https://localhost:{port}/a.png")
    assert e.limit == "public_address" and "loopback" in str(e)
    e = refused(fetcher(), "ftp://public.test/a.png")
    assert e.limit == "scheme"
    assert HITS == []


def test_a_redirect_to_a_private_address_is_refused(server: str) -> None:
    e = refused(fetcher(), f"{server}/to-private")
    assert e.limit == "public_address" and "10.1.2.3" in str(e)
    e = refused(fetcher(), f"{server}/to-metadata")
    assert e.limit == "public_address" and "metadata" in str(e)
    e = refused(fetcher(allowed_http_hosts=["127.0.0.1", "169.254.169.254"]), "https://x")
    assert e.limit == "resolve"


def test_redirects_are_bounded(server: str) -> None:
    e = refused(fetcher(max_redirects=3), f"{server}/loop")
    assert e.limit == 3 and "more than 3" in str(e)


def test_a_body_over_the_limit_is_refused(server: str) -> None:
    for path in ("/big", "/big-chunked"):
        e = refused(fetcher(max_bytes=4096), f"{server}{path}")
        assert e.limit == 4096 and "server.max_body_bytes" in str(e)
    e = refused(fetcher(), f"{server}/missing.png")
    assert "HTTP 404" in str(e)


# -- through the gateway -----------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Any) -> LocalDirStorage:
    return LocalDirStorage(tmp_path)


@pytest.fixture
def scheduler(storage: LocalDirStorage) -> FakeScheduler:
    return FakeScheduler(storage)


@pytest.fixture
def gateway(scheduler: Any, storage: Any) -> Any:
    client = make_client(scheduler, storage)
    service = client.app.state.service
    service.fetcher = fetcher(max_bytes=service.catalog.server.max_body_bytes)
    return client


def test_a_url_input_is_stored_once_under_the_tenant(
    gateway: Any, scheduler: Any, storage: Any, server: str
) -> None:
    for seed in (1, 2):
        r = gateway.post(
            "/v1/queue/models/sd15-tiny",
            json={"prompt": "x", "image": f"{server}/a.png", "seed": seed},
        )
        assert r.status_code == 202, r.text
    keys = [sub.job.extra["inputs"]["image"] for sub in scheduler.subs]
    assert keys[0] == keys[1] and keys[0].startswith("dev/inputs/url/")
    assert [o.key for o in storage.list_files("dev/inputs/")] == [keys[0]]
    assert scheduler.subs[0].job.params.task == "image-to-image"
    assert (scheduler.subs[0].job.params.width, scheduler.subs[0].job.params.height) == (64, 64)


def test_a_refused_url_is_422_naming_the_field_and_rule(gateway: Any, server: str) -> None:
    r = gateway.post(
        "/v1/queue/models/sd15-tiny",
        json={"prompt": "x", "image": "https://intranet.test/a.png"},
    )
    assert r.status_code == 422, r.text
    field = r.json()["error"]["fields"][0]
    assert field["field"] == "image" and field["limit"] == "public_address"


def test_url_inputs_can_be_turned_off(gateway: Any, server: str) -> None:
    gateway.app.state.service.fetcher = None
    r = gateway.post("/v1/queue/models/sd15-tiny", json={"prompt": "x", "image": f"{server}/a"})
    assert r.status_code == 422 and "allow_urls" in r.text
