"""Autoscaling benchmark, real half: our policy vs Ray Serve's default on a real local Serve.

The simulator half (``bench_autoscaling.py``) compares the policies at 1,000 GPUs; this one runs
both on this machine's real Ray Serve with logical GPUs, on a compressed diurnal trace (sd15
interactive, flux batch), one after the other on one Ray cluster. Two scenarios:
``diurnal-local`` (the default), where one replica per family carries even the peaks, so the
question is only whether a policy over-provisions; and ``diurnal-local-peak``, whose peaks need
a second sd15 replica (each replica computes on one core). The variants:

- ``genmedia``: the app deployed from the rendered Serve config (``infra/serve_config.py``), as
  KubeRay would: the application-level policy ``autoscaling/serve_adapter.py`` sizes every worker
  from the scheduler's ``record_autoscaling_stats``;
- ``ray-default``: the same config with the application policy removed and each worker given
  Ray's default request-count policy (``target_ongoing_requests`` 2, Ray's default delays and
  look-back). Its request count is what Serve sees at the workers: the calls our scheduler
  dispatches into free slots, not the jobs waiting in its queue.

Same replica bounds and GPU fractions in both. Every second the script reads ``serve.status()``
and counts each worker replica that holds its GPU share (any state but stopped), so GPU-hours
are the reserved fractions summed over time. Goodput per GPU-hour = images of requests that
met their class SLO ÷ those GPU-hours. The trace is replayed by the load-test harness
(``genmedia loadtest run``, queue API); its records and reports are kept per run.

Two cores serve everything here (pipelines, gateway, scheduler, proxy, load generator), so a
second worker replica adds at most one core: the run shows the mechanism end to end at
small scale; the economics at scale are the simulator's. The summary (``.json``, ``.md``) goes to
``loadtests/results/``; the replica samples (``.jsonl``) and the harness's run directories to
``loadtests/results/raw/``.

    flock /tmp/genmedia-ray.lock python benchmarks/bench_autoscaling_real.py [--scenario NAME]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _bench import REPO
from rich.console import Console

from genmedia.autoscaling.placement import replica_shapes
from genmedia.infra.serve_config import ScalingKnobs, application_config
from genmedia.loadtests.local import (
    API_KEY,
    RAW,
    RESULTS,
    default_catalog_data,
    loadtest_command,
    ray_stack,
    stamp,
    tenants_data,
    wait_ready,
    with_local_state,
)
from genmedia.loadtests.report import met_slo, read_run, summarize
from genmedia.loadtests.scenarios import find_scenario, load_scenario
from genmedia.models.catalog import parse_catalog

APP = "genmedia"
FAMILIES = ("sd15", "flux")
MAX_REPLICAS = 3
GPUS = 2
STOPPED = ("STOPPED",)
console = Console()


def bench_catalog(work: Path) -> dict:
    """The default tiny catalog's sd15 and flux models, 1..3 replicas each, state in ``work``."""
    data = copy.deepcopy(default_catalog_data())
    data["models"] = [m for m in data["models"] if m["family"] in FAMILIES]
    ids = {m["id"] for m in data["models"]}
    data["loras"] = [a for a in data.get("loras", []) if a["base_model"] in ids]
    data["workers"] = {
        f: {**data["workers"][f], "min_replicas": 1, "max_replicas": MAX_REPLICAS} for f in FAMILIES
    }
    return with_local_state(data, work)


def app_config(data: dict, variant: str, tenant_ids: list[str]) -> dict:
    catalog = parse_catalog(data, "<bench catalog>")
    config = application_config(
        catalog,
        gpus=GPUS,
        gpu_memory_gb=24.0,
        name=APP,
        tenants=tenants_data(tenant_ids),
        gpus_available=True,
        knobs=ScalingKnobs(),
    )
    if variant == "ray-default":
        del config["autoscaling_policy"]
        for dep in config["deployments"]:
            if dep["name"].startswith("worker-"):
                bounds = dep["autoscaling_config"]
                dep["autoscaling_config"] = {
                    "min_replicas": bounds["min_replicas"],
                    "initial_replicas": bounds["initial_replicas"],
                    "max_replicas": bounds["max_replicas"],
                    "target_ongoing_requests": 2.0,  # Ray's default; all else at Ray's defaults
                }
            else:
                dep.pop("autoscaling_config", None)
                dep["num_replicas"] = 1
    return config


