"""What the benchmark scripts share: where results go, the one-model tiny SD1.5 catalog they
serve, Poisson arrival times, the commit measured. The stack itself (tenants, a local Ray and
Serve) is ``genmedia.loadtests.local`` and ``genmedia.deployments.serve.local``.

Every benchmark writes its summary (``.json``, and ``.md`` / ``.png`` where it makes them) to
``loadtests/results/`` and its raw samples to ``loadtests/results/raw/``, which git ignores:
commit a summary when the docs cite it.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
        "workers": {"sd15": {"num_cpus": 1}},
        "models": [entry],
    }
    if loras:
        data["loras"] = loras
    return parse_catalog(data, "<bench>")


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
