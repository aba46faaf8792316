"""Validate the simulator against the real stack on this machine.

Runs the smoke scenario for real (``--rounds`` replays by the harness's ``genmedia loadtest run``
against one local ``genmedia serve`` of the default tiny catalog; this machine is shared and
noisy, so latencies are pooled over the rounds) and simulated (``tiny-cpu`` profile, the same
trace), then compares p50 and p99 end-to-end latency and throughput, overall and per class.
Target: the whole run's numbers within 20 %. Writes
``loadtests/results/sim-validation-<stamp>.{md,json}`` with every round's raw records and report
beside them (``sim-validation-<stamp>/real-<i>``, ``.../sim``).

    flock /tmp/genmedia-ray.lock python loadtests/sim/validate.py [--scenario smoke] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from genmedia.loadtests.report import percentiles, read_run, summarize
from genmedia.loadtests.scenarios import find_scenario, generate, load_scenario
from genmedia.loadtests.sim.costs import load_profile
from genmedia.loadtests.sim.engine import SimConfig
from genmedia.loadtests.sim.localstack import local_stack, tenant_key
from genmedia.loadtests.sim.run import RunInputs, run_sim, write_outputs
from genmedia.models.catalog import load_catalog

LOADTESTS = Path(__file__).resolve().parents[1]
RESULTS = LOADTESTS / "results"
TOLERANCE = 0.20
console = Console()


def metrics(summary: dict) -> dict:
    """p50 / p99 end to end and throughput, overall and per class, from a harness summary."""
    out = {}
    for cls, g in [("all", summary["overall"]), *summary["classes"].items()]:
        out[cls] = {
            "completed": g["by_status"].get("COMPLETED", 0),
            "p50_s": g["latency_s"]["p50"],
            "p99_s": g["latency_s"]["p99"],
            "throughput_images_per_s": g["throughput_images_per_s"],
        }
    return out


def compare(real: dict, sim: dict) -> tuple[list[dict], bool]:
    rows, ok = [], True
    for cls, r in real.items():
        s = sim.get(cls, {})
        for k in ("p50_s", "p99_s", "throughput_images_per_s"):
            a, b = r.get(k), s.get(k)
            ratio = b / a if a and b is not None else None
            within = ratio is not None and abs(ratio - 1) <= TOLERANCE
            ok &= within or cls != "all"  # the target is on the whole run
            rows.append({"class": cls, "metric": k, "real": a, "sim": b, "ratio": ratio,
                         "within_20pct": within})  # fmt: skip
    return rows, ok


def run_real(scenario: Path, base: Path, tenants: list[str], rounds: int) -> list[Path]:
    """``rounds`` replays of ``scenario`` by the harness against one local ``genmedia serve``."""
    dirs = []
    with local_stack(tenant_ids=tenants) as stack:
        for i in range(1, rounds + 1):
            out = base / f"real-{i}"
            cmd = [
                str(Path(sys.executable).with_name("genmedia")),
                "loadtest",
                "run",
                "--scenario",
                str(scenario),
                "--url",
                stack.url,
                "--api-key",
                stack.api_key,
                "--out",
                str(out),
                "--note",
                f"sim validation round {i}: default tiny catalog, local genmedia serve",
            ]
            for t in tenants:
                cmd += ["--key", f"{t}={tenant_key(tenants, t)}"]
            subprocess.run(cmd, check=True)
            dirs.append(out)
    return dirs


def pooled(summaries: list[dict], records: list[list]) -> dict:
    """Latency percentiles over every round's requests; throughput: the median round's."""
    out = {}
    for cls in ["all", *summaries[0]["classes"]]:
        lat = [
            r.latency
            for rs in records
            for r in rs
            if r.status == "COMPLETED" and cls in ("all", r.priority)
        ]
        groups = [s["overall"] if cls == "all" else s["classes"][cls] for s in summaries]
        p = percentiles(lat)
        out[cls] = {
            "completed": len(lat),
            "p50_s": p["p50"],
            "p99_s": p["p99"],
            "throughput_images_per_s": statistics.median(
                g["throughput_images_per_s"] for g in groups
            ),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="smoke", help="scenario name or YAML file")
    ap.add_argument("--profile", default="tiny-cpu")
    ap.add_argument("--rounds", type=int, default=3, help="real replays, pooled (noisy machine)")
    ap.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="an earlier validation's directory: compare against its recorded real rounds "
        "(no Ray) after a change to the simulator or the profile",
    )
    args = ap.parse_args()
    scenario_path = find_scenario(args.scenario)
    trace = generate(load_scenario(scenario_path))
    tenants = sorted({r.tenant for r in trace})
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = RESULTS / f"sim-validation-{stamp}"

    if args.reuse is not None:  # real rounds recorded by an earlier validation
        dirs = sorted(args.reuse.glob("real-*"))
        if not dirs:
            raise SystemExit(f"{args.reuse}: no real-<i> run directories")
        args.rounds = len(dirs)
        base.mkdir(parents=True, exist_ok=True)
        for d in dirs:
            shutil.copytree(d, base / d.name)
        dirs = [base / d.name for d in dirs]
    else:
        dirs = run_real(scenario_path, base, tenants, args.rounds)
    runs = [read_run(d) for d in dirs]
    info = runs[0][1]

    inputs = RunInputs(load_catalog(), load_profile(args.profile), None, trace, info)
    # the catalog's replicas (one per family), packed on one GPU as Ray packs them
    result = run_sim(inputs, SimConfig(weights=info.weights))
    sim_info = info.model_copy(update={"source": "sim", "api": None, "url": None})
    sim_summary = write_outputs(base / "sim", result, sim_info, {"profile": args.profile})

    real = pooled([summarize(rs, i) for rs, i in runs], [rs for rs, _ in runs])
    sim = metrics(sim_summary)
    rows, ok = compare(real, sim)
    summary = {
        "scenario": str(args.scenario),
        "profile": args.profile,
        "tolerance": TOLERANCE,
        "passed": ok,
        "real": real,
        "sim": sim,
        "rows": rows,
        "rounds": args.rounds,
        "raw": {"real": [str((base / f"real-{i}").relative_to(LOADTESTS.parent))
                         for i in range(1, args.rounds + 1)],
                "sim": str((base / "sim").relative_to(LOADTESTS.parent))},
        "date": stamp,
    }  # fmt: skip
    base.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Simulator validation: {summary['scenario']} ({stamp})",
        "",
        f"Real: {args.rounds} rounds of `genmedia loadtest run` against one local `genmedia "
        f"serve` (default tiny catalog, this machine), latency percentiles pooled over the "
        f"rounds, throughput the median round's. Simulated: profile `{args.profile}`, same "
        f"trace. Target: "
        f"simulated within {TOLERANCE:.0%} of real on the whole run. "
        f"Result: **{'PASS' if ok else 'FAIL'}**.",
        "",
        "| class | metric | real | simulated | sim / real | within 20 % |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['class']} | {r['metric']} | {_f(r['real'])} | {_f(r['sim'])} | "
            f"{_f(r['ratio'])} | {'yes' if r['within_20pct'] else 'no'} |"
        )
    raw = ", ".join(f"`{d}`" for d in [*summary["raw"]["real"], summary["raw"]["sim"]])
    lines += ["", f"Raw records and reports: {raw}.", ""]
    base.with_suffix(".md").write_text("\n".join(lines))
    table = Table("class", "metric", "real", "sim", "ratio", title="simulator vs real")
    for r in rows:
        table.add_row(r["class"], r["metric"], _f(r["real"]), _f(r["sim"]), _f(r["ratio"]))
    console.print(table)
    console.print(f"{'PASS' if ok else 'FAIL'} → {base.with_suffix('.md')}")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
