"""A real genmedia stack on this machine for the simulator's calibration and validation: the
``genmedia serve`` command in a child process (local Ray + Serve, loopback only), a tenant with
a known key and generous quotas, outputs and job store in a temporary directory. Stopped with
SIGTERM, which shuts down what it started. Callers hold ``/tmp/genmedia-ray.lock``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx
import yaml

from genmedia.loadtests.local import free_port

API_KEY = "gm_51a0c0de_" + "s" * 43
TENANT = "sim"


@dataclass(frozen=True)
class Stack:
    url: str
    api_key: str
    catalog: Path
    tenants: Path
    pid: int  # of the ``genmedia serve`` process; Ray's processes are its descendants


def default_catalog_data() -> dict:
    ref = resources.files("genmedia.models") / "catalogs" / "default.yaml"
    return yaml.safe_load(ref.read_text())


def tenants_data(tenant_ids: list[str]) -> dict:
    from genmedia.deployments.tenants.config import key_record

    generous = {
        "max_concurrent_jobs": 10_000,
        "requests_per_minute": 1_000_000,
        "max_queued_jobs": 100_000,
    }
    tenants = []
    for i, tid in enumerate(dict.fromkeys([TENANT, *tenant_ids])):
        key = API_KEY if i == 0 else f"gm_{i:08x}_" + "k" * 43
        tenants.append(
            {"id": tid, "api_keys": [key_record(key).model_dump(mode="json")], "quotas": generous}
        )
    return {"tenants": tenants}


def tenant_key(tenant_ids: list[str], tenant: str) -> str:
    ids = list(dict.fromkeys([TENANT, *tenant_ids]))
    i = ids.index(tenant)
    return API_KEY if i == 0 else f"gm_{i:08x}_" + "k" * 43


def with_local_state(data: dict, work: Path) -> dict:
    """Catalog ``data`` with its outputs and job store under ``work`` (a copy)."""
    data = dict(data)
    server = dict(data.get("server") or {})
    server["storage"] = {"kind": "local", "dir": str(work / "outputs")}
    server["scheduler"] = {**(server.get("scheduler") or {}), "job_store": str(work / "jobs.db")}
    data["server"] = server
    return data


def wait_ready(url: str, timeout_s: float, alive: Callable[[], None] = lambda: None) -> None:
    """Poll ``url``'s ``/readyz`` every second until it answers 200; ``alive`` raises when the
    server is gone (checked first each time); RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} was not ready in {timeout_s:.0f} s")
        time.sleep(1.0)


@contextlib.contextmanager
def local_stack(
    catalog: dict | None = None, tenant_ids: list[str] = (), ready_timeout_s: float = 240.0
) -> Iterator[Stack]:
    """Serve ``catalog`` (default: the embedded tiny catalog) until the block ends."""
    work = Path(tempfile.mkdtemp(prefix="genmedia-sim-stack-"))
    data = with_local_state(catalog or default_catalog_data(), work)
    cat_path = work / "catalog.yaml"
    cat_path.write_text(yaml.safe_dump(data))
    ten_path = work / "tenants.yaml"
    ten_path.write_text(yaml.safe_dump(tenants_data(list(tenant_ids))))
    port = free_port()
    exe = Path(sys.executable).with_name("genmedia")
    log = (work / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            "--catalog",
            str(cat_path),
            "--tenants",
            str(ten_path),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
    )
    url = f"http://127.0.0.1:{port}"

    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"genmedia serve exited early; see {work / 'serve.log'}")

    try:
        wait_ready(url, ready_timeout_s, alive)
        yield Stack(url, API_KEY, cat_path, ten_path, proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def loadtest_command(scenario: Path, url: str, api_key: str, out: Path, note: str) -> list[str]:
    """The harness's ``genmedia loadtest run`` for one replay of ``scenario`` into ``out``."""
    exe = Path(sys.executable).with_name("genmedia")
    return [str(exe), "loadtest", "run", "--scenario", str(scenario), "--url", url,
            "--api-key", api_key, "--out", str(out), "--note", note]  # fmt: skip
