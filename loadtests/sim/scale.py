"""Scale check: 1,000 simulated GPUs, 1,000,000 requests, in at most 60 s wall on this machine.

Uses the policy study's workload (``study.workload``: Poisson arrivals over the mixed GPU
catalog) at an offered load the cluster sustains, the GPU profile, the priority policy and
fractional packing. Times the three phases apart (building the trace, resolving it against the
catalog, the simulation itself) and, with ``--cprofile``, writes the hottest functions beside the
result. Writes ``loadtests/results/sim-scale-<stamp>.{json,md}``.

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
from pathlib import Path

from rich.console import Console

from genmedia.loadtests.sim.costs import load_profile
from genmedia.loadtests.sim.engine import SimConfig, Simulation
from genmedia.loadtests.sim.study import CATALOG, tenants_file, workload
from genmedia.loadtests.sim.workload import prepare
from genmedia.models.catalog import load_catalog

RESULTS = Path(__file__).resolve().parents[1] / "results"
TARGET_S = 60.0
console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--load", type=float, default=900.0, help="offered requests/s")
    ap.add_argument("--policy", default="priority", choices=["priority", "fifo"])
    ap.add_argument("--packing", default="fractional", choices=["fractional", "dedicated"])
    ap.add_argument("--cprofile", action="store_true", help="profile the simulation (slower)")
    args = ap.parse_args()
    catalog = load_catalog(CATALOG)
    profile = load_profile("gpu")
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    trace = workload(args.requests, args.load, seed=1)
    t1 = time.perf_counter()
    requests = prepare(trace, catalog)
    del trace
    t2 = time.perf_counter()
    sim = Simulation(
        catalog,
        profile,
        SimConfig(policy=args.policy, packing=args.packing, gpus=args.gpus, tenants=tenants_file()),
    )
    prof = cProfile.Profile() if args.cprofile else None
    if prof:
        prof.enable()
    result = sim.run(requests)
    if prof:
        prof.disable()
    t3 = time.perf_counter()

    statuses = Counter(r.status for r in result.records)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    summary = {
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
        "statuses": dict(statuses),
        "wall_s": {
            "trace": t1 - t0,
            "prepare": t2 - t1,
            "simulate": result.wall_s,
            "total": t3 - t0,
        },
        "events_per_s": result.events / result.wall_s,
        "target_s": TARGET_S,
        "simulate_within_target": result.wall_s <= TARGET_S,
        "cprofile": bool(prof),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
        },
        "date": stamp,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"sim-scale-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    w = summary["wall_s"]
    md = [
        f"# Simulator scale check ({stamp})",
        "",
        f"{args.requests:,} requests on {result.gpus} simulated GPUs ({args.policy}, "
        f"{args.packing}; replicas {result.replicas}), offered {args.load:g} req/s, "
        f"{result.sim_end_s:,.0f} s simulated, {result.events:,} events, {result.calls:,} "
        f"pipeline calls, {result.preemptions:,} preemptions; statuses {dict(statuses)}.",
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
        f"{' (under cProfile)' if prof else ''}. Machine: {os.cpu_count()} CPUs, load average "
        f"{load_before[0]:.1f} before the run (other work shares this machine).",
        "",
    ]
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
        (base.with_suffix(".cprofile.txt")).write_text(s.getvalue())
        md.append(f"Hottest functions: `{base.with_suffix('.cprofile.txt').name}`.\n")
    base.with_suffix(".md").write_text("\n".join(md))
    console.print("\n".join(md[2:-1]))
    console.print(f"→ {base.with_suffix('.md')}")


if __name__ == "__main__":
    main()
