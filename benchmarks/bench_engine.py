"""The step engine ÷ request-level batching, side by side in one run (``workers.sd15.engine``).

1. The bare diffusers pipeline (this process, no Ray, before and after the stack runs):
   images/s at the catalog's batch size with the worker replica's torch threads, and with every
   thread count up to the machine's cores; each figure is the better of its two runs, and the
   best thread count's is "the best bare run".
2. ``--rounds`` times, each engine in turn (``request``, then ``step``) on one local Ray Serve:
   closed-loop saturation (``--concurrency`` clients of the sync endpoint) gives the serving
   efficiency, stack img/s ÷ bare img/s (same model, batch size and torch threads), and ÷ the
   best bare run; each closed loop is also quoted ÷ the bare runs just before and after it (at
   every thread count, ``--bare-seconds``/2 each, the stack deployed and idle): this machine's
   speed drifts by a third within minutes, and those ratios ("beside") compare like with like;
   then open-loop Poisson arrivals at ``--loads`` of the request-level engine's
   capacity measured in that round (the first edition's): p50/p99 latency and throughput, step
   ÷ request. Rounds alternate the engines because these machines are shared and noisy; the
   summary gives every round and the medians.
3. Mixed interactive + bulk, per engine in each round (``--mixed-seconds`` windows): bulk
   alone (closed loop of batch-class requests), interactive alone (Poisson arrivals at
   ``--interactive-rate``), then both at once → interactive p99 mixed ÷ alone and bulk
   images/s mixed ÷ alone.
4. Where the CPU goes: during each closed loop, CPU milliseconds per answered image of every
   process of the stack (``_cpu.py``: each Serve deployment, the proxy and controller, the
   pipeline process, the load generator, the rest of Ray). Each deploy gets ``--prewarm``
   seconds of closed-loop load before anything is measured, so both engines are measured
   warm (the step engine runs more batch shapes, each of which the CPU kernels set up once).

Same tiny SD1.5-style model everywhere. The summary records each engine's worker
``max_ongoing_requests`` beside the slots the dispatcher's rule gives it
(``scheduler/dispatcher.py``: ``slots_per_replica``). The summary goes to
``loadtests/results/``, raw samples (bare calls, every request) to ``loadtests/results/raw/``.

    flock /tmp/genmedia-ray.lock python benchmarks/bench_engine.py [--steps 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from _bench import (
    closed_loop,
    commit,
    ensure_weights,
    machine,
    measure_bare,
    open_loop,
    save,
    serving_catalog,
)
from _cpu import cpu_per_image, snapshot
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from genmedia.deployments.scheduler.dispatcher import slots_per_replica
from genmedia.loadtests.local import ray_stack, stamp, tenant_record, tenants_file

API_KEY = "gm_0bec0001_" + "e" * 43
ENGINES = ("request", "step")
console = Console()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bare-seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of both engines, alternated")
    ap.add_argument("--seconds", type=float, default=15.0, help="closed-loop window")
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument(
        "--prewarm",
        type=float,
        default=10.0,
        help="seconds of closed-loop load after each deploy, before any window (warm shapes)",
    )
    ap.add_argument("--open-seconds", type=float, default=15.0, help="open-loop window per load")
    ap.add_argument("--loads", default="0.5,0.8,0.95", help="fractions of capacity")
    ap.add_argument("--mixed-seconds", type=float, default=20.0, help="mixed part's windows")
    ap.add_argument(
        "--interactive-rate", type=float, default=2.0, help="mixed part: interactive arrivals/s"
    )
    ap.add_argument(
        "--worker-cpus",
        type=int,
        default=1,
        help="the sd15 worker's num_cpus (its torch threads follow); the machine's cores give "
        "the family the whole machine",
    )
    ap.add_argument(
        "--control-plane-niceness",
        type=int,
        default=None,
        help="server.control_plane_niceness of the deployed catalog (default: the catalog's)",
    )
    ap.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="closed-loop clients (default: 3 x batch, enough to fill either engine)",
    )
    return ap.parse_args()


def load_bare(args: argparse.Namespace) -> Any:
    """The tiny model, loaded in this process for the bare runs."""
    from genmedia.models.runner import load_model
    from genmedia.models.weights import resolve_source

    catalog = serving_catalog(
        args.batch, args.steps, args.size, tempfile.mkdtemp(prefix="genmedia-bench-engine-")
    )
    ensure_weights(catalog)
    return load_model(catalog.models[0], resolve_source("tiny://sd15"), "cpu")


def bare_by_threads(
    model: Any, batch: int, seconds: float, worker_threads: int, seed: int = 0
) -> dict[int, dict[str, Any]]:
    """The bare pipeline's run at every torch thread count up to the cores (and the worker's),
    ``seconds`` each; the worker's thread count is set again after."""
    import torch

    runs = {}
    for threads in sorted({worker_threads, *range(1, (os.cpu_count() or 1) + 1)}):
        torch.set_num_threads(threads)
        runs[threads] = measure_bare(model, batch, seconds, seed0=seed + threads)
    torch.set_num_threads(worker_threads)
    return runs


