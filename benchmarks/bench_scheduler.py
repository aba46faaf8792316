"""Scheduler benchmark: interactive latency under a bulk flood, batch throughput, fairness.

One local Ray Serve, the tiny SD1.5-style model, open-loop traffic (arrivals on a schedule,
whatever the responses). Scenarios, each ``--seconds`` long:

- ``idle``: a light interactive stream alone → interactive p99 on an idle cluster;
- ``flood``: batch-class jobs from three tenants (weights 1, 1, 2) offered above capacity
  → batch throughput alone, Jain's index across the equal-weight tenants, weighted shares;
- ``mixed``: the flood and the interactive stream together → interactive p99 under the flood,
  batch throughput with interactive traffic.

With the priority scheduler the three run interleaved for ``--rounds`` rounds (idle, flood,
mixed, idle, flood, mixed, ...) so that the machine's drift hits every scenario alike; samples
are pooled per scenario. Then the scheduler is redeployed in FIFO mode for one mixed round.

Targets (issue): p99 under flood ≤ 1.5 x idle p99; batch throughput with interactive traffic
>= 0.9 x without; Jain ≥ 0.95; weighted shares within 10 %. Interactive requests preempt a
running batch-class call at its next denoising step (the worker's step gate), so they never wait
for a whole bulk call; the compute they take is reported (``interactive_compute_share``): batch
throughput cannot stay above 1 - that share. The summary goes to ``loadtests/results/``, raw
samples to ``loadtests/results/raw/``.

    flock /tmp/genmedia-ray.lock python benchmarks/bench_scheduler.py [--rounds 4] [--seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
from _bench import MODEL, ensure_weights, poisson, save, sd15_catalog
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from genmedia.loadtests.local import ray_stack, stamp, tenant_record, tenants_file
from genmedia.models.catalog import Catalog

console = Console()
KEYS = {  # tenant -> (key, weight, class)
    "web": ("gm_0e000001_" + "w" * 43, 1.0, "interactive"),
    "bulk-a": ("gm_0a000001_" + "a" * 43, 1.0, "batch"),
    "bulk-b": ("gm_0b000001_" + "b" * 43, 1.0, "batch"),
    "bulk-c": ("gm_0c000001_" + "c" * 43, 2.0, "batch"),
}
FLOOD_TENANTS = ("bulk-a", "bulk-b", "bulk-c")
SCENARIOS = ("idle", "flood", "mixed")


def _catalog(policy: str, workdir: str, steps: int, batch: int) -> Catalog:
    return sd15_catalog(
        workdir,
        server={
            "scheduler": {
                "job_store": f"{workdir}/jobs-{policy}.sqlite",
                "policy": policy,
                "batch_min_share": 0.2,
            }
        },
        parameters={
            "steps": {"default": steps, "min": 1, "max": 50},
            "num_images": {"default": 1, "min": 1, "max": batch},
        },
        model={"max_batch_size": batch, "batch_wait_ms": 200},
    )


async def _interactive(
    client: httpx.AsyncClient, arrivals: list[float], t0: float, steps: int, samples: list[dict]
) -> None:
    async def one(at: float) -> None:
        await asyncio.sleep(max(0.0, t0 + at - time.time()))
        sent = time.time()
        r = await client.post(
            f"/v1/models/{MODEL}/generate",
            headers={"Authorization": f"Bearer {KEYS['web'][0]}"},
            json={"prompt": "now", "num_inference_steps": steps},
        )
        body = r.json() if r.status_code == 200 else {}
        samples.append(
            {
                "kind": "interactive",
                "sent": sent,
                "done": time.time(),
                "status": r.status_code,
                "compute_s": (body.get("timings") or {}).get("compute_s"),
            }
        )

    await asyncio.gather(*(one(a) for a in arrivals))


async def _flood(
    client: httpx.AsyncClient,
    arrivals: list[tuple[float, str]],
    t0: float,
    images: int,
    submitted: list[dict],
) -> None:
    async def one(at: float, tenant: str) -> None:
        await asyncio.sleep(max(0.0, t0 + at - time.time()))
        r = await client.post(
            f"/v1/queue/models/{MODEL}",
            headers={"Authorization": f"Bearer {KEYS[tenant][0]}"},
            json={"prompt": "bulk", "num_images": images, "priority": "batch"},
        )
        submitted.append(
            {
                "tenant": tenant,
                "status": r.status_code,
                "id": r.json().get("request_id"),
                "sent": t0 + at,
            }
        )

    await asyncio.gather(*(one(at, tenant) for at, tenant in arrivals))


async def _collect(client: httpx.AsyncClient, submitted: list[dict]) -> list[dict]:
    """Finish times of the flood's jobs; cancel what is left so the next scenario starts idle."""
    done: list[dict] = []

    async def one(s: dict) -> None:
        key = KEYS[s["tenant"]][0]
        h = {"Authorization": f"Bearer {key}"}
        st = (await client.get(f"/v1/queue/requests/{s['id']}/status", headers=h)).json()
        if st["status"] in ("IN_QUEUE", "IN_PROGRESS"):
            await client.put(f"/v1/queue/requests/{s['id']}/cancel", headers=h)
        done.append({**s, "final": st["status"], "finished_at": st.get("finished_at")})

    sem = asyncio.Semaphore(32)

    async def guarded(s: dict) -> None:
        async with sem:
            await one(s)

    await asyncio.gather(*(guarded(s) for s in submitted if s["id"]))
    return done


