"""Scale check: 1,000 simulated GPUs, 1,000,000 requests, in at most 60 s wall on this machine.

Uses the policy study's workload (``study.workload``: Poisson arrivals over the mixed GPU
catalog) at an offered load the cluster sustains, the GPU profile, the priority policy and
fractional packing. Times the three phases apart (building the trace, resolving it against the
catalog, the simulation itself) and, with ``--cprofile``, writes the hottest functions to
``loadtests/results/raw/``. Writes ``loadtests/results/sim-scale-<stamp>.{json,md}``.

    python loadtests/sim/scale.py [--requests 1000000] [--gpus 1000] [--load 900] [--cprofile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import time
from collections import Counter
from typing import Any

from rich.console import Console

from genmedia.loadtests.local import RAW, RESULTS, stamp
from genmedia.loadtests.sim.costs import load_profile
from genmedia.loadtests.sim.engine import SimConfig, SimResult, Simulation
from genmedia.loadtests.sim.study import CATALOG, tenants_file, workload
from genmedia.loadtests.sim.workload import prepare
from genmedia.models.catalog import load_catalog

TARGET_S = 60.0
console = Console()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--load", type=float, default=900.0, help="offered requests/s")
    ap.add_argument("--policy", default="priority", choices=["priority", "fifo"])
    ap.add_argument("--packing", default="fractional", choices=["fractional", "dedicated"])
    ap.add_argument("--cprofile", action="store_true", help="profile the simulation (slower)")
    return ap.parse_args()


def timed_run(
    args: argparse.Namespace, prof: cProfile.Profile | None
) -> tuple[SimResult, dict[str, float]]:
    """Build the trace, resolve it, simulate; the result and each phase's wall seconds."""
    catalog = load_catalog(CATALOG)
    profile = load_profile("gpu")
    t0 = time.perf_counter()
    with console.status(f"building {args.requests:,} requests"):
        trace = workload(args.requests, args.load, seed=1)
    t1 = time.perf_counter()
    with console.status("resolving them against the catalog"):
        requests = prepare(trace, catalog)
    del trace
    t2 = time.perf_counter()
    config = SimConfig(
        policy=args.policy, packing=args.packing, gpus=args.gpus, tenants=tenants_file()
    )
    sim = Simulation(catalog, profile, config)
    with console.status(f"simulating on {args.gpus} GPUs"):
        if prof:
            prof.enable()
        result = sim.run(requests)
        if prof:
            prof.disable()
    t3 = time.perf_counter()
    wall = {"trace": t1 - t0, "prepare": t2 - t1, "simulate": result.wall_s, "total": t3 - t0}
    return result, wall


def build_summary(
    args: argparse.Namespace,
    result: SimResult,
    wall: dict[str, float],
    load_before: tuple[float, float, float],
    at: str,
) -> dict[str, Any]:
    return {
        "requests": args.requests,
        "gpus": result.gpus,
        "replicas": result.replicas,
        "offered_rps": args.load,
        "policy": args.policy,
        "packing": args.packing,
        "simulated_s": result.sim_end_s,
        "events": result.events,
        "calls": result.calls,
        "preemptions": result.preemptions,
        "statuses": dict(Counter(r.status for r in result.records)),
        "wall_s": wall,
        "events_per_s": result.events / result.wall_s,
        "target_s": TARGET_S,
        "simulate_within_target": result.wall_s <= TARGET_S,
        "cprofile": args.cprofile,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
        },
        "date": at,
    }


def markdown(summary: dict[str, Any], load_before: tuple[float, float, float]) -> list[str]:
    w, at = summary["wall_s"], summary["date"]
    return [
        f"# Simulator scale check ({at})",
        "",
        f"{summary['requests']:,} requests on {summary['gpus']} simulated GPUs "
        f"({summary['policy']}, {summary['packing']}; replicas {summary['replicas']}), offered "
        f"{summary['offered_rps']:g} req/s, {summary['simulated_s']:,.0f} s simulated, "
        f"{summary['events']:,} events, {summary['calls']:,} pipeline calls, "
        f"{summary['preemptions']:,} preemptions; statuses {summary['statuses']}.",
        "",
        "| phase | wall (s) |",
        "|---|---|",
        f"| build the trace | {w['trace']:.1f} |",
        f"| resolve it against the catalog | {w['prepare']:.1f} |",
        f"| **simulate** | **{w['simulate']:.1f}** |",
        f"| total | {w['total']:.1f} |",
        "",
        f"Target: simulate in at most {TARGET_S:.0f} s — "
        f"**{'met' if summary['simulate_within_target'] else 'missed'}**"
        f"{' (under cProfile)' if summary['cprofile'] else ''}. Machine: {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.1f} before the run (other work shares this machine).",
        "",
    ]


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    prof = cProfile.Profile() if args.cprofile else None
    result, wall = timed_run(args, prof)
    at = stamp()
    summary = build_summary(args, result, wall, load_before, at)
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"sim-scale-{at}"
    base.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    md = markdown(summary, load_before)
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
        RAW.mkdir(parents=True, exist_ok=True)
        hot = RAW / f"{base.name}.cprofile.txt"
        hot.write_text(s.getvalue())
        md.append(f"Hottest functions: `loadtests/results/raw/{hot.name}` (not in git).\n")
    base.with_suffix(".md").write_text("\n".join(md))
    console.print("\n".join(md[2:-1]))
    console.print(f"→ {base.with_suffix('.md')}")


if __name__ == "__main__":
    main()
