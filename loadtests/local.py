"""A real genmedia stack on this machine, loopback only, for the benchmarks, the simulator's
calibration and validation, and the integration tests: tenants with known keys and generous
quotas, a catalog whose outputs and job store live in a work directory, a free port, and the
``genmedia serve`` command in a child process (``local_stack``). The Ray calls themselves (an
in-process stack) are in ``deployments/serve/local.py``. Also where results go.

Callers that start Ray hold a lock (``flock /tmp/genmedia-ray.lock``): one Ray per machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from genmedia.deployments.local_ports import free_port

if TYPE_CHECKING:
    from genmedia.deployments.tenants.schema import TenantsFile

RESULTS = Path(__file__).resolve().parent / "results"  # summaries; the docs cite some (in git)
RAW = RESULTS / "raw"  # raw samples and run directories (ignored by git)

API_KEY = "gm_51a0c0de_" + "s" * 43
TENANT = "sim"
GENEROUS = {  # quotas no benchmark reaches
    "max_concurrent_jobs": 10_000,
    "requests_per_minute": 1_000_000,
    "max_queued_jobs": 100_000,
}


def stamp() -> str:
    """UTC time for result file names: ``20261122T043300Z``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


# -- tenants -----------------------------------------------------------------------------------
def tenant_record(tenant: str, key: str, **fields: Any) -> dict[str, Any]:
    """One tenant of a tenants file: ``key`` (plaintext, hashed here), generous quotas; other
    fields (``weight``, ``admin``, ``quotas``, ...) as given."""
    from genmedia.deployments.tenants.keys import key_record

    api_keys = [key_record(key).model_dump(mode="json")]
    return {"id": tenant, "api_keys": api_keys, "quotas": GENEROUS, **fields}


def tenants_file(records: Iterable[dict[str, Any]], source: str = "<local tenants>") -> TenantsFile:
    """Parsed and validated tenants from ``tenant_record``s."""
    from genmedia.deployments.tenants.schema import parse_tenants

    return parse_tenants({"tenants": list(records)}, source)


def tenant_key(tenant_ids: list[str], tenant: str) -> str:
    """The key ``tenants_data(tenant_ids)`` gives ``tenant`` (``API_KEY`` for ``TENANT``)."""
    ids = list(dict.fromkeys([TENANT, *tenant_ids]))
    i = ids.index(tenant)
    return API_KEY if i == 0 else f"gm_{i:08x}_" + "k" * 43


def tenants_data(tenant_ids: list[str]) -> dict[str, Any]:
    """Tenants file data: ``TENANT`` (key ``API_KEY``) and ``tenant_ids``, generous quotas."""
    ids = list(dict.fromkeys([TENANT, *tenant_ids]))
    return {"tenants": [tenant_record(t, tenant_key(ids, t)) for t in ids]}


# -- catalog -----------------------------------------------------------------------------------
def default_catalog_data() -> dict[str, Any]:
    ref = resources.files("genmedia.models") / "catalogs" / "default.yaml"
    data: dict[str, Any] = yaml.safe_load(ref.read_text())
    return data


def with_local_state(data: dict[str, Any], work: Path) -> dict[str, Any]:
    """Catalog ``data`` with its outputs and job store under ``work`` (a copy)."""
    data = dict(data)
    server = dict(data.get("server") or {})
    server["storage"] = {"kind": "local", "dir": str(work / "outputs")}
    server["scheduler"] = {**(server.get("scheduler") or {}), "job_store": str(work / "jobs.db")}
    data["server"] = server
    return data


# -- a stack in this process -------------------------------------------------------------------
@contextlib.contextmanager
def ray_stack(
    *,
    num_cpus: int = 2,
    num_gpus: float = 1,
    logging_level: int = logging.ERROR,
    env_vars: dict[str, str] | None = None,
) -> Iterator[str]:
    """A local Ray with ``num_gpus`` logical GPUs and Serve's HTTP proxy on a free loopback
    port, in this process, until the block ends; yields the base URL. Apps are deployed into
    it with ``genmedia.deployments.serve.local.run_app``."""
    from genmedia.deployments.serve.local import local_cluster

    with local_cluster(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        port=free_port(),
        logging_level=logging_level,
        env_vars=env_vars,
    ) as url:
        yield url


# -- a stack in a child process ----------------------------------------------------------------
@dataclass(frozen=True)
class Stack:
    url: str
    api_key: str
    catalog: Path
    tenants: Path
    pid: int  # of the ``genmedia serve`` process; Ray's processes are its descendants


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


def _genmedia() -> str:
    return str(Path(sys.executable).with_name("genmedia"))


@contextlib.contextmanager
def local_stack(
    catalog: dict[str, Any] | None = None,
    tenant_ids: Iterable[str] = (),
    ready_timeout_s: float = 240.0,
) -> Iterator[Stack]:
    """``genmedia serve`` of ``catalog`` (default: the embedded tiny catalog) in a child process
    until the block ends; stopped with SIGTERM, which shuts down the Ray it started."""
    work = Path(tempfile.mkdtemp(prefix="genmedia-sim-stack-"))
    data = with_local_state(catalog or default_catalog_data(), work)
    cat_path = work / "catalog.yaml"
    cat_path.write_text(yaml.safe_dump(data))
    ten_path = work / "tenants.yaml"
    ten_path.write_text(yaml.safe_dump(tenants_data(list(tenant_ids))))
    port = free_port()
    log = (work / "serve.log").open("w")
    cmd = [_genmedia(), "serve", "--catalog", str(cat_path), "--tenants", str(ten_path),
           "--port", str(port)]  # fmt: skip
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"genmedia serve exited early; see {work / 'serve.log'}")

    try:
        wait_ready(url, ready_timeout_s, alive)
        yield Stack(url, API_KEY, cat_path, ten_path, proc.pid)
    finally:
        _terminate(proc)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def loadtest_command(scenario: Path, url: str, api_key: str, out: Path, note: str) -> list[str]:
    """The harness's ``genmedia loadtest run`` for one replay of ``scenario`` into ``out``."""
    return [_genmedia(), "loadtest", "run", "--scenario", str(scenario), "--url", url,
            "--api-key", api_key, "--out", str(out), "--note", note]  # fmt: skip
