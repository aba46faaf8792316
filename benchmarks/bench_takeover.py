"""Scheduler takeover: the active scheduler replica SIGKILLed N times under a submit load.

Issue: a standby scheduler (``server.scheduler.standby: 1``) must take the job store over within
a bounded time (target <= 10 s) when the active replica dies, and every accepted job must end
exactly once. This serves the tiny SD1.5 model on a local Ray with one standby, on a PostgreSQL
job store (a throwaway local server with its durable defaults; ``--job-store sqlite`` for the
embedded store), keeps a submit load running (each job with an Idempotency-Key, retried on 503)
and kills the replica that holds the lease ``--kills`` times, each once Serve has started its
replacement. Per kill: seconds until the standby holds the lease and until the first submit
after the kill is accepted. Then every accepted job's end and the tenant's metered usage.

    flock /tmp/genmedia-ray.lock .venv/bin/python benchmarks/bench_takeover.py --kills 10
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from _bench import MODEL, commit, ensure_weights, machine, save, sd15_catalog
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from genmedia.loadtests.local import ray_stack, stamp, tenant_record, tenants_file
from genmedia.loadtests.takeover import SubmitLoad, kill_active

console = Console()
KEY = "gm_7a1e0001_" + "k" * 43
PASSWORD_ENV = "GENMEDIA_BENCH_PG_PASSWORD"
BODY = {"prompt": "takeover", "num_inference_steps": 4, "priority": "batch"}
TARGET_S = 10.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10, help="kills of the active replica")
    p.add_argument("--job-store", choices=("postgresql", "sqlite"), default="postgresql")
    p.add_argument("--lease-ttl", type=float, default=6.0, help="server.scheduler.lease_ttl_s")
    return p.parse_args()


@contextlib.contextmanager
def job_store(kind: str, workdir: str) -> Iterator[dict[str, Any]]:
    """``server.scheduler`` fields for a job store of ``kind`` that lives for the block."""
    if kind == "sqlite":
        yield {"job_store": f"{workdir}/jobs.sqlite"}
        return
    import sqlalchemy as sa

    from genmedia.deployments.store.sql.local_pg import local_postgres

    with local_postgres(durable=True) as pg:
        admin = sa.create_engine(pg.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE genmedia_bench")
        admin.dispose()
        os.environ[PASSWORD_ENV] = pg.password
        yield {
            "job_store": pg.catalog_url("genmedia_bench"),
            "job_store_password_env": PASSWORD_ENV,
        }


def wait_for_standby(timeout_s: float = 180.0) -> None:
    """Until Serve runs both scheduler replicas again (the killed one's replacement)."""
    from genmedia.deployments.serve.local import app_state

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        state = app_state()
        dep = state.deployments.get("scheduler") if state else None
        if dep is not None and dep.replicas.get("RUNNING", 0) >= 2:
            return
        time.sleep(0.25)
    raise TimeoutError("Serve did not restart the killed scheduler replica")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from genmedia.deployments.serve.local import run_app

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    workdir = tempfile.mkdtemp(prefix="genmedia-bench-takeover-")
    raw: dict[str, Any] = {"kills": []}
    with job_store(args.job_store, workdir) as store:
        scheduler = {**store, "standby": 1, "lease_ttl_s": args.lease_ttl}
        catalog = sd15_catalog(workdir, server={"scheduler": scheduler})
        ensure_weights(catalog)
        tenants = tenants_file([tenant_record("load", KEY)])
        env = {PASSWORD_ENV: os.environ.get(PASSWORD_ENV, "")}
        with (
            ray_stack(num_cpus=2, num_gpus=1, env_vars=env) as url,
            Progress(console=console) as progress,
        ):
            task = progress.add_task("deploying", total=args.kills + 2)
            run_app(catalog, tenants)
            with SubmitLoad(url, KEY, MODEL, BODY) as load:
                while len(load.accepted) < 8:
                    time.sleep(0.1)
                progress.advance(task)
                for k in range(args.kills):
                    progress.update(task, description=f"kill {k + 1} of {args.kills}")
                    wait_for_standby()
                    time.sleep(1.0)  # the replacement is waiting for the lease
                    t = kill_active(catalog, load)
                    raw["kills"].append(asdict(t))
                    progress.advance(task)
                time.sleep(2.0)
            progress.update(task, description="every accepted job's end")
            final = load.final(timeout_s=600)
            usage = load.client.get("/v1/usage").json()["models"].get(MODEL, {})
            raw["jobs"] = {
                "accepted": len(load.accepted),
                "distinct": len({rid for _, rid in load.accepted}),
                "final": {rid: st["status"] for rid, st in final.items()},
                "usage": usage,
                "errors": load.errors,
            }
            progress.advance(task)
    return raw


def build_summary(args: argparse.Namespace, raw: dict[str, Any]) -> dict[str, Any]:
    submit = [k["submit_s"] for k in raw["kills"]]
    lease = [k["lease_s"] for k in raw["kills"]]
    jobs = raw["jobs"]
    statuses: dict[str, int] = {}
    for status in jobs["final"].values():
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "benchmark": "bench_takeover",
        "commit": commit(),
        "machine": machine(),
        "args": vars(args),
        "kills": len(raw["kills"]),
        "takeover_submit_s": {
            "median": round(statistics.median(submit), 2),
            "max": round(max(submit), 2),
            "all": [round(s, 2) for s in submit],
        },
        "takeover_lease_s": {
            "median": round(statistics.median(lease), 2),
            "max": round(max(lease), 2),
        },
        "jobs_accepted": jobs["accepted"],
        "jobs_distinct": jobs["distinct"],
        "jobs_by_final_status": statuses,
        "usage_jobs_by_status": jobs["usage"].get("by_status", {}),
        "usage_images": jobs["usage"].get("images"),
        "load_errors": len(jobs["errors"]),
        "target": f"takeover (kill -> first accepted submit) <= {TARGET_S:g} s",
        "met": max(submit) <= TARGET_S
        and statuses == {"COMPLETED": jobs["distinct"]}
        and jobs["usage"].get("by_status") == {"COMPLETED": jobs["distinct"]},
    }


def report(summary: dict[str, Any], path: str, raw_path: str) -> None:
    t = Table(title=f"bench_takeover ({summary['args']['job_store']})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for key in ("kills", "takeover_submit_s", "takeover_lease_s", "jobs_accepted"):
        t.add_row(key, str(summary[key]))
    for key in ("jobs_by_final_status", "usage_jobs_by_status", "load_errors", "met"):
        t.add_row(key, str(summary[key]))
    console.print(t)
    console.print(f"summary: {path}\nraw: {raw_path}")


def main() -> None:
    args = parse_args()
    raw = measure(args)
    summary = build_summary(args, raw)
    rows = [{"part": "kill", **k} for k in raw["kills"]] + [{"part": "jobs", **raw["jobs"]}]
    summary_path, raw_path = save(f"bench_takeover-{stamp()}", summary, rows)
    report(summary, str(summary_path), str(raw_path))


if __name__ == "__main__":
    main()
