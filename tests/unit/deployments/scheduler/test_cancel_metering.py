"""The scheduler's side of a job cancelled inside a shared batch, and of a failed batch, without
Ray: the scheduler object is built bare (no Serve, no loops) over a real SQLite job store.

- a job cancelled while its batch computed keeps CANCELLED, gets its usage (images, steps,
  compute seconds) and the store's usage totals count it exactly once; files the worker stored
  for it anyway are deleted; the others complete as usual;
- a worker error reaches the tenant as a public message with the request id, the error type is
  kept and the error text goes to the log only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from genmedia.deployments.metrics import SchedulerMetrics
from genmedia.deployments.protocol import (
    JobOutputs,
    JobStatus,
    PriorityClass,
    WorkerResult,
    WorkerTimings,
    job_to_dict,
)
from genmedia.deployments.scheduler.contention import ContentionTracker
from genmedia.deployments.scheduler.dispatcher import Dispatcher, ModelLimits
from genmedia.deployments.scheduler.joblogs import JobLogs
from genmedia.deployments.serve.scheduler import Scheduler
from genmedia.deployments.store.jobs import JobRecord
from genmedia.deployments.store.outputs import store_outputs
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.models.catalog import load_catalog
from genmedia.models.params import GenerateRequest, resolve_request
from tests.unit.deployments.store.stores import sqlite_store

MODEL = "sd15-tiny"


def bare_scheduler(tmp_path: Path) -> Scheduler:
    """A Scheduler with the state ``_complete`` / ``cancel`` / ``_failed`` use, and no loops."""
    catalog = load_catalog()
    s = Scheduler.__new__(Scheduler)
    s.catalog = catalog
    s.clock = lambda: 1000.0
    s.store = sqlite_store(tmp_path / "jobs.sqlite")
    s.metrics = SchedulerMetrics()
    s.progress = {}
    s.latest_preview = {}
    s.watchers = defaultdict(list)
    s.done = {}
    s.batches = {}
    s.logs = JobLogs(s.clock)
    s._tasks = set()
    s.webhooks = SimpleNamespace(events=lambda rec: [], wake=lambda: None)  # type: ignore[assignment]
    s.family_of = {m.id: m.family for m in catalog.models}
    models = {m.id: ModelLimits(m.family, m.max_batch_size, 0.0) for m in catalog.models}
    s.dispatcher = Dispatcher(models, batch_min_share=0.2)
    s.estimator = s.dispatcher.estimator
    s.contention = ContentionTracker()
    s._outputs = LocalDirStorage(tmp_path / "outputs")
    return s


def running_job(s: Scheduler, job_id: str, tenant: str, num_images: int) -> JobRecord:
    entry = s.catalog.model(MODEL)
    assert entry is not None
    job, errors = resolve_request(
        entry, GenerateRequest(prompt="x", seed=1, num_images=num_images), request_id=job_id
    )
    assert not errors and job is not None
    rec = JobRecord(
        id=job_id,
        tenant=tenant,
        model_id=MODEL,
        priority=str(PriorityClass.BATCH),
        status=JobStatus.IN_PROGRESS,
        job=job_to_dict(job),
        submitted_at=990.0,
        started_at=995.0,
    )
    s.store.create(rec)
    return rec


def result_of(s: Scheduler, recs: list[JobRecord], compute_s: float) -> WorkerResult:
    """What the worker answers when the cancel came too late: every job's files stored."""
    images = sum(r.job["num_images"] for r in recs)
    jobs = []
    for rec in recs:
        n = rec.job["num_images"]
        entry = s.catalog.model(MODEL)
        job, _ = resolve_request(
            entry, GenerateRequest(prompt="x", seed=1, num_images=n), request_id=rec.id
        )
        assert job is not None
        pixels = [np.zeros((8, 8, 3), np.uint8)] * n
        stored = store_outputs(s._outputs, job, pixels, prefix=f"{rec.tenant}/", extra={}, now=0)
        jobs.append(JobOutputs(rec.id, stored, compute_s * n / images))
    timings = WorkerTimings(compute_s, compute_s, 0.0, 0.0, 0.0, 0.0)
    return WorkerResult("b1", jobs, images, timings, (1.0, 2.0), "r1", "cpu", {}, [])


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_job_cancelled_in_its_batch_is_metered_and_its_files_deleted(tmp_path: Path) -> None:
    s = bare_scheduler(tmp_path)
    keep = running_job(s, "keep", "a", num_images=1)
    gone = running_job(s, "gone", "b", num_images=3)
    steps = keep.job["params"]["num_inference_steps"]

    async def go() -> None:
        s.store.transition("gone", {JobStatus.IN_PROGRESS}, JobStatus.CANCELLED)  # cancel
        assert s.store.usage("b")[0].compute_s == 0.0  # not metered at the cancel
        s._complete([keep, gone], result_of(s, [keep, gone], compute_s=8.0))
        await asyncio.gather(*s._tasks)  # the deletes run off the event loop

    asyncio.run(go())
    done, cancelled = s.store.get("keep"), s.store.get("gone")
    assert done is not None and done.status == JobStatus.COMPLETED and done.result
    assert cancelled is not None and cancelled.status == JobStatus.CANCELLED
    assert cancelled.result is None
    assert cancelled.usage == {"images": 3, "steps": 3 * steps, "compute_s": 6.0}
    (row,) = s.store.usage("b")
    assert (row.status, row.jobs, row.images, row.steps, row.compute_s) == (
        JobStatus.CANCELLED,
        1,
        3,
        3 * steps,
        6.0,
    )
    assert s.store.usage("a")[0].compute_s == 2.0
    left = files(tmp_path / "outputs")
    assert left and all(f.startswith("a/") for f in left)  # b's files are deleted
    # a second result for the same job (never sent, but) does not meter twice
    again = {"gone": JobOutputs("gone", [], 6.0)}
    s._meter_cancelled([("gone", {"images": 3, "steps": 1, "compute_s": 6.0})], again)
    assert s.store.usage("b")[0].compute_s == 6.0
    text = s.metrics.render().decode()
    assert 'genmedia_tenant_compute_seconds_total{model="sd15-tiny",tenant="-"} 8.0' in text


def test_a_worker_error_reaches_the_tenant_as_a_public_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = bare_scheduler(tmp_path)
    rec = running_job(s, "job1", "a", num_images=1)
    secret = "OSError: [Errno 28] /srv/models/private/unet.bin: No space left on device"
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        s._failed([rec], RuntimeError(secret))
    failed = s.store.get("job1")
    assert failed is not None and failed.status == JobStatus.FAILED
    assert failed.error_type == "generation_failed"  # the type is kept
    assert failed.error_message == (
        "generation failed (request job1); the operator's logs have the details"
    )
    view = s._view(failed)
    assert view.error is not None and "/srv" not in (view.error.message or "")
    assert any("job1" in r.getMessage() and secret in r.getMessage() for r in caplog.records)
