"""Autoscaling benchmark: our SLO-aware policy vs Ray Serve's default request-count policy.

Simulator at 1,000 GPUs (GPU profile ``loadtests/sim/profiles/gpu.yaml``, catalog
``loadtests/sim/catalogs/autoscaling-gpu.yaml``, scenario ``loadtests/scenarios/diurnal-gpu.yaml``:
the diurnal scenario's shape at datacenter rates). Every run replays the same trace through the same
scheduler code on the same 1,000 GPUs with the same replica bounds; only the ``Scaler`` differs:

- ``genmedia``: ``autoscaling_scaler`` (``autoscaling/policy.py``: offered load per class from
  the admitted-work counters, forecast a cold start ahead, headroom for interactive work from
  its latency slack and the rate's estimation error, queued compute-seconds against each class
  target, one GPU budget with interactive need placed first), planning with the profile's
  replica start time;
- ``ray-default``: Ray Serve's own ``replica_queue_length_autoscaling_policy`` from the installed
  ray, with Ray's own scaling factors, delays and bounds (``RayDefaultScaler`` below), at Ray's
  default ``AutoscalingConfig`` (target_ongoing_requests 2, upscale_delay_s 30,
  downscale_delay_s 600, look_back_period_s 30);
- sensitivity runs of the Ray policy: damping matched to ours (no upscale delay, 30 s
  downscale delay) and target_ongoing_requests 8.

Goodput per GPU = images of requests that met their class SLO ÷ GPU-hours provisioned, where a
GPU is provisioned while it holds at least one replica (starting, serving or draining), sampled
every scale tick (1 s) until the last request is done. Also reported: interactive p99 (end to
end), SLO attainment per class, and GPU-hours by reserved fraction. The summary (``.json``), a
markdown summary and a plot go to ``loadtests/results/``, raw per-tick samples (``.jsonl``) to
``loadtests/results/raw/``. Sim only; no Ray cluster is started.

    python benchmarks/bench_autoscaling.py [--scenario diurnal-gpu] [--gpus 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.serve._private.common import DeploymentID
from ray.serve.autoscaling_policy import (
    _apply_delay_logic,
    _apply_scaling_factors,
    _get_cold_start_scale_up_replicas,
    replica_queue_length_autoscaling_policy,
)
from ray.serve.config import AutoscalingConfig, AutoscalingContext
from rich.console import Console
from rich.table import Table

from genmedia.loadtests import sim
from genmedia.loadtests.local import RAW, RESULTS, stamp
from genmedia.loadtests.plots import pyplot
from genmedia.loadtests.report import met_slo, summarize
from genmedia.loadtests.sim.engine import SimConfig
from genmedia.loadtests.sim.run import RunInputs, load_inputs, run_sim
from genmedia.loadtests.sim.scaling import ClusterSnapshot, Scaler, autoscaling_scaler
from genmedia.models.catalog import Catalog

CATALOG = Path(sim.__file__).resolve().parent / "catalogs" / "autoscaling-gpu.yaml"
APP = "genmedia"
TICK_S = 1.0
GPU_MEMORY_GB = 80.0
console = Console()


class RayDefaultScaler:
    """Ray Serve's default autoscaling policy as a simulator ``Scaler``, one deployment per family.

    What Serve's controller does each tick, with the simulated clock instead of ``time.time()``:
    ``total_num_requests`` is the mean over ``look_back_period_s`` of the family's requests in
    the system (queued jobs plus jobs in running calls: a batched call serves several requests);
    the cold-start path, ``replica_queue_length_autoscaling_policy``, the scaling factors and the
    delay logic are Ray's own functions (``_apply_autoscaling_config`` chains them the same way
    but reads the wall clock), and the result is clamped to the bounds as
    ``AutoscalingState.apply_bounds`` does. ``target_num_replicas`` is Serve's: the last decision,
    whether or not the cluster had room for it."""

    def __init__(self, catalog: Catalog, **config: float):
        self.configs = {
            f: AutoscalingConfig(
                min_replicas=catalog.worker(f).min_replicas,
                max_replicas=catalog.worker(f).max_replicas,
                **config,
            )
            for f in catalog.families()
        }
        self.target = {f: c.min_replicas for f, c in self.configs.items()}
        self.state: dict[str, dict] = {f: {} for f in self.configs}
        self.samples: dict[str, deque[tuple[float, float, float]]] = {
            f: deque() for f in self.configs
        }

    def _look_back(
        self, family: str, now: float, total: float, queued: float
    ) -> tuple[float, float]:
        window = self.samples[family]
        window.append((now, total, queued))
        horizon = now - self.configs[family].look_back_period_s
        while window and window[0][0] < horizon:
            window.popleft()
        n = len(window)
        return sum(s[1] for s in window) / n, sum(s[2] for s in window) / n

    def context(self, family: str, snap: ClusterSnapshot) -> AutoscalingContext:
        fs = snap.families[family]
        cfg = self.configs[family]
        queued = float(sum(fs.queued.values()))
        total, queued = self._look_back(family, snap.now, queued + fs.running_jobs, queued)
        return AutoscalingContext(
            deployment_id=DeploymentID(name=f"worker-{family}", app_name=APP),
            deployment_name=f"worker-{family}",
            app_name=APP,
            current_num_replicas=fs.replicas,
            target_num_replicas=self.target[family],
            running_replicas=[],
            total_num_requests=total,
            total_queued_requests=queued,
            aggregated_metrics={},
            raw_metrics={},
            capacity_adjusted_min_replicas=cfg.min_replicas,
            capacity_adjusted_max_replicas=cfg.max_replicas,
            policy_state=dict(self.state[family]),
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=snap.now,
            config=cfg,
        )

    def decide(self, family: str, snap: ClusterSnapshot) -> int:
        ctx = self.context(family, snap)
        cfg = ctx.config
        n = _get_cold_start_scale_up_replicas(ctx)
        if n is None:
            desired, _ = replica_queue_length_autoscaling_policy(ctx)
            desired = _apply_scaling_factors(desired, ctx.current_num_replicas, cfg)
            if ctx.current_num_replicas == 0 and desired > 0:
                n = desired
            else:
                n, state = _apply_delay_logic(
                    max(0, desired), ctx.target_num_replicas, cfg, ctx.policy_state, _now=snap.now
                )
                self.state[family] = state
        n = math.ceil(n)
        return max(cfg.min_replicas, min(cfg.max_replicas, n))

    def __call__(self, snap: ClusterSnapshot) -> dict[str, int]:
        for family in snap.families:
            if family in self.configs:
                self.target[family] = self.decide(family, snap)
        return {f: self.target[f] for f in snap.families if f in self.configs}


@dataclass
class Meter:
    """Wraps a ``Scaler`` and keeps what it saw each tick: GPUs provisioned and replicas."""

    scaler: Scaler
    ticks: list[dict] = field(default_factory=list)

    def __call__(self, snap: ClusterSnapshot) -> dict[str, int]:
        self.ticks.append(
            {
                "t": snap.now,
                "gpus_occupied": snap.occupied_gpus,
                "gpus_reserved": round(snap.gpus - snap.free_gpu, 6),
                **{f"replicas.{f}": s.replicas + s.starting for f, s in snap.families.items()},
                **{f"queued.{f}": sum(s.queued.values()) for f, s in snap.families.items()},
            }
        )
        return self.scaler(snap)


def gpu_hours(ticks: list[dict], key: str) -> float:
    """A tick's value held until the next tick (the last one for one interval)."""
    total = 0.0
    for a, b in zip(ticks, [*ticks[1:], None], strict=True):
        dt = (b["t"] - a["t"]) if b else TICK_S
        total += a[key] * dt
    return total / 3600.0