def measure_bare_runs(
    args: argparse.Namespace, model: Any, worker_threads: int, into: dict[int, list[dict]]
) -> None:
    """The bare pipeline at every torch thread count up to the cores (Ray idle or stopped)."""
    for threads, run in bare_by_threads(
        model, args.batch, args.bare_seconds, worker_threads
    ).items():
        into.setdefault(threads, []).append(run)


def measure_adjacent_bare(
    args: argparse.Namespace, model: Any, worker_threads: int, seed: int
) -> dict[int, float]:
    """The bare pipeline's images/s at every thread count, measured now (the stack deployed and
    idle): this machine's speed drifts by a third within minutes, so each closed loop is also
    quoted against the bare runs just before and just after it."""
    runs = bare_by_threads(model, args.batch, args.bare_seconds / 2, worker_threads, seed)
    return {threads: run["images_per_s"] for threads, run in runs.items()}


def measure_engine(
    url: str,
    args: argparse.Namespace,
    engine: str,
    concurrency: int,
    rates: list[float] | None,
    bare: tuple[Any, int],
) -> dict[str, Any]:
    """One engine deployed: closed-loop capacity between two adjacent bare runs (``bare``: the
    model loaded here and the worker's threads), then open loops at ``rates`` (None: at the
    loads of this engine's own capacity)."""
    from genmedia.deployments.serve.app import plan_workers
    from genmedia.deployments.serve.local import delete_app, run_app

    workdir = tempfile.mkdtemp(prefix=f"genmedia-bench-engine-{engine}-")
    server: dict[str, int] = {}
    if args.control_plane_niceness is not None:
        server["control_plane_niceness"] = args.control_plane_niceness
    catalog = serving_catalog(
        args.batch,
        args.steps,
        args.size,
        workdir,
        engine=engine,
        num_cpus=args.worker_cpus,
        server=server,
    )
    run_app(catalog, tenants_file([tenant_record("bench", API_KEY)]))
    if args.prewarm > 0:  # every batch shape the engine will run, before anything is measured
        asyncio.run(closed_loop(url, API_KEY, concurrency, args.prewarm, 0.0))
    model, threads = bare
    bare_before = measure_adjacent_bare(args, model, threads, seed=1000)
    before, t0 = snapshot(), time.perf_counter()
    closed = asyncio.run(closed_loop(url, API_KEY, concurrency, args.seconds, args.warmup))
    answered = sum(1 for s in closed["samples"] if s["status"] == 200)
    closed["cpu"] = cpu_per_image(before, snapshot(), answered, time.perf_counter() - t0)
    bare_after = measure_adjacent_bare(args, model, threads, seed=2000)
    closed["bare_adjacent"] = {
        t: (bare_before[t] + bare_after[t]) / 2 for t in bare_before
    }  # images/s by threads: the mean of the runs before and after
    loads = [float(x) for x in args.loads.split(",")]
    if rates is None:
        rates = [f * closed["images_per_s"] for f in loads]
    opened = []
    for i, (load, rate) in enumerate(zip(loads, rates, strict=True)):
        run = asyncio.run(open_loop(url, API_KEY, rate, args.open_seconds, args.warmup, seed=i))
        opened.append({"load": load, **run})
    mixed = measure_mixed(url, args, concurrency)
    delete_app()
    return {
        "max_ongoing_requests": plan_workers(catalog)[0].max_ongoing_requests,
        "closed": closed,
        "open": opened,
        "mixed": mixed,
    }


