"""What the benchmark scripts share: where results go, the one-model tiny SD1.5 catalog they
serve, the bare pipeline's images/s, closed-loop and open-loop (Poisson) clients of the sync
endpoint, rates of any API call (``call_loop``), percentiles from raw samples, the machine and
commit measured. The stack itself (tenants, a local Ray and Serve) is
``genmedia.loadtests.local`` and ``genmedia.deployments.serve.local``.

Every benchmark writes its summary (``.json``, and ``.md`` / ``.png`` where it makes them) to
``loadtests/results/`` and its raw samples to ``loadtests/results/raw/``, which git ignores:
commit a summary when the docs cite it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from genmedia.loadtests.local import RAW, RESULTS
from genmedia.models.catalog import Catalog

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "bench-sd15"
TINY_PARAMETERS = {
    "width": {"default": 64, "min": 32, "max": 256},
    "height": {"default": 64, "min": 32, "max": 256},
    "steps": {"default": 8, "min": 1, "max": 50},
    "num_images": {"default": 1, "min": 1, "max": 8},
}


def sd15_catalog(
    work: str | Path,
    *,
    server: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    loras: list[dict[str, Any]] | None = None,
    worker: dict[str, Any] | None = None,
) -> Catalog:
    """The tiny SD1.5-style model as ``MODEL`` (64 px, batches of 8, half a GPU, one worker
    CPU), outputs and job store under ``work``; each argument overrides its part."""
    from genmedia.models.catalog import parse_catalog

    storage = {"storage": {"kind": "local", "dir": f"{work}/outputs"}}
    scheduler = {"scheduler": {"job_store": f"{work}/jobs.sqlite"}}
    entry = {
        "id": MODEL,
        "family": "sd15",
        "weights": "tiny://sd15",
        "parameters": {**TINY_PARAMETERS, **(parameters or {})},
        "max_batch_size": 8,
        "gpu_fraction": 0.5,
        **(model or {}),
    }
    data: dict[str, Any] = {
        "server": {**storage, **scheduler, **(server or {})},
        "workers": {"sd15": {"num_cpus": 1, **(worker or {})}},
        "models": [entry],
    }
    if loras:
        data["loras"] = loras
    return parse_catalog(data, "<bench>")


def serving_catalog(
    batch: int,
    steps: int,
    size: int,
    workdir: str,
    *,
    engine: str = "request",
    num_cpus: float = 1,
    server: dict[str, Any] | None = None,
) -> Catalog:
    """The tiny SD1.5 catalog the serving benchmarks measure: one image per request, ``batch``
    images per pipeline call, ``steps`` steps at ``size`` px, the worker on ``num_cpus`` CPUs
    running ``engine``; the gateway and scheduler a quarter CPU each; ``server`` overrides
    other server settings."""
    return sd15_catalog(
        workdir,
        server={"gateway_num_cpus": 0.25, "scheduler_num_cpus": 0.25, **(server or {})},
        parameters={
            "width": {"default": size, "min": 32, "max": 512},
            "height": {"default": size, "min": 32, "max": 512},
            "steps": {"default": steps, "min": 1, "max": 100},
            "num_images": {"default": 1, "min": 1, "max": 1},
        },
        model={"max_batch_size": batch},
        worker={"num_cpus": num_cpus, "engine": engine},
    )


def ensure_weights(catalog: Catalog) -> None:
    """Build the tiny weights the catalog names (once per machine); exit naming any problem."""
    from genmedia.deployments.cli.preflight import check_weights

    issues = check_weights(catalog, build_tiny=True)
    if issues:
        raise SystemExit(f"weights: {issues}")


def poisson(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Arrival times of a Poisson process at ``rate`` per second in ``[0, seconds)``."""
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(t)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call_loop(
    url: str,
    seconds: float,
    call: Callable[[httpx.AsyncClient, int], Awaitable[int]],
    clients: int = 16,
) -> dict[str, Any]:
    """Rates of any API call: ``clients`` clients calling back to back for ``seconds``;
    ``call`` answers how many operations one call did (a bulk submit: its jobs)."""
    ops, errors, latencies = 0, 0, []
    deadline = time.perf_counter() + seconds
    counter = itertools.count()
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:

        async def one() -> None:
            nonlocal ops, errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    done = await call(client, next(counter))  # (ops += await ... loses counts)
                    ops += done
                    latencies.append(time.perf_counter() - t0)
                except (httpx.HTTPError, AssertionError):
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {
        "ops": ops,
        "errors": errors,
        "seconds": elapsed,
        "rate": ops / elapsed,
        "p50_s": percentile(sorted(latencies), 50) if latencies else math.nan,
        "p99_s": percentile(sorted(latencies), 99) if latencies else math.nan,
        "latencies_s": latencies,  # raw samples, one per call
    }