def run_one(
    name: str, scaler: Scaler, inputs: RunInputs, gpus: int, initial: dict[str, int]
) -> dict:
    meter = Meter(scaler)
    config = SimConfig(
        gpus=gpus,
        replicas=initial,
        scaler=meter,
        scale_interval_s=TICK_S,
        weights=inputs.info.weights,
    )
    result = run_sim(inputs, config)
    summary = summarize(result.records, inputs.info)
    good_images = sum(r.images for r in result.records if met_slo(r, inputs.info.slo_s))
    hours = gpu_hours(meter.ticks, "gpus_occupied")
    reserved = gpu_hours(meter.ticks, "gpus_reserved")
    span_s = meter.ticks[-1]["t"] - meter.ticks[0]["t"] + TICK_S
    classes = summary["classes"]
    return {
        "name": name,
        "good_images": good_images,
        "gpu_hours": hours,
        "gpu_hours_reserved": reserved,
        "goodput_per_gpu_hour": good_images / hours,
        "goodput_per_reserved_gpu_hour": good_images / reserved,
        "mean_gpus": hours * 3600 / span_s,
        "peak_gpus": max(t["gpus_occupied"] for t in meter.ticks),
        "interactive_p99_s": classes["interactive"]["latency_s"]["p99"],
        "interactive_p50_s": classes["interactive"]["latency_s"]["p50"],
        "batch_p99_s": classes["batch"]["latency_s"]["p99"],
        "slo_attainment": {c: s["slo_attainment"] for c, s in classes.items()},
        "by_status": summary["overall"]["by_status"],
        "requests": len(result.records),
        "sim_wall_s": result.wall_s,
        "sim_end_s": result.sim_end_s,
        "ticks": meter.ticks,
    }


