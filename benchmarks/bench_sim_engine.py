"""Step engine vs request-level batching on 1,000 simulated GPUs (issue 16, the simulator part).

Simulator only, no Ray: the GPU profile (``loadtests/sim/profiles/gpu.yaml``), the policy study's
mixed catalog (``loadtests/sim/catalogs/mixed-gpu.yaml``: SD1.5, SDXL and Flux, base and
few-step models) and workload (``loadtests/sim/study.py``: Poisson arrivals over the same model,
class and tenant mix, seeded), the priority scheduler with fractional packing on 1,000 GPUs.
Every model's catalog ``slo`` is set to the study's SLOs (interactive 10 s, batch 120 s), the
targets goodput counts against and the step engine's deadline check aims at. At each offered load
the same trace runs twice, only ``SimConfig.engine`` differs:

- ``request``: request-level batches, one call computing per replica (an interactive call pauses
  a batch-class call at a step boundary), the dispatcher's batch waits;
- ``step``: the step engine (``loadtests/sim/step_worker.py``, driving the worker's own
  ``EnginePolicy``): calls join a running set at step boundaries, one step of ``n`` images costs
  ``a·n + b`` from the profile, the dispatcher gives step replicas ``slots_per_replica`` slots;
  an interactive call joins a batch-class set only when its step there costs at most
  ``--join-slowdown`` (``JOIN_SLOWDOWN``) times its step alone, else it parks the set (its
  members keep their progress and rejoin later) and runs in a set of interactive calls
  (``joins_running_set``).

Reported per load and engine: goodput per GPU-hour (images of requests within their class SLO,
completed in the middle 80 % of the arrival window, per provisioned GPU), interactive p50/p99 end
to end (and p99 per family), batch throughput (batch images/s in the same window) and batch p99,
an interactive request's wait on its replica (dispatch to the end of its first step, p99); then
the ratios step ÷ request. Below saturation both engines complete the offered work within its
SLOs, so goodput follows the load and its ratio is 1: it tells the engines apart only at and
past saturation. The summary (``.json`` + ``.md`` + ``.png``) goes to
``loadtests/results/``, per-request samples (``.jsonl``) to ``loadtests/results/raw/``.

    python benchmarks/bench_sim_engine.py [--requests 100000] [--loads 950,1200,1400] [--gpus 1000]
        [--join-slowdown 1.5]

The simulated horizon is ``requests / load`` seconds per run (70 to 105 s at the defaults),
so the whole run takes a few minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.progress import Progress

from genmedia.deployments.worker.engine_policy import JOIN_SLOWDOWN
from genmedia.loadtests.local import RAW, RESULTS, stamp
from genmedia.loadtests.records import RequestRecord
from genmedia.loadtests.sim.costs import load_profile
from genmedia.loadtests.sim.engine import SimConfig, Simulation
from genmedia.loadtests.sim.study import (
    CATALOG,
    SLO_S,
    TENANTS,
    WINDOW,
    WORKLOAD,
    measure,
    tenants_file,
    workload,
)
from genmedia.loadtests.sim.workload import prepare
from genmedia.models.catalog import Catalog, parse_catalog

ENGINES = ("request", "step")
REPO = Path(__file__).resolve().parents[1]
console = Console()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000, help="requests per run")
    ap.add_argument(
        "--loads",
        default="950,1200,1400",
        help="offered loads (requests/s); the request-level engine saturates near 1,175 "
        "(loadtests/results/policy-study), so the defaults are about 80, 100 and 120 %%",
    )
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--join-slowdown",
        type=float,
        default=JOIN_SLOWDOWN,
        help="step engine: an interactive call joins a batch-class set only when its step there "
        "costs at most this many times its step alone (default %(default)s)",
    )
    args = ap.parse_args()
    if args.join_slowdown < 1.0:
        ap.error(f"--join-slowdown must be at least 1.0, got {args.join_slowdown}")
    return args


def study_catalog() -> Catalog:
    """The mixed GPU catalog with every model's SLO set to the study's."""
    data = yaml.safe_load(CATALOG.read_text())
    for m in data["models"]:
        m["slo"] = {"interactive_s": SLO_S["interactive"], "batch_s": SLO_S["batch"]}
    return parse_catalog(data, str(CATALOG))


def batch_images_per_s(records: list[RequestRecord]) -> float:
    """Batch-class images completed per second in the study's window."""
    last = max(r.t_submit for r in records)
    lo, hi = WINDOW[0] * last, WINDOW[1] * last
    images = sum(
        r.images
        for r in records
        if r.priority == "batch" and r.status == "COMPLETED" and r.t_done is not None
        if lo <= r.t_done < hi
    )
    return images / (hi - lo)