async def scenario(
    url: str,
    *,
    seconds: float,
    interactive_rps: float,
    flood_rps: float,
    steps: int,
    images: int,
    seed: int,
    busy: Callable[[], Awaitable[float]] | None = None,
) -> dict:
    """One open-loop run; returns raw samples, the measurement window and how long the worker's
    pipeline was busy in it (``busy()``: the worker's cumulative gate-held seconds)."""
    rng = random.Random(seed)
    inter = poisson(interactive_rps, seconds, rng) if interactive_rps else []
    flood = (
        [(a, rng.choice(FLOOD_TENANTS)) for a in poisson(flood_rps, seconds, rng)]
        if flood_rps
        else []
    )
    samples: list[dict] = []
    submitted: list[dict] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        t0 = time.time() + 0.5

        async def probe_busy() -> float | None:
            await asyncio.sleep(max(0.0, t0 + 5.0 - time.time()))
            first = await busy() if busy else None
            await asyncio.sleep(max(0.0, t0 + seconds - time.time()))
            return None if first is None else (await busy()) - first

        busy_in_window, *_ = await asyncio.gather(
            probe_busy(),
            _interactive(client, inter, t0, steps, samples),
            _flood(client, flood, t0, images, submitted),
        )
        flood_done = await _collect(client, submitted)
        await asyncio.sleep(2.0)  # let cancelled calls stop
    # Skip the first seconds (queues filling); the window ends when the schedule does.
    return {
        "window": [t0 + 5.0, t0 + seconds],
        "busy_s": busy_in_window,
        "samples": samples,
        "flood": flood_done,
    }