def commit() -> str:
    """The short commit measured, or ``unknown`` outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save(name: str, summary: dict[str, Any], raw: Iterable[dict[str, Any]]) -> tuple[Path, Path]:
    """``summary`` to ``RESULTS/<name>.json`` and the raw rows to ``RAW/<name>.jsonl``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    RAW.mkdir(parents=True, exist_ok=True)
    summary_path = RESULTS / f"{name}.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    raw_path = RAW / f"{name}.jsonl"
    with raw_path.open("w") as fh:
        for row in raw:
            fh.write(json.dumps(row) + "\n")
    return summary_path, raw_path


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of raw samples (sorted)."""
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


# -- the bare pipeline ------------------------------------------------------------------------
def measure_bare(model: Any, batch: int, seconds: float, seed0: int) -> dict[str, Any]:
    """Images/s of back-to-back pipeline calls of ``batch`` images in this process, with the
    torch threads the caller set."""
    from genmedia.models.params import GenerateRequest, resolve_request
    from genmedia.models.runner import run_batch

    def jobs(k: int) -> list:
        out = []
        for i in range(batch):
            job, _ = resolve_request(
                model.entry,
                GenerateRequest(prompt="a red fox", seed=seed0 + k * batch + i),
                request_id=f"bare-{k}-{i}",
            )
            out.append(job)
        return out

    run_batch(model, jobs(10**5))  # warm-up
    calls = []
    start = time.perf_counter()
    k = 0
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        run_batch(model, jobs(k))
        calls.append(time.perf_counter() - t0)
        k += 1
    elapsed = time.perf_counter() - start
    return {
        "images": k * batch,
        "seconds": elapsed,
        "images_per_s": k * batch / elapsed,
        "call_seconds": calls,
    }


# -- clients of the sync endpoint -------------------------------------------------------------
async def _generate(
    client: httpx.AsyncClient, seed: int, priority: str | None = None
) -> dict[str, Any]:
    t0 = time.perf_counter()
    body: dict[str, Any] = {"prompt": "a red fox", "seed": seed}
    if priority is not None:
        body["priority"] = priority
    r = await client.post(f"/v1/models/{MODEL}/generate", json=body)
    t1 = time.perf_counter()
    body = r.json()
    return {
        "sent": t0,
        "done": t1,
        "status": r.status_code,
        "latency_s": t1 - t0,
        "batch_images": body.get("batch", {}).get("images"),
        "queue_s": body.get("timings", {}).get("queue_s"),
        "wait_s": body.get("timings", {}).get("wait_s"),  # on the replica, before computing
        "paused_s": body.get("timings", {}).get("paused_s"),
        "compute_s": body.get("timings", {}).get("compute_s"),
    }


def _client(url: str, api_key: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {api_key}"}
    return httpx.AsyncClient(base_url=url, timeout=300, limits=limits, headers=headers)


async def closed_loop(
    url: str,
    api_key: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    priority: str | None = None,
) -> dict[str, Any]:
    """Saturation: ``concurrency`` requests always in flight (of ``priority``, else the
    tenant's default class); counts the answers that end in the window after ``warmup``."""
    samples: list[dict[str, Any]] = []
    stop_at = time.perf_counter() + warmup + seconds
    window_start = time.perf_counter() + warmup
    async with _client(url, api_key, concurrency) as client:
        seed = iter(range(10**9))

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                samples.append(await _generate(client, next(seed), priority))

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    in_window = [
        s
        for s in samples
        if window_start <= s["done"] <= window_start + seconds and s["status"] == 200
    ]
    return {
        "images": len(in_window),
        "seconds": seconds,
        "images_per_s": len(in_window) / seconds,
        "errors": sum(1 for s in samples if s["status"] != 200),
        "mean_batch_images": statistics.fmean(s["batch_images"] for s in in_window)
        if in_window
        else 0.0,
        "samples": samples,
    }


async def open_loop(
    url: str,
    api_key: str,
    rate: float,
    seconds: float,
    warmup: float,
    seed: int,
    priority: str | None = None,
) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` a second for ``warmup + seconds``, each request on its own
    (no waiting for earlier answers); latency percentiles and throughput of the requests sent
    in the window after ``warmup``."""
    arrivals = poisson(rate, warmup + seconds, random.Random(seed))
    async with _client(url, api_key, 1000) as client:
        t0 = time.perf_counter() + 0.2

        async def one(i: int, at: float) -> dict[str, Any]:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            return {"offset_s": at, **(await _generate(client, seed * 10**6 + i, priority))}

        samples = await asyncio.gather(*(one(i, at) for i, at in enumerate(arrivals)))
    lo, hi = t0 + warmup, t0 + warmup + seconds
    ok = [s for s in samples if s["status"] == 200 and lo <= s["sent"] < hi]
    lat = sorted(s["latency_s"] for s in ok)
    last = max((s["done"] for s in ok), default=hi)
    return {
        "rate": rate,
        "sent": sum(1 for s in samples if lo <= s["sent"] < hi),
        "errors": sum(1 for s in samples if s["status"] != 200),
        "p50_s": statistics.median(lat) if lat else None,
        "p99_s": percentile(lat, 99) if lat else None,
        # what the window's requests got through: answered ÷ (sent span + the last one's wait)
        "images_per_s": len(ok) / (max(last, hi) - lo),
        "mean_batch_images": statistics.fmean(s["batch_images"] or 0 for s in ok) if ok else 0.0,
        "samples": list(samples),
    }