def measure_mixed(url: str, args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    """Bulk alone, interactive alone, then both at once on the deployed engine."""
    secs, warm, rate = args.mixed_seconds, args.warmup, args.interactive_rate

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        bulk, inter = await asyncio.gather(
            closed_loop(url, API_KEY, concurrency, secs, warm, priority="batch"),
            open_loop(url, API_KEY, rate, secs, warm, seed=101, priority="interactive"),
        )
        return bulk, inter

    bulk_alone = asyncio.run(closed_loop(url, API_KEY, concurrency, secs, warm, "batch"))
    inter_alone = asyncio.run(open_loop(url, API_KEY, rate, secs, warm, 100, "interactive"))
    bulk_mixed, inter_mixed = asyncio.run(both())
    return {
        "bulk_alone": bulk_alone,
        "interactive_alone": inter_alone,
        "bulk_mixed": bulk_mixed,
        "interactive_mixed": inter_mixed,
    }


def mixed_figures(mixed: dict[str, Any]) -> dict[str, Any]:
    """Interactive p99 with bulk ÷ alone, bulk img/s with interactive ÷ alone."""
    ia, im = mixed["interactive_alone"], mixed["interactive_mixed"]
    ba, bm = mixed["bulk_alone"], mixed["bulk_mixed"]
    return {
        "interactive_samples": [ia["sent"], im["sent"]],
        "interactive_alone_p99_s": ia["p99_s"],
        "interactive_mixed_p99_s": im["p99_s"],
        "interactive_p99_mixed_over_alone": _ratio(im["p99_s"], ia["p99_s"]),
        "bulk_alone_images_per_s": ba["images_per_s"],
        "bulk_mixed_images_per_s": bm["images_per_s"],
        "bulk_mixed_over_alone": _ratio(bm["images_per_s"], ba["images_per_s"]),
        "errors": ia["errors"] + im["errors"] + ba["errors"] + bm["errors"],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def engine_figures(run: dict[str, Any], same: float, best: float, threads: int) -> dict[str, Any]:
    """One engine's figures in one round (``threads``: the worker's torch threads)."""
    c = run["closed"]
    adjacent = c["bare_adjacent"]
    return {
        "worker_max_ongoing_requests": run["max_ongoing_requests"],
        "images_per_s": c["images_per_s"],
        "efficiency": c["images_per_s"] / same,
        "efficiency_vs_best_bare": c["images_per_s"] / best,
        "bare_adjacent_images_per_s": adjacent,
        "efficiency_adjacent": c["images_per_s"] / adjacent[threads],
        "efficiency_adjacent_vs_best_bare": c["images_per_s"] / max(adjacent.values()),
        "mean_batch_images": c["mean_batch_images"],
        "errors": c["errors"],
        "cpu_ms_per_image": c["cpu"]["ms_per_image"],
        "cpu_core_share": c["cpu"]["core_share"],
        "open": [
            {k: o[k] for k in ("load", "rate", "sent", "errors", "p50_s", "p99_s")}
            | {"images_per_s": o["images_per_s"], "mean_batch_images": o["mean_batch_images"]}
            for o in run["open"]
        ],
        "mixed": mixed_figures(run["mixed"]),
    }


def step_over_request(req: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """The step engine's figures ÷ the request-level engine's, one round."""
    return {
        "capacity": _ratio(step["images_per_s"], req["images_per_s"]),
        "open": [
            {
                "load": r["load"],
                "p50": _ratio(s["p50_s"], r["p50_s"]),
                "p99": _ratio(s["p99_s"], r["p99_s"]),
                "throughput": _ratio(s["images_per_s"], r["images_per_s"]),
            }
            for r, s in zip(req["open"], step["open"], strict=True)
        ],
    }


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each engine's efficiency and of every step ÷ request ratio."""
    out: dict[str, Any] = {
        f"{e}_{k}": _median([r["engines"][e][k] for r in rounds])
        for e in ENGINES
        for k in (
            "images_per_s",
            "efficiency",
            "efficiency_vs_best_bare",
            "efficiency_adjacent",
            "efficiency_adjacent_vs_best_bare",
        )
    }
    for e in ENGINES:
        for k in ("interactive_p99_mixed_over_alone", "bulk_mixed_over_alone"):
            out[f"{e}_{k}"] = _median([r["engines"][e]["mixed"][k] for r in rounds])
    out["cpu_ms_per_image"] = {
        e: {
            part: _median([r["engines"][e]["cpu_ms_per_image"].get(part) for r in rounds])
            for part in {p for r in rounds for p in r["engines"][e]["cpu_ms_per_image"]}
        }
        for e in ENGINES
    }
    ratios = [r["step_over_request"] for r in rounds]
    out["step_over_request"] = {
        "capacity": _median([x["capacity"] for x in ratios]),
        "open": [
            {"load": o["load"]}
            | {k: _median([x["open"][i][k] for x in ratios]) for k in ("p50", "p99", "throughput")}
            for i, o in enumerate(ratios[0]["open"])
        ],
    }
    return out


def build_summary(
    args: argparse.Namespace,
    concurrency: int,
    worker_threads: int,
    bare: dict[int, list[dict[str, Any]]],
    runs: list[dict[str, dict[str, Any]]],
) -> dict[str, Any]:
    bare_ips = {t: max(b["images_per_s"] for b in runs_) for t, runs_ in bare.items()}
    same = bare_ips[worker_threads]
    best_threads = max(bare_ips, key=bare_ips.__getitem__)
    best = bare_ips[best_threads]
    rounds = []
    for by_engine in runs:
        engines = {
            e: engine_figures(run, same, best, worker_threads) for e, run in by_engine.items()
        }
        ratios = step_over_request(engines["request"], engines["step"])
        rounds.append({"engines": engines, "step_over_request": ratios})
    return {
        "benchmark": "bench_engine",
        "model": "tiny sd15 (UNet 32/64 ch, CLIP 32 hidden)",
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "worker_num_cpus": args.worker_cpus,
        "worker_torch_threads": worker_threads,
        "concurrency": concurrency,
        "loads_of": "the request-level engine's closed-loop images/s in the same round",
        "slots_rule": {e: slots_per_replica(e, args.batch) for e in ENGINES},
        "bare": {
            "images_per_s_by_threads": bare_ips,
            "runs_images_per_s_by_threads": {
                t: [b["images_per_s"] for b in runs_] for t, runs_ in bare.items()
            },
            "same_threads_images_per_s": same,
            "best_images_per_s": best,
            "best_threads": best_threads,
        },
        "rounds": rounds,
        "median": medians(rounds),
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def raw_rows(
    bare: dict[int, list[dict[str, Any]]], runs: list[dict[str, dict[str, Any]]]
) -> Iterator[dict]:
    for threads, repeats in bare.items():
        for i, b in enumerate(repeats):
            for c in b["call_seconds"]:
                yield {"side": "bare", "threads": threads, "repeat": i, "call_s": c}
    for r, by_engine in enumerate(runs):
        for engine, run in by_engine.items():
            for s in run["closed"]["samples"]:
                yield {"round": r, "side": engine, "phase": "closed", **s}
            for o in run["open"]:
                for s in o["samples"]:
                    yield {
                        "round": r,
                        "side": engine,
                        "phase": "open",
                        "load": o["load"],
                        "rate": o["rate"],
                        **s,
                    }
            for part, loop in run["mixed"].items():
                for s in loop["samples"]:
                    yield {"round": r, "side": engine, "phase": f"mixed:{part}", **s}


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def cpu_table(summary: dict[str, Any]) -> Table:
    """CPU milliseconds per image by process, closed loop, median over rounds, per engine."""
    m = summary["median"]["cpu_ms_per_image"]
    parts = sorted(
        {p for e in ENGINES for p in m[e]}, key=lambda p: -max(m[e].get(p) or 0 for e in ENGINES)
    )
    table = Table("process", *ENGINES, title="CPU ms per image, closed loop (median of rounds)")
    for part in parts:
        table.add_row(part, *(_fmt(m[e].get(part), ".1f") for e in ENGINES))
    table.add_row("all", *(_fmt(sum(v or 0 for v in m[e].values()), ".1f") for e in ENGINES))
    return table


def report(summary: dict[str, Any]) -> None:
    bare = summary["bare"]
    console.print(
        f"bare pipeline, batch {summary['batch']} (best of 2 runs): "
        + ", ".join(f"{t} thr {v:.2f} img/s" for t, v in bare["images_per_s_by_threads"].items())
    )
    closed = Table(
        "round",
        "engine",
        "max ongoing",
        "img/s",
        "mean batch",
        "÷ bare",
        "÷ best bare",
        "bare beside",
        "÷ bare beside",
        "÷ best beside",
        title="closed loop (saturation)",
    )
    opened = Table(
        "round",
        "load",
        "rate /s",
        "engine",
        "p50 s",
        "p99 s",
        "img/s",
        "errors",
        title="open loop (Poisson)",
    )
    for i, r in enumerate(summary["rounds"]):
        for name, e in r["engines"].items():
            closed.add_row(
                str(i + 1),
                name,
                str(e["worker_max_ongoing_requests"]),
                f"{e['images_per_s']:.2f}",
                f"{e['mean_batch_images']:.2f}",
                f"{e['efficiency']:.3f}",
                f"{e['efficiency_vs_best_bare']:.3f}",
                " / ".join(f"{v:.2f}" for v in e["bare_adjacent_images_per_s"].values()),
                f"{e['efficiency_adjacent']:.3f}",
                f"{e['efficiency_adjacent_vs_best_bare']:.3f}",
            )
            for o in e["open"]:
                opened.add_row(
                    str(i + 1),
                    f"{o['load']:.0%}",
                    f"{o['rate']:.2f}",
                    name,
                    _fmt(o["p50_s"]),
                    _fmt(o["p99_s"]),
                    f"{o['images_per_s']:.2f}",
                    str(o["errors"]),
                )
    mixed = Table(
        "round",
        "engine",
        "interactive p99 alone s",
        "with bulk s",
        "÷",
        "bulk img/s alone",
        "with interactive",
        "÷",
        title="mixed interactive + bulk",
    )
    for i, r in enumerate(summary["rounds"]):
        for name, e in r["engines"].items():
            x = e["mixed"]
            mixed.add_row(
                str(i + 1),
                name,
                _fmt(x["interactive_alone_p99_s"]),
                _fmt(x["interactive_mixed_p99_s"]),
                _fmt(x["interactive_p99_mixed_over_alone"]),
                _fmt(x["bulk_alone_images_per_s"], ".2f"),
                _fmt(x["bulk_mixed_images_per_s"], ".2f"),
                _fmt(x["bulk_mixed_over_alone"]),
            )
    console.print(closed)
    console.print(opened)
    console.print(mixed)
    console.print(cpu_table(summary))
    m = summary["median"]
    r = m["step_over_request"]
    console.print(
        f"median over {len(summary['rounds'])} rounds: efficiency request "
        f"{_fmt(m['request_efficiency'])} step {_fmt(m['step_efficiency'])} (÷ the bare runs "
        f"beside each: request {_fmt(m['request_efficiency_adjacent'])} step "
        f"{_fmt(m['step_efficiency_adjacent'])}; ÷ the best of them: request "
        f"{_fmt(m['request_efficiency_adjacent_vs_best_bare'])} step "
        f"{_fmt(m['step_efficiency_adjacent_vs_best_bare'])}); "
        f"step ÷ request: capacity {_fmt(r['capacity'])}; "
        + "; ".join(
            f"{o['load']:.0%}: p50 {_fmt(o['p50'])} p99 {_fmt(o['p99'])} "
            f"throughput {_fmt(o['throughput'])}"
            for o in r["open"]
        )
    )


def main() -> None:
    from genmedia.deployments.worker.batch import torch_threads_for
    from genmedia.deployments.worker.cpu_pinning import host_cores
    from genmedia.models.catalog import ServerSettings

    args = parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    concurrency = args.concurrency or 3 * args.batch
    reserved = ServerSettings.model_fields["reserved_cpus"].default  # the catalog's
    worker_threads = torch_threads_for(args.worker_cpus, host_cores(), reserved)
    console.print("bare pipeline runs …")
    model = load_bare(args)
    bare: dict[int, list[dict[str, Any]]] = {}
    measure_bare_runs(args, model, worker_threads, bare)
    runs: list[dict[str, dict[str, Any]]] = []
    # Ray's logical CPUs: the worker's plus one for the control plane (gateway, scheduler), so
    # a worker given the whole machine (``--worker-cpus`` = cores) can still be scheduled
    cpus = max(os.cpu_count() or 2, args.worker_cpus + 1)
    with ray_stack(num_cpus=cpus, num_gpus=1) as url, Progress(console=console) as progress:
        task = progress.add_task("rounds", total=args.rounds * len(ENGINES))
        for r in range(args.rounds):
            by_engine: dict[str, dict[str, Any]] = {}
            rates = None
            for engine in ENGINES:  # request first: its capacity sets the round's loads
                progress.update(task, description=f"round {r + 1}: engine {engine}")
                by_engine[engine] = measure_engine(
                    url, args, engine, concurrency, rates, (model, worker_threads)
                )
                rates = [o["rate"] for o in by_engine[engine]["open"]]
                progress.advance(task)
            runs.append(by_engine)
    measure_bare_runs(args, model, worker_threads, bare)  # again, Ray stopped
    summary = build_summary(args, concurrency, worker_threads, bare, runs)
    name = f"bench_engine-{stamp()}-s{args.steps}-b{args.batch}"
    summary_path, raw_path = save(name, summary, raw_rows(bare, runs))
    report(summary)
    console.print(f"summary → {summary_path}\nraw samples → {raw_path}")


if __name__ == "__main__":
    main()
