"""Validate the simulator against the real stack on this machine.

Runs the smoke scenario for real (``--rounds`` replays by the harness's ``genmedia loadtest run``
against one local ``genmedia serve`` of the default tiny catalog; this machine is shared and
noisy, so latencies are pooled over the rounds) and simulated (``tiny-cpu`` profile, the same
trace, as many rounds with seeds 0, 1, ... pooled the same way), then compares p50 and p99
end-to-end latency and throughput, overall and per class. Target: the whole run's numbers
within 20 %. Each round's own numbers and their spread are reported next to the pooled ones,
and where each request's time went (to the 202, queued, computing, the rest), real against
simulated. Writes ``loadtests/results/sim-validation-<stamp>.{md,json}``; every round's raw
records and report go to ``loadtests/results/raw/sim-validation-<stamp>/real-<i>`` and
``.../sim-<i>`` (not in git); a real round also keeps the server's own timings of each request
(``server-timings.jsonl``).

    flock /tmp/genmedia-ray.lock python loadtests/sim/validate.py [--scenario smoke] [--rounds 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
from pathlib import Path

from rich.console import Console
from rich.table import Table

from genmedia.loadtests.local import (
    RAW,
    RESULTS,
    loadtest_command,
    local_stack,
    stamp,
    tenant_key,
)
from genmedia.loadtests.records import RequestRecord, read_records
from genmedia.loadtests.report import RunInfo, percentiles, read_run, summarize
from genmedia.loadtests.scenarios import find_scenario, generate, load_scenario
from genmedia.loadtests.sim.costs import load_profile
from genmedia.loadtests.sim.engine import SimConfig
from genmedia.loadtests.sim.run import RunInputs, run_sim, write_outputs
from genmedia.loadtests.traces import TraceRecord
from genmedia.models.catalog import load_catalog

REPO = Path(__file__).resolve().parents[2]  # paths in the report are relative to it
TOLERANCE = 0.20
ROUNDS = 8  # ~25 s each: the whole validation stays under 5 minutes
METRICS = ("p50_s", "p99_s", "throughput_images_per_s")
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
            note = f"sim validation round {i}: default tiny catalog, local genmedia serve"
            cmd = loadtest_command(scenario, stack.url, stack.api_key, out, note)
            for t in tenants:
                cmd += ["--key", f"{t}={tenant_key(tenants, t)}"]
            subprocess.run(cmd, check=True)
            server_timings(stack.url, out, {t: tenant_key(tenants, t) for t in tenants})
            dirs.append(out)
    return dirs


def server_timings(url: str, run_dir: Path, keys: dict[str, str]) -> Path:
    """The server's own timings of each completed request of a round (queue, gate wait,
    compute, store, total; its batch), read back while the stack still runs."""
    import httpx

    out = run_dir / "server-timings.jsonl"
    with httpx.Client(base_url=url, timeout=10.0) as client, out.open("w") as fh:
        for r in read_records(run_dir / "requests.jsonl"):
            if r.status != "COMPLETED" or not r.request_id:
                continue
            resp = client.get(
                f"/v1/queue/requests/{r.request_id}",
                headers={"Authorization": f"Bearer {keys[r.tenant]}"},
            )
            if resp.status_code != 200:
                continue
            body = resp.json()
            row = {"index": r.index, "request_id": r.request_id, "timings": body.get("timings"),
                   "batch": body.get("batch")}  # fmt: skip
            fh.write(json.dumps(row) + "\n")
    return out


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


def spread(per_round: list[dict]) -> dict:
    """Each metric of the whole run over the rounds: min, median, max (how noisy one round
    is)."""
    out = {}
    for k in METRICS:
        v = [m["all"][k] for m in per_round if m["all"].get(k) is not None]
        out[k] = {"min": min(v), "median": statistics.median(v), "max": max(v)} if v else None
    return out


def phases(records: list[list[RequestRecord]]) -> dict:
    """Where completed requests' time went, pooled over rounds (p50 / p99 / max per phase):
    to the 202 (``admit``), queued at the scheduler, computing (gate held), and the rest
    (hand-off, waiting at the worker's gate or paused, storing, the final status's way back)."""
    cols: dict[str, list[float]] = {"admit": [], "queue": [], "compute": [], "rest": []}
    for rs in records:
        for r in rs:
            if r.status != "COMPLETED" or r.t_admitted is None or r.t_done is None:
                continue
            admit = r.t_admitted - r.t_submit
            queue, compute = r.queue_s or 0.0, r.compute_s or 0.0
            cols["admit"].append(admit)
            cols["queue"].append(queue)
            cols["compute"].append(compute)
            cols["rest"].append(r.t_done - r.t_submit - admit - queue - compute)
    return {k: {q: percentiles(v)[q] for q in ("p50", "p99", "max")} for k, v in cols.items()}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--scenario", default="smoke", help="scenario name or YAML file")
    ap.add_argument("--profile", default="tiny-cpu")
    ap.add_argument(
        "--rounds", type=int, default=ROUNDS, help="real replays (and simulated seeds), pooled"
    )
    ap.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="an earlier validation's raw directory (loadtests/results/raw/sim-validation-*): "
        "compare against its recorded real rounds (no Ray) after a change to the simulator or "
        "the profile",
    )
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    return args


def reused_rounds(earlier: Path, base: Path) -> list[Path]:
    """The real rounds an earlier validation recorded, copied under ``base``."""
    dirs = sorted(earlier.glob("real-*"), key=lambda d: int(d.name.split("-")[1]))
    if not dirs:
        raise SystemExit(f"{earlier}: no real-<i> run directories")
    base.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        shutil.copytree(d, base / d.name)
    return [base / d.name for d in dirs]


def sim_rounds(
    trace: list[TraceRecord], info: RunInfo, profile: str, rounds: int, base: Path
) -> tuple[list[tuple[list[RequestRecord], dict]], list[Path]]:
    """``rounds`` seeded simulations of the trace: (records, summary) and run directory each."""
    inputs = RunInputs(load_catalog(), load_profile(profile), None, trace, info)
    sim_info = info.model_copy(update={"source": "sim", "api": None, "url": None})
    runs, dirs = [], []
    for seed in range(rounds):
        # the catalog's replicas (one per family), packed on one GPU as Ray packs them
        result = run_sim(inputs, SimConfig(weights=info.weights, seed=seed))
        out = base / f"sim-{seed + 1}"
        summary = write_outputs(out, result, sim_info, {"profile": profile, "seed": seed})
        runs.append((result.records, summary))
        dirs.append(out)
    return runs, dirs


def _rel(d: Path) -> str:
    return str(d.relative_to(REPO) if d.is_relative_to(REPO) else d)


def build_summary(
    args: argparse.Namespace,
    real_runs: list[tuple[list[RequestRecord], RunInfo]],
    sim_runs: list[tuple[list[RequestRecord], dict]],
    dirs: tuple[list[Path], list[Path]],
    at: str,
) -> dict:
    """Pooled comparison, every round's numbers, their spread and the phases, real vs sim."""
    real_summaries = [summarize(rs, i) for rs, i in real_runs]
    real = pooled(real_summaries, [rs for rs, _ in real_runs])
    sim = pooled([s for _, s in sim_runs], [rs for rs, _ in sim_runs])
    rows, ok = compare(real, sim)
    real_rounds = [metrics(s) for s in real_summaries]
    sim_rounds = [metrics(s) for _, s in sim_runs]
    return {
        "scenario": str(args.scenario),
        "profile": args.profile,
        "tolerance": TOLERANCE,
        "passed": ok,
        "real": real,
        "sim": sim,
        "rows": rows,
        "rounds": args.rounds,
        "real_recorded_by": None if args.reuse is None else args.reuse.name,
        "real_rounds": real_rounds,
        "sim_rounds": sim_rounds,
        "spread": {"real": spread(real_rounds), "sim": spread(sim_rounds)},
        "phases": {"real": phases([rs for rs, _ in real_runs]),
                   "sim": phases([rs for rs, _ in sim_runs])},
        "raw": {"real": [_rel(d) for d in dirs[0]], "sim": [_rel(d) for d in dirs[1]]},
        "date": at,
    }  # fmt: skip


