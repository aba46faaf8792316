"""Pinned ÷ unpinned pipeline processes (``server.pin_worker_cpus``), alternated on one Ray.

For each engine (``--engines``), ``--repeats`` times: the tiny SD1.5 catalog deployed unpinned,
then pinned (the order alternates each repeat), ``--prewarm`` seconds of closed-loop load, a
bare pipeline run (this process, the stack idle), a ``--seconds`` closed loop of
``--concurrency`` clients, another bare run → efficiency = stack img/s ÷ the mean of the two
bare runs beside it, and the pipeline process's CPU milliseconds per image. This machine's
speed drifts within minutes, so only windows measured side by side are compared: the summary
gives every window and, per engine, the median efficiency pinned ÷ unpinned.

Summary to ``loadtests/results/bench_pinning-<stamp>.json``, raw samples to ``raw/``.

    flock /tmp/genmedia-ray.lock python benchmarks/bench_pinning.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any

from _bench import (
    closed_loop,
    commit,
    ensure_weights,
    machine,
    measure_bare,
    save,
    serving_catalog,
)
from _cpu import cpu_per_image, snapshot
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from genmedia.loadtests.local import ray_stack, stamp, tenant_record, tenants_file

API_KEY = "gm_0bec0002_" + "p" * 43
console = Console()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--engines", default="request,step")
    ap.add_argument("--repeats", type=int, default=2, help="pinned/unpinned pairs per engine")
    ap.add_argument("--seconds", type=float, default=20.0, help="closed-loop window")
    ap.add_argument("--prewarm", type=float, default=8.0)
    ap.add_argument("--bare-seconds", type=float, default=4.0, help="each bare run beside")
    ap.add_argument("--concurrency", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    return ap.parse_args()


def window(url: str, args: argparse.Namespace, model: Any, engine: str, pin: bool) -> dict:
    """One deploy: prewarm, bare, closed loop, bare."""
    from genmedia.deployments.serve.local import delete_app, run_app

    catalog = serving_catalog(
        args.batch,
        args.steps,
        args.size,
        tempfile.mkdtemp(prefix="genmedia-bench-pinning-"),
        engine=engine,
        server={"pin_worker_cpus": pin},
    )
    run_app(catalog, tenants_file([tenant_record("bench", API_KEY)]))
    try:
        asyncio.run(closed_loop(url, API_KEY, args.concurrency, args.prewarm, 0.0))
        before = measure_bare(model, args.batch, args.bare_seconds, seed0=1)
        cpu0, t0 = snapshot(), time.perf_counter()
        closed = asyncio.run(closed_loop(url, API_KEY, args.concurrency, args.seconds, 2.0))
        answered = sum(1 for s in closed["samples"] if s["status"] == 200)
        cpu = cpu_per_image(cpu0, snapshot(), answered, time.perf_counter() - t0)
        after = measure_bare(model, args.batch, args.bare_seconds, seed0=2)
    finally:
        delete_app()
    bare = (before["images_per_s"] + after["images_per_s"]) / 2
    return {
        "engine": engine,
        "pinned": pin,
        "images_per_s": closed["images_per_s"],
        "bare_beside_images_per_s": [before["images_per_s"], after["images_per_s"]],
        "efficiency": closed["images_per_s"] / bare,
        "pipeline_cpu_ms_per_image": cpu["ms_per_image"].get("pipeline process"),
        "samples": closed["samples"],
    }


def summarize(args: argparse.Namespace, windows: list[dict]) -> dict[str, Any]:
    per_engine = {}
    for engine in {w["engine"] for w in windows}:
        eff = {
            pin: statistics.median(
                w["efficiency"] for w in windows if w["engine"] == engine and w["pinned"] is pin
            )
            for pin in (True, False)
        }
        per_engine[engine] = {
            "efficiency_pinned": eff[True],
            "efficiency_unpinned": eff[False],
            "pinned_over_unpinned": eff[True] / eff[False],
        }
    return {
        "benchmark": "bench_pinning",
        "args": {k: v for k, v in vars(args).items()},
        "windows": [{k: v for k, v in w.items() if k != "samples"} for w in windows],
        "median": per_engine,
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def report(summary: dict[str, Any]) -> None:
    table = Table("engine", "pinned", "img/s", "bare beside", "efficiency", "pipeline ms/img")
    for w in summary["windows"]:
        table.add_row(
            w["engine"],
            "yes" if w["pinned"] else "no",
            f"{w['images_per_s']:.2f}",
            " / ".join(f"{b:.2f}" for b in w["bare_beside_images_per_s"]),
            f"{w['efficiency']:.3f}",
            f"{w['pipeline_cpu_ms_per_image'] or 0:.1f}",
        )
    console.print(table)
    for engine, m in summary["median"].items():
        console.print(
            f"{engine}: median efficiency pinned {m['efficiency_pinned']:.3f}, unpinned "
            f"{m['efficiency_unpinned']:.3f} → pinned ÷ unpinned {m['pinned_over_unpinned']:.3f}"
        )


def main() -> None:
    import torch

    from genmedia.models.runner import load_model
    from genmedia.models.weights import resolve_source

    args = parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    torch.set_num_threads(1)  # the worker's threads (num_cpus 1)
    catalog = serving_catalog(args.batch, args.steps, args.size, tempfile.mkdtemp())
    ensure_weights(catalog)
    model = load_model(catalog.models[0], resolve_source("tiny://sd15"), "cpu")
    engines = args.engines.split(",")
    windows: list[dict] = []
    with ray_stack() as url, Progress(console=console) as progress:
        task = progress.add_task("windows", total=len(engines) * args.repeats * 2)
        for engine in engines:
            for r in range(args.repeats):
                for pin in (False, True) if r % 2 == 0 else (True, False):
                    progress.update(task, description=f"{engine} {'pinned' if pin else 'free'}")
                    windows.append(window(url, args, model, engine, pin))
                    progress.advance(task)
    summary = summarize(args, windows)
    raw = (
        {k: v for k, v in w.items() if k != "samples"} | {"sample": s}
        for w in windows
        for s in w["samples"]
    )
    summary_path, raw_path = save(f"bench_pinning-{stamp()}", summary, raw)
    report(summary)
    console.print(f"summary → {summary_path}\nraw samples → {raw_path}")


if __name__ == "__main__":
    main()
