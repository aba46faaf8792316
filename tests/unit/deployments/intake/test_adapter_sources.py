"""LoRA adapter sources given as URLs (``intake/adapter_sources.py``, the gateway's
``register_adapter``): fetched from a local HTTP server on 127.0.0.1 that the config allows,
checked as safetensors, stored once by content hash and pinned; private addresses, bodies over
the limit, non-safetensors bodies and a digest other than the pin are refused naming ``source``."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import socket
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from safetensors.numpy import save

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.adapter_sources import (
    AdapterSources,
    adapter_key,
    is_url_source,
    split_pin,
)
from genmedia.deployments.intake.fetch import UrlFetcher
from genmedia.deployments.intake.inputs import InputError
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.protocol import AdapterError, AdapterRecord
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.schema import parse_tenants
from genmedia.models.catalog import Catalog, LoraEntry, load_catalog
from tests.unit.deployments.fakes import FakeScheduler

T = TypeVar("T")
ADAPTER = save({"unet.down.0.to_q.lora_A.weight": np.zeros((4, 8), np.float32)})
DIGEST = hashlib.sha256(ADAPTER).hexdigest()
ROUTES: dict[str, bytes] = {
    "/a.safetensors": ADAPTER,
    "/copy.safetensors": ADAPTER,
    "/big.safetensors": ADAPTER + b"\0" * 4096,
    "/model.pt": pickle.dumps({"w": [1, 2, 3]}),
    "/page.html": b"<html>not an adapter</html>",
}
HITS: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    """Serves ``ROUTES``; paths under ``/etag/`` with an ETag, answering 304 to a match."""

    def do_GET(self) -> None:
        HITS.append(self.path)
        body = ROUTES.get(self.path)
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"' if body is not None else None
        if self.path.startswith("/etag/") and etag == self.headers.get("If-None-Match"):
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200 if body is not None else 404)
        if etag and self.path.startswith("/etag/"):
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_server() -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving ``ROUTES``; its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with http_server() as url:
        yield url


def fake_resolve(host: str, port: int, *args: Any) -> list[Any]:
    ips = {"intranet.test": "10.1.2.3", "public.test": "93.184.216.34"}
    if host not in ips:
        raise socket.gaierror(f"unknown host {host}")
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ips[host], port))]


def url_catalog(storage_dir: Path, loras: list[dict[str, Any]] | None = None, **inputs: Any):
    """The default catalog, its storage in ``storage_dir``, 127.0.0.1 allowed over http."""
    data = load_catalog().model_dump(mode="json")
    data["server"]["storage"] = {"kind": "local", "dir": str(storage_dir)}
    data["server"]["inputs"].update({"allowed_http_hosts": ["127.0.0.1"], **inputs})
    data["loras"] = data["loras"] + (loras or [])
    return Catalog.model_validate(data)


def sources(tmp_path: Path, **inputs: Any) -> AdapterSources:
    catalog = url_catalog(tmp_path / "files", **inputs)
    fetcher = UrlFetcher(catalog.server.inputs, 1 << 20, resolve=fake_resolve)
    return AdapterSources(catalog, LocalDirStorage(tmp_path / "files"), fetcher)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def refused(src: AdapterSources, url: str) -> InputError:
    with pytest.raises(InputError) as e:
        run(src.resolve(url))
    assert e.value.field == "source"
    return e.value


def stored_keys(src: AdapterSources) -> list[str]:
    return sorted(o.key for o in src.storage.list_files("_loras/"))


def test_which_sources_are_urls_and_their_pins() -> None:
    assert is_url_source("https://h/a.safetensors") and is_url_source(" HTTP://h/a")
    assert not is_url_source("s3://b/a.safetensors") and not is_url_source("tiny://sd15/a")
    assert split_pin(f"https://h/a#sha256={DIGEST}") == ("https://h/a", DIGEST)
    assert split_pin("https://h/a") == ("https://h/a", None)


def test_a_url_is_fetched_checked_and_stored_once_by_content_hash(
    tmp_path: Path, server: str
) -> None:
    src = sources(tmp_path)
    HITS.clear()
    first = run(src.resolve(f"{server}/a.safetensors"))
    again = run(src.resolve(f"{server}/copy.safetensors"))  # same bytes, another URL
    assert first.sha256 == again.sha256 == DIGEST and first.fetched
    assert first.source == f"{server}/a.safetensors#sha256={DIGEST}"
    assert stored_keys(src) == [adapter_key(DIGEST)] == [f"_loras/sha256-{DIGEST}.safetensors"]
    assert Path(first.location).read_bytes() == ADAPTER
    assert first.location == again.location
    # the pinned source of stored content is not downloaded again
    pinned = run(src.resolve(first.source))
    assert not pinned.fetched and pinned.location == first.location
    assert HITS == ["/a.safetensors", "/copy.safetensors"]


def test_a_url_fetched_before_is_revalidated_not_downloaded_again(
    tmp_path: Path, server: str
) -> None:
    src = sources(tmp_path)
    url = f"{server}/etag/a.safetensors"
    ROUTES["/etag/a.safetensors"] = ADAPTER
    first = run(src.resolve(url))
    again = run(src.resolve(url))  # 304: the stored copy
    assert first.fetched and not again.fetched and again.source == first.source
    changed = save({"unet.down.0.to_q.lora_A.weight": np.ones((4, 8), np.float32)})
    ROUTES["/etag/a.safetensors"] = changed  # new content at the same URL: fetched again
    third = run(src.resolve(url))
    assert third.fetched and third.sha256 == hashlib.sha256(changed).hexdigest()
    assert len(stored_keys(src)) == 3  # two contents and the URL's validators
    assert Path(third.location).read_bytes() == changed


def test_a_private_address_is_refused_before_connecting(tmp_path: Path, server: str) -> None:
    src = sources(tmp_path)
    HITS.clear()
    e = refused(src, "https://intranet.test/a.safetensors")
    assert e.limit == "public_address" and "10.1.2.3" in str(e)
    port = server.rsplit(":", 1)[1]
    e = refused(sources(tmp_path, allowed_http_hosts=[]), f"{server}/a.safetensors")
    assert e.limit == "public_address" and "loopback" in str(e)
    e = refused(src, "http://public.test/a.safetensors")  # plain http to a host not listed
    assert e.limit == "scheme" and "allowed_http_hosts" in str(e)
    assert f":{port}" in server and HITS == [] and stored_keys(src) == []


def test_a_body_over_the_adapter_limit_is_413_naming_it(tmp_path: Path, server: str) -> None:
    src = sources(tmp_path, adapter_max_bytes=2048)
    e = refused(src, f"{server}/big.safetensors")
    assert e.status == 413 and e.limit == 2048
    assert "2048 bytes" in str(e) and "server.inputs.adapter_max_bytes" in str(e)
    assert stored_keys(src) == []


def test_a_body_that_is_not_safetensors_is_refused_and_not_stored(
    tmp_path: Path, server: str
) -> None:
    src = sources(tmp_path)
    for path in ("/model.pt", "/page.html"):
        e = refused(src, f"{server}{path}")
        assert e.status == 422 and e.limit == "safetensors" and "not a safetensors" in str(e)
    e = refused(src, f"{server}/missing.safetensors")
    assert "HTTP 404" in str(e)
    assert stored_keys(src) == []


def test_a_body_other_than_the_pin_is_refused(tmp_path: Path, server: str) -> None:
    src = sources(tmp_path)
    e = refused(src, f"{server}/a.safetensors#sha256={'0' * 64}")
    assert e.limit == "sha256" and DIGEST in str(e)
    assert stored_keys(src) == []


def test_url_sources_off_are_refused(tmp_path: Path) -> None:
    src = sources(tmp_path)
    src.fetcher = None
    e = refused(src, "https://public.test/a.safetensors")
    assert "server.inputs.allow_urls" in str(e)


# -- through the gateway -----------------------------------------------------------------------


class Registering(FakeScheduler):
    """Records the entries the gateway forwards."""

    def __init__(self, storage: LocalDirStorage) -> None:
        super().__init__(storage)
        self.specs: list[LoraEntry] = []

    async def register_adapter(self, spec: LoraEntry) -> AdapterRecord | AdapterError:
        self.specs.append(spec)
        return AdapterRecord(spec.id, spec.base_model, spec.source, "", "api", "ready")


def gateway(tmp_path: Path, **inputs: Any) -> tuple[GatewayService, Registering]:
    catalog = url_catalog(tmp_path / "files", **inputs)
    storage = LocalDirStorage(tmp_path / "files")
    scheduler = Registering(storage)
    tenants = parse_tenants({"tenants": [{"id": "dev", "api_keys": [], "admin": True}]})
    service = GatewayService(catalog, scheduler, Authenticator(tenants), storage=storage)
    return service, scheduler


def test_the_gateway_fetches_and_forwards_the_pinned_source(tmp_path: Path, server: str) -> None:
    service, scheduler = gateway(tmp_path)
    tenant = service.auth.tenants["dev"]
    spec = {"id": "a", "base_model": "sd15-tiny", "source": f"{server}/a.safetensors"}
    body = run(service.register_adapter(tenant, spec))
    assert body["source"] == f"{server}/a.safetensors#sha256={DIGEST}"
    assert scheduler.specs[0].source == body["source"]
    assert [o.key for o in service.storage.list_files("_loras/")] == [adapter_key(DIGEST)]


def test_the_gateway_refuses_naming_source_and_the_limit(tmp_path: Path, server: str) -> None:
    service, scheduler = gateway(tmp_path, adapter_max_bytes=2048)
    tenant = service.auth.tenants["dev"]
    spec = {"id": "a", "base_model": "sd15-tiny", "source": f"{server}/big.safetensors"}
    with pytest.raises(ApiError) as e:
        run(service.register_adapter(tenant, spec))
    assert (e.value.status, e.value.type) == (413, "payload_too_large")
    assert e.value.fields[0]["field"] == "source" and e.value.fields[0]["limit"] == 2048
    spec["source"] = f"{server}/page.html"
    with pytest.raises(ApiError) as e:
        run(service.register_adapter(tenant, spec))
    assert (e.value.status, e.value.type) == (422, "invalid_adapter")
    assert scheduler.specs == []