def first_step_wait_p99(records: list[RequestRecord]) -> float | None:
    """p99 of an interactive request's wait on its replica: from its dispatch to the end of
    its first step (the worker's gate, a running set's boundary, the set bound)."""
    waits = [
        r.t_first_progress - r.t_started
        for r in records
        if r.priority == "interactive" and r.status == "COMPLETED"
        if r.t_first_progress is not None and r.t_started is not None
    ]
    return float(np.percentile(waits, 99)) if waits else None


def one_run(
    catalog: Catalog, requests: list, gpus: int, engine: str, join_slowdown: float
) -> tuple[dict, list]:
    cfg = SimConfig(
        policy="priority",
        packing="fractional",
        gpus=gpus,
        tenants=tenants_file(),
        engine="step" if engine == "step" else "request",
    )
    sim = Simulation(catalog, load_profile("gpu"), cfg)
    sim.steps.join_slowdown = join_slowdown
    res = sim.run(requests)
    family_of = {m.id: m.family for m in catalog.models}
    m = measure(res.records, res.gpus, family_of)
    row = {
        "engine": engine,
        "gpus": res.gpus,
        "replicas": res.replicas,
        "calls": res.calls,
        "preemptions": res.preemptions,
        "events": res.events,
        "sim_end_s": res.sim_end_s,
        "wall_s": res.wall_s,
        "goodput_per_gpu_hour": m["goodput_per_gpu"] * 3600.0,
        "batch_images_per_s": batch_images_per_s(res.records),
        "interactive_first_step_wait_p99_s": first_step_wait_p99(res.records),
        **m,
    }
    if engine == "step":
        row["step_joins"] = sim.steps.joins  # calls that joined a running set
        row["step_request_path"] = sim.steps.request_path  # calls not accepted, alone
        row["step_parks"] = sim.steps.parks  # boundaries that parked a batch-class set
    return row, res.records


RATIOS = {  # name: (path into a run, higher is better)
    "goodput_per_gpu_hour": (("goodput_per_gpu_hour",), True),
    "interactive_p50": (("interactive", "p50_s"), False),
    "interactive_p99": (("interactive", "p99_s"), False),
    "batch_images_per_s": (("batch_images_per_s",), True),
    "batch_p99": (("batch", "p99_s"), False),
    "interactive_first_step_wait_p99": (("interactive_first_step_wait_p99_s",), False),
    "images_per_s": (("images_per_s",), True),
}