def summarize(parts: list[dict], images: int) -> dict:
    """Pool the rounds of one scenario: latency percentiles, throughput per tenant."""
    span = sum(p["window"][1] - p["window"][0] for p in parts)
    lat: list[float] = []
    compute, errors, rejected = 0.0, 0, 0
    per_tenant = {t: 0 for t in FLOOD_TENANTS}
    for p in parts:
        lo, hi = p["window"]
        for s in p["samples"]:
            errors += s["status"] != 200
            if s["status"] == 200 and lo <= s["sent"] <= hi:
                lat.append(s["done"] - s["sent"])
                compute += s.get("compute_s") or 0.0
        for d in p["flood"]:
            rejected += d["status"] != 202
            if d["final"] == "COMPLETED" and d["finished_at"] and lo <= d["finished_at"] <= hi:
                per_tenant[d["tenant"]] += images
    lat.sort()
    busy = [p["busy_s"] for p in parts if p.get("busy_s") is not None]
    return {
        "pipeline_busy_fraction": sum(busy) / span if busy else None,
        "interactive_n": len(lat),
        "interactive_errors": errors,
        "interactive_p50_s": statistics.median(lat) if lat else None,
        "interactive_p99_s": percentile(lat, 99) if lat else None,
        "interactive_compute_share": compute / span,
        "batch_images_per_s": sum(per_tenant.values()) / span,
        "per_tenant_images_per_s": {t: v / span for t, v in per_tenant.items()},
        "flood_rejected": rejected,
        "measured_s": span,
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of raw samples."""
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 0.0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (priority)")
    ap.add_argument("--seconds", type=float, default=40.0, help="length of one scenario")
    ap.add_argument("--interactive-rps", type=float, default=0.75)
    ap.add_argument(
        "--flood-rps",
        type=float,
        default=12.0,
        help="flood jobs a second (every tenant offers more than its share)",
    )
    ap.add_argument("--flood-images", type=int, default=4, help="images per flood job")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    return ap.parse_args()


def plan(args: argparse.Namespace, policy: str) -> list[tuple[str, float, float]]:
    """One round of a policy: (scenario, interactive rps, flood rps); FIFO runs mixed only."""
    rates = {
        "idle": (args.interactive_rps, 0.0),
        "flood": (0.0, args.flood_rps),
        "mixed": (args.interactive_rps, args.flood_rps),
    }
    names = SCENARIOS if policy == "priority" else ("mixed",)
    return [(name, *rates[name]) for name in names]


def measure(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every round of both policies on one local Ray Serve; raw parts per ``policy/scenario``."""
    from genmedia.deployments.serve.app import worker_name
    from genmedia.deployments.serve.local import delete_app, info_reader, run_app

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    workdir = tempfile.mkdtemp(prefix="genmedia-bench-sched-")
    tenants = tenants_file(tenant_record(t, k, weight=w) for t, (k, w, _) in KEYS.items())
    policies = (("priority", args.rounds), ("fifo", 1))
    raw: dict[str, list[dict]] = {}
    with ray_stack(num_cpus=2, num_gpus=1) as url, Progress(console=console) as progress:
        task = progress.add_task(
            "scenarios", total=sum(len(plan(args, p)) * n for p, n in policies)
        )
        for policy, rounds in policies:
            catalog = _catalog(policy, workdir, args.steps, args.batch)
            ensure_weights(catalog)
            progress.update(task, description=f"deploying with the {policy} scheduler")
            run_app(catalog, tenants)
            read_info = info_reader(worker_name("sd15"))

            async def worker_busy(read_info: Callable[[], Awaitable[dict]] = read_info) -> float:
                return float((await read_info())["busy_s"])

            for r in range(rounds):
                for name, irps, frps in plan(args, policy):
                    label = f"{policy}/{name} round {r + 1}/{rounds} ({args.seconds:g} s)"
                    progress.update(task, description=label)
                    part = asyncio.run(
                        scenario(
                            url,
                            seconds=args.seconds,
                            interactive_rps=irps,
                            flood_rps=frps,
                            steps=args.steps,
                            images=args.flood_images,
                            seed=1000 * r + len(name),
                            busy=worker_busy,
                        )
                    )
                    raw.setdefault(f"{policy}/{name}", []).append(part)
                    progress.advance(task)
            delete_app()
    return raw


def build_summary(args: argparse.Namespace, runs: dict[str, dict]) -> dict[str, Any]:
    """The ratios the targets are about, from the pooled runs of each scenario."""
    idle = runs["priority/idle"]["interactive_p99_s"]
    mixed = runs["priority/mixed"]
    fifo_mixed = runs["fifo/mixed"]
    flood = runs["priority/flood"]
    shares = flood["per_tenant_images_per_s"]
    return {
        "benchmark": "bench_scheduler",
        "model": "tiny sd15 (64 px)",
        "steps": args.steps,
        "batch": args.batch,
        "seconds_per_scenario": args.seconds,
        "rounds": args.rounds,
        "interactive_rps": args.interactive_rps,
        "flood_jobs_per_s": args.flood_rps,
        "flood_images_per_job": args.flood_images,
        "interactive_p99_idle_s": idle,
        "interactive_p99_flood_s": mixed["interactive_p99_s"],
        "interactive_p99_flood_fifo_s": fifo_mixed["interactive_p99_s"],
        "p99_ratio_priority": mixed["interactive_p99_s"] / idle,
        "p99_ratio_fifo": fifo_mixed["interactive_p99_s"] / idle,
        "batch_throughput_alone": flood["batch_images_per_s"],
        "batch_throughput_with_interactive": mixed["batch_images_per_s"],
        "batch_throughput_ratio": mixed["batch_images_per_s"] / flood["batch_images_per_s"],
        "interactive_compute_share": mixed["interactive_compute_share"],
        "pipeline_busy_fraction_flood": flood["pipeline_busy_fraction"],
        "pipeline_busy_fraction_mixed": mixed["pipeline_busy_fraction"],
        "jain_equal_weight_tenants": jain([shares["bulk-a"], shares["bulk-b"]]),
        "weighted_share_ratio_c_over_mean_ab": shares["bulk-c"]
        / statistics.fmean([shares["bulk-a"], shares["bulk-b"]]),
        "weighted_share_target": 2.0,
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def raw_rows(raw: dict[str, list[dict]]) -> Iterator[dict]:
    """Every sample of every round, tagged with its run, round and measurement window."""
    for k, parts in raw.items():
        for n, part in enumerate(parts):
            tag = {"run": k, "round": n, "window": part["window"]}
            for s in part["samples"]:
                yield {**tag, **s}
            for s in part["flood"]:
                yield {**tag, "kind": "flood", **s}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def report(runs: dict[str, dict], summary: dict[str, Any]) -> None:
    t = Table(
        "run",
        "inter p50",
        "inter p99",
        "inter n",
        "batch img/s",
        "a / b / c img/s",
        title="scheduler benchmark (tiny sd15)",
    )
    for k, v in runs.items():
        sh = v["per_tenant_images_per_s"]
        t.add_row(
            k,
            _fmt(v["interactive_p50_s"]),
            _fmt(v["interactive_p99_s"]),
            str(v["interactive_n"]),
            f"{v['batch_images_per_s']:.2f}",
            " / ".join(f"{sh[x]:.2f}" for x in FLOOD_TENANTS),
        )
    console.print(t)
    for key in (
        "p99_ratio_priority",
        "p99_ratio_fifo",
        "batch_throughput_ratio",
        "interactive_compute_share",
        "pipeline_busy_fraction_flood",
        "pipeline_busy_fraction_mixed",
        "jain_equal_weight_tenants",
        "weighted_share_ratio_c_over_mean_ab",
    ):
        console.print(f"{key}: [bold]{summary[key]:.3f}[/]")


def main() -> None:
    args = parse_args()
    raw = measure(args)
    runs = {k: summarize(parts, args.flood_images) for k, parts in raw.items()}
    summary = build_summary(args, runs)
    summary_path, raw_path = save(f"bench_scheduler-{stamp()}", summary, raw_rows(raw))
    report(runs, summary)
    console.print(f"summary → {summary_path}\nraw samples → {raw_path}")


if __name__ == "__main__":
    main()