class ReplicaSampler(threading.Thread):
    """Every second: replicas holding their GPU share per worker deployment."""

    def __init__(self, fractions: dict[str, float]):
        super().__init__(daemon=True)
        self.fractions = fractions
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from genmedia.deployments.serve.local import app_state

        t0 = time.monotonic()
        while not self.stop.wait(1.0):
            try:
                app = app_state(APP)
            except Exception:
                continue
            if app is None:
                continue
            row: dict = {"t": round(time.monotonic() - t0, 3)}
            gpus = 0.0
            for f, frac in self.fractions.items():
                dep = app.deployments.get(f"worker-{f}")
                states = dep.replicas if dep is not None else {}
                n = sum(v for k, v in states.items() if k not in STOPPED)
                row[f"replicas.{f}"] = n
                gpus += n * frac
            row["gpus_reserved"] = round(gpus, 6)
            self.samples.append(row)


def replay(
    variant: str, data: dict, url: str, out: Path, tenant_ids: list[str], scenario: Path
) -> list[dict]:
    """Deploy ``variant`` from its Serve config, replay the scenario into ``out`` while sampling
    replicas every second, remove the app; returns the replica samples."""
    from genmedia.deployments.serve.local import deploy_config, remove_config_apps

    shapes = replica_shapes(parse_catalog(data, "<bench catalog>"))
    deploy_config(app_config(data, variant, tenant_ids))
    try:
        wait_ready(url, 300.0)
        sampler = ReplicaSampler({f: s.gpu_fraction for f, s in shapes.items()})
        sampler.start()
        note = f"autoscaling bench, real half: {variant}"
        subprocess.run(loadtest_command(scenario, url, API_KEY, out, note), check=True)
        sampler.stop.set()
        sampler.join()
    finally:
        remove_config_apps(APP)
    return sampler.samples


def run_variant(
    variant: str, data: dict, url: str, out: Path, tenant_ids: list[str], scenario: Path
) -> dict:
    ticks = replay(variant, data, url, out, tenant_ids, scenario)
    shapes = replica_shapes(parse_catalog(data, "<bench catalog>"))
    records, info = read_run(out)
    summary = summarize(records, info)
    good = sum(r.images for r in records if met_slo(r, info.slo_s))
    gpu_hours = sum(t["gpus_reserved"] for t in ticks) / 3600.0  # 1 s per sample
    classes = summary["classes"]
    return {
        "name": variant,
        "good_images": good,
        "gpu_hours": gpu_hours,
        "goodput_per_gpu_hour": good / gpu_hours if gpu_hours else None,
        "mean_gpus": sum(t["gpus_reserved"] for t in ticks) / max(1, len(ticks)),
        "peak_replicas": {f: max(t[f"replicas.{f}"] for t in ticks) for f in shapes},
        "interactive_p50_s": classes["interactive"]["latency_s"]["p50"],
        "interactive_p99_s": classes["interactive"]["latency_s"]["p99"],
        "batch_p99_s": classes["batch"]["latency_s"]["p99"],
        "slo_attainment": {c: s["slo_attainment"] for c, s in classes.items()},
        "by_status": summary["overall"]["by_status"],
        "requests": len(records),
        "run_dir": str(out.relative_to(REPO) if out.is_relative_to(REPO) else out),
        "ticks": ticks,
    }