def _get(run: dict, path: tuple[str, ...]) -> float | None:
    v: Any = run
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def ratios(req: dict, step: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, (path, _) in RATIOS.items():
        a, b = _get(step, path), _get(req, path)
        out[name] = None if a is None or not b else a / b
    for fam, p99 in step["interactive_p99_by_family_s"].items():
        base = req["interactive_p99_by_family_s"].get(fam)
        out[f"interactive_p99_{fam}"] = p99 / base if base else None
    return out


def raw_rows(load: float, engine: str, records: list[RequestRecord]) -> list[dict]:
    return [
        {
            "load_rps": load,
            "engine": engine,
            "i": r.index,
            "model": r.model,
            "priority": r.priority,
            "tenant": r.tenant,
            "images": r.images,
            "status": r.status,
            "t_submit": round(r.t_submit, 6),
            "latency_s": None if r.t_done is None else round(r.t_done - r.t_submit, 6),
            "queue_s": None if r.queue_s is None else round(r.queue_s, 6),
        }
        for r in records
    ]


def run_all(args: argparse.Namespace, raw_path: Path) -> dict:
    catalog = study_catalog()
    loads = [float(x) for x in args.loads.split(",")]
    results = []
    with Progress(console=console) as progress, raw_path.open("w") as raw:
        task = progress.add_task("simulating", total=len(loads) * len(ENGINES))
        for load in loads:
            requests = prepare(workload(args.requests, load, args.seed), catalog)
            runs = {}
            for engine in ENGINES:
                progress.update(task, description=f"{load:g} req/s, {engine}")
                row, records = one_run(catalog, requests, args.gpus, engine, args.join_slowdown)
                runs[engine] = row
                for x in raw_rows(load, engine, records):
                    raw.write(json.dumps(x) + "\n")
                progress.advance(task)
            results.append(
                {
                    "load_rps": load,
                    "horizon_s": requests[-1].t,
                    "runs": runs,
                    "step_over_request": ratios(runs["request"], runs["step"]),
                }
            )
    return {
        "benchmark": "bench_sim_engine",
        "requests_per_run": args.requests,
        "gpus": args.gpus,
        "seed": args.seed,
        "join_slowdown": args.join_slowdown,
        "profile": "gpu",
        "catalog": str(CATALOG.relative_to(REPO)),
        "policy": "priority",
        "packing": "fractional",
        "slo_s": SLO_S,
        "workload": WORKLOAD,
        "tenants": TENANTS,
        "window": WINDOW,
        "loads": results,
    }


def plot(summary: dict, path: Path) -> None:
    from genmedia.loadtests.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    loads = [x["load_rps"] for x in summary["loads"]]
    panels = (
        (("goodput_per_gpu_hour",), "goodput (images within SLO) per GPU-hour", False),
        (("interactive", "p99_s"), "interactive p99 end to end (s)", True),
        (("batch_images_per_s",), "batch images/s", False),
    )
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        for engine, style in (("request", "o--"), ("step", "s-")):
            ys = [_get(x["runs"][engine], key) for x in summary["loads"]]
            ax.plot(loads, ys, style, label=engine)
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{summary['gpus']} simulated GPUs (GPU profile, mixed catalog)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(summary: dict, wall_s: float, raw_path: Path, png: str) -> str:
    lines = [
        f"# Step engine vs request-level batching, {summary['gpus']} simulated GPUs",
        "",
        f"`benchmarks/bench_sim_engine.py`: GPU profile, `{summary['catalog']}` with every "
        f"model's SLO at interactive {SLO_S['interactive']:g} s / batch {SLO_S['batch']:g} s, "
        f"the policy study's Poisson mix ({summary['requests_per_run']:,} requests per run, "
        f"seed {summary['seed']}), priority scheduler, fractional packing, step engine join "
        f"slowdown bound {summary['join_slowdown']:g}. Rates over "
        f"{WINDOW[0]:.0%}-{WINDOW[1]:.0%} of the arrival window. Whole run {wall_s:.0f} s wall.",
        "",
        "| load (req/s) | horizon (s) | engine | goodput / GPU-hour | interactive p50 / p99 (s) "
        "| interactive p99 sd15 / sdxl / flux (s) | interactive wait to first step p99 (s) "
        "| batch images/s | batch p99 (s) | preemptions | calls alone (step) "
        "| sets parked for an interactive call | sim wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in summary["loads"]:
        for engine in ENGINES:
            r = x["runs"][engine]
            fam = r["interactive_p99_by_family_s"]
            lines.append(
                f"| {x['load_rps']:g} | {x['horizon_s']:.0f} | {engine} | "
                f"{r['goodput_per_gpu_hour']:.0f} | {_f(r['interactive']['p50_s'])} / "
                f"{_f(r['interactive']['p99_s'])} | "
                + " / ".join(_f(fam.get(f)) for f in ("sd15", "sdxl", "flux"))
                + f" | {_f(r['interactive_first_step_wait_p99_s'])}"
                f" | {r['batch_images_per_s']:.0f} | {_f(r['batch']['p99_s'], '.1f')} | "
                f"{r['preemptions']} | {r.get('step_request_path', '-')} | "
                f"{r.get('step_parks', '-')} | {r['wall_s']:.1f} |"
            )
    names = list(summary["loads"][0]["step_over_request"])
    lines += [
        "",
        "## Step ÷ request",
        "",
        "| load (req/s) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for x in summary["loads"]:
        ratio = x["step_over_request"]
        lines.append(f"| {x['load_rps']:g} | " + " | ".join(_f(ratio[n]) for n in names) + " |")
    lines += [
        "",
        f"![engines]({png})",
        "",
        f"Raw per-request samples: `{raw_path.relative_to(REPO)}` (not in git).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    at = stamp()
    name = f"bench_sim_engine-{at}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    RAW.mkdir(parents=True, exist_ok=True)
    raw_path = RAW / f"{name}.jsonl"
    t0 = time.perf_counter()
    summary = run_all(args, raw_path)
    wall = time.perf_counter() - t0
    summary.update(
        {"started_utc": at, "wall_s": wall, "cpus": os.cpu_count(),
         "raw": str(raw_path.relative_to(REPO))}
    )  # fmt: skip
    png = RESULTS / f"{name}.png"
    plot(summary, png)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = markdown(summary, wall, raw_path, png.name)
    (RESULTS / f"{name}.md").write_text(md)
    console.print(md)
    console.print(f"→ {RESULTS / name}.json")


if __name__ == "__main__":
    main()
