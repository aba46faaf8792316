"""Job store benchmark: submit and status-read rates through the whole stack with a PostgreSQL
job store ÷ with a SQLite one.

One local Ray Serve, the tiny SD1.5-style model, and a throwaway PostgreSQL server on 127.0.0.1
(``genmedia.deployments.store.sql.local_pg``: ``initdb`` into a temporary folder, stopped and
deleted at the end; PostgreSQL's own durability defaults unless ``--pg-no-fsync``). The same
catalog but for ``server.scheduler.job_store``, measured side by side in one run:
``--rounds`` rounds, each deploying the app once per store (the order alternates between rounds),
then ``--seconds`` of single submits (batch class, 1 step at 32 px: the worker's background work
is small) and ``--seconds`` of status reads of the jobs that store holds, 16 closed-loop
clients, after a short warm-up. Each store keeps its jobs across rounds (a SQLite file, a
PostgreSQL database), so every redeploy rebuilds a queue of the same kind.

Summary (PostgreSQL ÷ SQLite rates, pooled and per round; latency percentiles) to
``loadtests/results/bench_store-<stamp>.json``, raw samples to ``loadtests/results/raw/``.

    flock /tmp/genmedia-ray.lock python benchmarks/bench_store.py [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import sqlalchemy as sa
from _bench import (
    MODEL,
    auth,
    call_loop,
    commit,
    ensure_weights,
    machine,
    percentile,
    save,
    sd15_catalog,
)
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from genmedia.deployments.store.sql.local_pg import PgServer, local_postgres
from genmedia.loadtests.local import ray_stack, stamp, tenant_record, tenants_file
from genmedia.models.catalog import Catalog

console = Console()
KEY = "gm_0a000003_" + "r" * 43  # quotas no benchmark reaches
CLIENTS = 16
SUBMIT = f"/v1/queue/models/{MODEL}"
JOB = {"priority": "batch", "num_inference_steps": 1, "width": 32, "height": 32}
PASSWORD_ENV = "GENMEDIA_BENCH_PG_PASSWORD"
DATABASE = "genmedia_bench"
STORES = ("sqlite", "postgresql")
OPS = ("submit", "status")


def calls(job_ids: list[str]) -> dict[str, Callable[[httpx.AsyncClient, int], Awaitable[int]]]:
    """Submit (the id kept in ``job_ids``) and status read of one of ``job_ids``."""

    async def submit(c: httpx.AsyncClient, i: int) -> int:
        r = await c.post(SUBMIT, json={"prompt": f"job {i}", **JOB}, headers=auth(KEY))
        assert r.status_code == 202, r.text[:300]
        job_ids.append(r.json()["request_id"])
        return 1

    async def status(c: httpx.AsyncClient, i: int) -> int:
        job = job_ids[(i * 7919) % len(job_ids)]  # spread over old and new jobs
        r = await c.get(f"/v1/queue/requests/{job}/status", headers=auth(KEY))
        assert r.status_code == 200, r.text[:300]
        return 1

    return {"submit": submit, "status": status}


def catalogs(work: str, pg: PgServer) -> dict[str, Catalog]:
    """The same catalog with each job store."""
    stores = {
        "sqlite": {"job_store": f"{work}/jobs.sqlite"},
        "postgresql": {
            "job_store": pg.catalog_url(DATABASE),
            "job_store_password_env": PASSWORD_ENV,
        },
    }
    return {
        name: sd15_catalog(work, server={"scheduler": {**store, "model_queue_limit": 1_000_000}})
        for name, store in stores.items()
    }


def create_database(pg: PgServer) -> str:
    """The benchmark's database; answers the server's version."""
    admin = sa.create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {DATABASE}")
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    finally:
        admin.dispose()


def measure(args: argparse.Namespace, pg: PgServer) -> list[dict[str, Any]]:
    from genmedia.deployments.serve.local import run_app

    work = tempfile.mkdtemp(prefix="genmedia-bench-store-")
    by_store = catalogs(work, pg)
    ensure_weights(by_store["sqlite"])
    tenants = tenants_file([tenant_record("rates", KEY)])
    ids: dict[str, list[str]] = {name: [] for name in STORES}
    rows: list[dict[str, Any]] = []
    env = {PASSWORD_ENV: pg.password}
    with ray_stack(num_cpus=2, num_gpus=1, env_vars=env) as url, Progress(console=console) as bar:
        task = bar.add_task("rounds", total=args.rounds * len(STORES))
        for r in range(args.rounds):
            order = STORES if r % 2 == 0 else STORES[::-1]
            for name in order:
                bar.update(task, description=f"round {r + 1}: deploying with {name}")
                run_app(by_store[name], tenants)
                fns = calls(ids[name])
                asyncio.run(call_loop(url, args.warmup, fns["submit"], CLIENTS))
                asyncio.run(call_loop(url, args.warmup, fns["status"], CLIENTS))
                for op in OPS:
                    bar.update(task, description=f"round {r + 1}: {name} {op}")
                    part = asyncio.run(call_loop(url, args.seconds, fns[op], CLIENTS))
                    rows.append({"round": r, "store": name, "op": op, **part})
                bar.advance(task)
    return rows


def _rate(rows: list[dict[str, Any]]) -> float:
    return sum(p["ops"] for p in rows) / sum(p["seconds"] for p in rows)


def _pct(rows: list[dict[str, Any]], q: float) -> float:
    lat = sorted(x for p in rows for x in p["latencies_s"])
    return round(percentile(lat, q), 4) if lat else math.nan


def build_summary(
    args: argparse.Namespace, rows: list[dict[str, Any]], pg_version: str
) -> dict[str, Any]:
    def pick(store: str, op: str, r: int | None = None) -> list[dict[str, Any]]:
        return [
            p
            for p in rows
            if p["store"] == store and p["op"] == op and (r is None or p["round"] == r)
        ]

    rates = {s: {op: round(_rate(pick(s, op)), 1) for op in OPS} for s in STORES}
    per_round = [
        {
            op: round(_rate(pick("postgresql", op, r)) / _rate(pick("sqlite", op, r)), 3)
            for op in OPS
        }
        for r in range(args.rounds)
    ]
    return {
        "benchmark": "bench_store",
        "commit": commit(),
        "machine": machine(),
        "args": vars(args),
        "postgresql": {
            "server": "local initdb on 127.0.0.1 (TCP, scram-sha-256)",
            "version": pg_version,
            "durability": "off (fsync, synchronous_commit)" if args.pg_no_fsync else "defaults",
        },
        "sqlite": {"mode": "WAL, synchronous=NORMAL (deployments/store/open.py)"},
        "rates_per_s": rates,
        "postgresql_over_sqlite": {
            op: round(rates["postgresql"][op] / rates["sqlite"][op], 3) for op in OPS
        },
        "postgresql_over_sqlite_per_round": per_round,
        "latency_s": {
            s: {op: {"p50": _pct(pick(s, op), 50), "p99": _pct(pick(s, op), 99)} for op in OPS}
            for s in STORES
        },
        "errors": {s: {op: sum(p["errors"] for p in pick(s, op)) for op in OPS} for s in STORES},
    }


def report(summary: dict[str, Any], path: str, raw_path: str) -> None:
    t = Table(title="bench_store: PostgreSQL ÷ SQLite job store")
    for col in ("op", "SQLite /s", "PostgreSQL /s", "PG ÷ SQLite", "per round"):
        t.add_column(col, justify="right" if col != "op" else "left")
    for op in OPS:
        t.add_row(
            op,
            str(summary["rates_per_s"]["sqlite"][op]),
            str(summary["rates_per_s"]["postgresql"][op]),
            str(summary["postgresql_over_sqlite"][op]),
            ", ".join(str(r[op]) for r in summary["postgresql_over_sqlite_per_round"]),
        )
    console.print(t)
    console.print(f"summary: {path}\nraw: {raw_path}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds (each store once per round)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of one rate measurement")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up calls after each deploy")
    p.add_argument(
        "--pg-no-fsync", action="store_true", help="PostgreSQL without fsync/synchronous commit"
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with local_postgres(durable=not args.pg_no_fsync) as pg:
        version = create_database(pg)
        rows = measure(args, pg)
    summary = build_summary(args, rows, version)
    summary_path, raw_path = save(f"bench_store-{stamp()}", summary, rows)
    report(summary, str(summary_path), str(raw_path))


if __name__ == "__main__":
    main()