def runs(catalog: Catalog, gpus: int, replica_start_s: float) -> list[tuple[str, Scaler]]:
    ray_default = {"target_ongoing_requests": 2.0}  # every other field at Ray's default
    matched = {"upscale_delay_s": 0.0, "downscale_delay_s": 30.0}  # our policy's damping
    return [
        (
            "genmedia",
            autoscaling_scaler(catalog, gpus, GPU_MEMORY_GB, replica_start_s=replica_start_s),
        ),
        ("ray-default", RayDefaultScaler(catalog, **ray_default)),
        ("ray-default, matched delays", RayDefaultScaler(catalog, **ray_default, **matched)),
        ("ray-default, target 8", RayDefaultScaler(catalog, target_ongoing_requests=8.0)),
        (
            "ray-default, target 8, matched delays",
            RayDefaultScaler(catalog, target_ongoing_requests=8.0, **matched),
        ),
    ]


def ratios(a: dict, b: dict) -> dict:
    return {
        "goodput_per_gpu": a["goodput_per_gpu_hour"] / b["goodput_per_gpu_hour"],
        "goodput_per_reserved_gpu": (
            a["goodput_per_reserved_gpu_hour"] / b["goodput_per_reserved_gpu_hour"]
        ),
        "interactive_p99": a["interactive_p99_s"] / b["interactive_p99_s"],
    }


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r in results:
        ax.plot(
            [t["t"] for t in r["ticks"]], [t["gpus_occupied"] for t in r["ticks"]], label=r["name"]
        )
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("GPUs provisioned (holding a replica)")
    ax.set_title("Diurnal trace on 1,000 simulated GPUs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(doc: dict, plot_name: str) -> str:
    rows = [
        "| run | GPU-hours | mean / peak GPUs | SLO-met images | goodput / GPU-hour | "
        "interactive p50 / p99 (s) | batch p99 (s) | SLO met (interactive / batch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        att = r["slo_attainment"]
        rows.append(
            f"| {r['name']} | {r['gpu_hours']:.1f} | {r['mean_gpus']:.0f} / {r['peak_gpus']} "
            f"| {r['good_images']:,} | {r['goodput_per_gpu_hour']:,.0f} "
            f"| {r['interactive_p50_s']:.2f} / {r['interactive_p99_s']:.2f} "
            f"| {r['batch_p99_s']:.1f} | {att['interactive']:.1%} / {att['batch']:.1%} |"
        )
    lines = [
        "# Autoscaling benchmark: genmedia policy vs Ray Serve's default",
        "",
        f"`benchmarks/bench_autoscaling.py`, {doc['started_utc']}. Simulator, {doc['gpus']} GPUs, "
        f"GPU profile, catalog `{doc['catalog']}`, scenario `{doc['scenario']}` "
        f"({doc['requests']:,} requests over {doc['duration_s']:g} s; SLOs {doc['slo_s']}). "
        "Same trace, scheduler and GPU budget in every run; only the scaler differs. Goodput per "
        "GPU = images of requests that met their class SLO ÷ GPU-hours provisioned (a GPU counts "
        "while it holds a replica: starting, serving or draining), sampled every 1 s.",
        "",
        *rows,
        "",
        "Ratios genmedia ÷ Ray default run (target: goodput/GPU ≥ 1.3x at equal or better "
        "interactive p99):",
        "",
    ]
    for name, ratio in doc["ratios"].items():
        lines.append(
            f"- vs **{name}**: goodput/GPU x{ratio['goodput_per_gpu']:.2f} (by reserved "
            f"fraction x{ratio['goodput_per_reserved_gpu']:.2f}), interactive p99 "
            f"x{ratio['interactive_p99']:.2f}"
        )
    lines += ["", f"![GPUs provisioned]({plot_name})", ""]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--scenario", default="diurnal-gpu")
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS, help="summary folder")
    ap.add_argument("--raw", type=Path, default=RAW, help="raw per-tick samples folder")
    return ap.parse_args()


def document(
    started: str, inputs: RunInputs, gpus: int, initial: dict[str, int], results: list[dict]
) -> dict[str, Any]:
    """The summary: inputs, every run but its ticks, genmedia ÷ each other run."""
    ours = results[0]
    catalog = str(CATALOG.relative_to(CATALOG.parents[3]))
    return {
        "started_utc": started,
        "host": platform.node(),
        "scenario": inputs.info.scenario,
        "catalog": catalog,
        "profile": inputs.profile.name,
        "gpus": gpus,
        "requests": len(inputs.trace),
        "duration_s": inputs.info.duration_s,
        "slo_s": inputs.info.slo_s,
        "initial_replicas": initial,
        "runs": [{k: v for k, v in r.items() if k != "ticks"} for r in results],
        "ratios": {r["name"]: ratios(ours, r) for r in results[1:]},
    }


def write(doc: dict[str, Any], results: list[dict], out: Path, raw: Path) -> Path:
    """Summary, markdown and plot into ``out``; per-tick samples into ``raw``."""
    out.mkdir(parents=True, exist_ok=True)
    raw.mkdir(parents=True, exist_ok=True)
    base = out / f"bench_autoscaling-{doc['started_utc']}"
    base.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    with (raw / f"{base.name}.jsonl").open("w") as fh:
        for r in results:
            for t in r["ticks"]:
                fh.write(json.dumps({"run": r["name"], **t}) + "\n")
    plot_path = base.with_suffix(".png")
    plot(results, plot_path)
    base.with_suffix(".md").write_text(markdown(doc, plot_path.name))
    return base


def main() -> None:
    args = parse_args()
    inputs = load_inputs(args.scenario, "gpu", CATALOG)
    catalog = inputs.catalog
    initial = {f: catalog.worker(f).min_replicas for f in catalog.families()}
    started = stamp()
    results = []
    for name, scaler in runs(catalog, args.gpus, inputs.profile.replica_start_s):
        console.print(f"[bold]{name}[/bold] ...")
        r = run_one(name, scaler, inputs, args.gpus, initial)
        console.print(
            f"  goodput/GPU-h {r['goodput_per_gpu_hour']:,.0f}, {r['gpu_hours']:.1f} GPU-h, "
            f"interactive p99 {r['interactive_p99_s']:.2f} s ({r['sim_wall_s']:.0f} s wall)"
        )
        results.append(r)
    doc = document(started, inputs, args.gpus, initial, results)
    base = write(doc, results, args.out, args.raw)
    table = Table(title=f"autoscaling on {args.gpus} simulated GPUs, genmedia ÷ run")
    for col in ("vs run", "goodput/GPU", "interactive p99"):
        table.add_column(col)
    for name, ratio in doc["ratios"].items():
        table.add_row(name, f"x{ratio['goodput_per_gpu']:.2f}", f"x{ratio['interactive_p99']:.2f}")
    console.print(table)
    console.print(f"summary: {base}.{{json,md,png}}; raw ticks: {args.raw / base.name}.jsonl")


if __name__ == "__main__":
    main()