def main() -> None:
    args = parse_args()
    scenario_path = find_scenario(args.scenario)
    trace = generate(load_scenario(scenario_path))
    tenants = sorted({r.tenant for r in trace})
    at = stamp()
    name = f"sim-validation-{at}"
    raw = RAW / name
    load_profile(args.profile)  # a bad profile fails before any real round
    if args.reuse is not None:  # real rounds recorded by an earlier validation
        dirs = reused_rounds(args.reuse, raw)
        args.rounds = len(dirs)
    else:
        dirs = run_real(scenario_path, raw, tenants, args.rounds)
    real_runs = [read_run(d) for d in dirs]
    sim_runs, sim_dirs = sim_rounds(trace, real_runs[0][1], args.profile, args.rounds, raw)
    summary = build_summary(args, real_runs, sim_runs, (dirs, sim_dirs), at)
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / name
    base.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    base.with_suffix(".md").write_text(render(summary, at))
    table = Table("class", "metric", "real", "sim", "ratio", title="simulator vs real")
    for r in summary["rows"]:
        table.add_row(r["class"], r["metric"], _f(r["real"]), _f(r["sim"]), _f(r["ratio"]))
    console.print(table)
    console.print(f"{'PASS' if summary['passed'] else 'FAIL'} → {base.with_suffix('.md')}")