def markdown(doc: dict) -> str:
    rows = [
        "| run | GPU-hours (reserved) | mean GPUs | peak replicas | SLO-met images | "
        "goodput / GPU-hour | interactive p50 / p99 (s) | SLO met (interactive / batch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        att = r["slo_attainment"]
        peaks = ", ".join(f"{f} {n}" for f, n in r["peak_replicas"].items())
        rows.append(
            f"| {r['name']} | {r['gpu_hours']:.4f} | {r['mean_gpus']:.2f} | {peaks} "
            f"| {r['good_images']:,} | {r['goodput_per_gpu_hour']:,.0f} "
            f"| {r['interactive_p50_s']:.2f} / {r['interactive_p99_s']:.2f} "
            f"| {att['interactive']:.1%} / {att['batch']:.1%} |"
        )
    ratio = doc["ratio"]
    return "\n".join(
        [
            "# Autoscaling benchmark, real half: genmedia policy vs Ray Serve's default",
            "",
            f"`benchmarks/bench_autoscaling_real.py`, {doc['started_utc']}, host "
            f"{doc['host']}. Real local Ray Serve, {GPUS} logical GPUs, scenario "
            f"`{doc['scenario']}` ({doc['duration_s']:g} s), sd15 and flux workers "
            f"1..{MAX_REPLICAS} replicas each. GPU-hours: reserved GPU fractions of the worker "
            "replicas, sampled every second from `serve.status()`.",
            "",
            *rows,
            "",
            f"genmedia ÷ ray-default: goodput/GPU x{ratio['goodput_per_gpu']:.2f}, "
            f"interactive p99 x{ratio['interactive_p99']:.2f}.",
            "",
            f"Raw: `{doc['runs'][0]['run_dir']}`, `{doc['runs'][1]['run_dir']}` (harness records "
            f"and reports), replica samples in `{doc['ticks']}`.",
            "",
        ]
    )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS, help="summary folder")
    ap.add_argument("--raw", type=Path, default=RAW, help="replica samples and run directories")
    ap.add_argument(
        "--scenario",
        default="diurnal-local",
        help="a committed scenario (diurnal-local: one replica per family suffices; "
        "diurnal-local-peak: the peaks need a second sd15 replica) or a YAML path",
    )
    return ap.parse_args()


def measure(scenario_file: Path, tenant_ids: list[str], raw: Path) -> list[dict]:
    """Both variants, one after the other, on one local Ray with ``GPUS`` logical GPUs."""
    data = bench_catalog(Path(tempfile.mkdtemp(prefix="genmedia-bench-as-")))
    results = []
    with ray_stack(num_cpus=8, num_gpus=GPUS, logging_level=logging.INFO) as url:
        for variant in ("genmedia", "ray-default"):
            console.print(f"[bold]{variant}[/bold]: replaying {scenario_file.name} ...")
            r = run_variant(variant, data, url, raw / variant, tenant_ids, scenario_file)
            console.print(
                f"  goodput/GPU-h {r['goodput_per_gpu_hour']:,.0f}, {r['gpu_hours']:.4f} GPU-h, "
                f"interactive p99 {r['interactive_p99_s']:.2f} s, peaks {r['peak_replicas']}"
            )
            results.append(r)
    return results


def write(doc: dict[str, Any], results: list[dict], out: Path, ticks: Path) -> Path:
    """Summary and markdown into ``out``, the replica samples into ``ticks``."""
    out.mkdir(parents=True, exist_ok=True)
    ticks.parent.mkdir(parents=True, exist_ok=True)
    base = out / f"bench_autoscaling_real-{doc['started_utc']}"
    base.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    with ticks.open("w") as fh:
        for r in results:
            for t in r["ticks"]:
                fh.write(json.dumps({"run": r["name"], **t}) + "\n")
    base.with_suffix(".md").write_text(markdown(doc))
    return base


def main() -> None:
    args = parse_args()
    scenario_file = find_scenario(args.scenario)
    try:
        scenario = load_scenario(scenario_file)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--scenario: {e}") from None
    started = stamp()
    raw = args.raw / f"bench_autoscaling_real-{started}"
    results = measure(scenario_file, [t.id for t in scenario.tenants], raw)
    ours, ray_default = results
    ticks = raw.with_suffix(".jsonl")
    doc = {
        "started_utc": started,
        "host": platform.node(),
        "scenario": scenario.name,
        "duration_s": scenario.duration_s,
        "gpus": GPUS,
        "runs": [{k: v for k, v in r.items() if k != "ticks"} for r in results],
        "ratio": {
            "goodput_per_gpu": ours["goodput_per_gpu_hour"] / ray_default["goodput_per_gpu_hour"],
            "interactive_p99": ours["interactive_p99_s"] / ray_default["interactive_p99_s"],
        },
        "ticks": str(ticks.relative_to(REPO) if ticks.is_relative_to(REPO) else ticks),
    }
    base = write(doc, results, args.out, ticks)
    console.print(markdown(doc))
    console.print(f"summary: {base}.{{json,md}}; raw: {raw}/ and {ticks}")


if __name__ == "__main__":
    main()