def render(summary: dict, at: str) -> str:
    """The Markdown report: pooled comparison, every round, the spread, the phases."""
    raw = ", ".join(f"`{d}`" for d in [*summary["raw"]["real"], *summary["raw"]["sim"]])
    return "\n".join(
        [
            *_render_comparison(summary, at),
            *_render_rounds(summary),
            *_render_phases(summary),
            "",
            f"Raw records and reports: {raw}.",
            "",
        ]
    )


def _render_comparison(summary: dict, at: str) -> list[str]:
    n, ok = summary["rounds"], summary["passed"]
    lines = [
        f"# Simulator validation: {summary['scenario']} ({at})",
        "",
        f"Real: {n} rounds of `genmedia loadtest run` against one local `genmedia serve` "
        f"(default tiny catalog, this machine); simulated: profile `{summary['profile']}`, "
        f"same trace, {n} rounds (seeds 0-{n - 1}). Latency percentiles pooled over the "
        f"rounds, throughput the median round's. Target: simulated within "
        f"{TOLERANCE:.0%} of real on the whole run. Result: **{'PASS' if ok else 'FAIL'}**.",
        "",
        *(
            [f"The real rounds were recorded by `{summary['real_recorded_by']}` (`--reuse`).", ""]
            if summary.get("real_recorded_by")
            else []
        ),
        "| class | metric | real | simulated | sim / real | within 20 % |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['class']} | {r['metric']} | {_f(r['real'])} | {_f(r['sim'])} | "
            f"{_f(r['ratio'])} | {'yes' if r['within_20pct'] else 'no'} |"
        )
    return lines


def _render_rounds(summary: dict) -> list[str]:
    lines = [
        "",
        "## Every round (whole run)",
        "",
        "One round has about 48 requests, so its p99 is close to its slowest request.",
        "",
        "| round | real p50 | real p99 | real images/s | sim p50 | sim p99 | sim images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (r, s) in enumerate(zip(summary["real_rounds"], summary["sim_rounds"], strict=True)):
        ra, sa = r["all"], s["all"]
        lines.append(
            f"| {i + 1} | {_f(ra['p50_s'])} | {_f(ra['p99_s'])} | "
            f"{_f(ra['throughput_images_per_s'])} | {_f(sa['p50_s'])} | {_f(sa['p99_s'])} | "
            f"{_f(sa['throughput_images_per_s'])} |"
        )
    lines += ["", "| spread over rounds | min | median | max | pooled |", "|---|---|---|---|---|"]
    for side in ("real", "sim"):
        for k in METRICS:
            sp = summary["spread"][side][k]
            if sp:
                lines.append(
                    f"| {side} {k} | {_f(sp['min'])} | {_f(sp['median'])} | {_f(sp['max'])} | "
                    f"{_f(summary[side]['all'][k])} |"
                )
    return lines


def _render_phases(summary: dict) -> list[str]:
    lines = [
        "",
        "## Where the time went (completed requests, pooled; seconds)",
        "",
        "admit: send to 202; queue: at the scheduler; compute: holding the worker's gate; "
        "rest: the remainder (hand-off, waiting at the gate or paused by an interactive call, "
        "storing, the final status's way back to the client).",
        "",
        "| phase | real p50 | real p99 | real max | sim p50 | sim p99 | sim max |",
        "|---|---|---|---|---|---|---|",
    ]
    for ph, r in summary["phases"]["real"].items():
        s = summary["phases"]["sim"][ph]
        lines.append(
            f"| {ph} | {_f(r['p50'])} | {_f(r['p99'])} | {_f(r['max'])} | {_f(s['p50'])} | "
            f"{_f(s['p99'])} | {_f(s['max'])} |"
        )
    return lines


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
