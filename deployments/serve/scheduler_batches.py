"""The scheduler's batches: from the dispatcher's pick to the worker's result (a mixin of
``serve/scheduler.py``'s ``Scheduler``).

Between the queues and the family workers. Whenever a slot is free the dispatch loop asks the
pure ``Dispatcher`` (``scheduler/dispatcher.py``) what to launch, moves those jobs to
``IN_PROGRESS`` in one store write and calls the family's worker as a stream that reports every
denoising step; the result is stored (one write for the whole batch, webhook events in the same
transaction), a lost worker sends its jobs back to the queue, and the replica counts the slots
follow are read from Serve every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from genmedia.deployments.metrics import SchedulerMetrics
from genmedia.deployments.protocol import (
    BatchRequest,
    Preview,
    PriorityClass,
    ProgressEvent,
    WorkerResult,
    job_from_dict,
)
from genmedia.deployments.scheduler.adapters import AdapterRegistry
from genmedia.deployments.scheduler.contention import ComputeSpan, ContentionTracker
from genmedia.deployments.scheduler.dispatcher import Dispatcher, Launch
from genmedia.deployments.scheduler.joblogs import JobLogs, as_stored
from genmedia.deployments.scheduler.queues import QueuedJob, job_cost
from genmedia.deployments.scheduler.results import public_error, result_payload, usage_of
from genmedia.deployments.store.jobs import FencedOut, JobRecord, JobStatus
from genmedia.deployments.store.outputs import delete_outputs
from genmedia.deployments.store.sql.store import SQLJobStore
from genmedia.deployments.store.storage import Storage, make_storage
from genmedia.deployments.webhooks.sender import WebhookSender
from genmedia.models.catalog import Catalog

logger = logging.getLogger("ray.serve")

MAX_ATTEMPTS = 3  # a job whose worker died this many times fails instead of running again
REPLICA_POLL_S = 2.0  # a family that autoscales: its replica count is read this often
# every family at a fixed replica count: the count changes only while replicas start or are
# replaced, so it is read less often (each read is a round trip to the Serve controller)
FIXED_REPLICA_POLL_S = 10.0
REPLICA_POLL_LOG_EVERY = 30  # failed replica reads in a row between two warnings (a minute)


class BatchRunner:
    """Dispatch loop, worker calls and their ends; the state is the ``Scheduler``'s."""

    catalog: Catalog
    store: SQLJobStore
    dispatcher: Dispatcher
    workers: dict[str, DeploymentHandle]
    worker_names: dict[str, str]
    app_name: str
    clock: Callable[[], float]
    webhooks: WebhookSender
    adapters_: AdapterRegistry
    contention: ContentionTracker
    metrics: SchedulerMetrics
    logs: JobLogs
    family_of: dict[str, str]
    progress: dict[str, tuple[int, int]]
    latest_preview: dict[str, Preview]
    batches: dict[str, tuple[list[str], DeploymentResponseGenerator]]
    _wakeup: asyncio.Event
    _outputs: Storage

    estimator: Any  # the dispatcher's service-time estimator
    # provided by ``Scheduler``
    _spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task]
    _fenced_out: Callable[[FencedOut], None]
    _finish: Callable[..., JobRecord | None]
    _finish_many: Callable[[list[tuple[str, dict]], set, JobStatus], list[JobRecord]]
    _notify: Callable[..., None]
    _enqueue: Callable[[QueuedJob], None]
    _queued_job: Callable[[JobRecord, float], QueuedJob]

    async def _dispatch_loop(self) -> None:
        while True:
            try:
                retry_at = self._dispatch_once()
            except FencedOut as e:
                self._fenced_out(e)
                return
            except Exception:  # never let the loop die; the next wake-up tries again
                logger.exception("scheduler dispatch failed")
                retry_at = None
            timeout = 1.0 if retry_at is None else max(0.001, min(1.0, retry_at - self.clock()))
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _dispatch_once(self) -> float | None:
        """Expire what waited past its deadline, launch what the dispatcher picks for every
        free slot; when to look again for a batch-class head waiting to fill (None: at the
        next wake-up)."""
        now = self.clock()
        while True:
            d = self.dispatcher.dispatch(now)
            for qj in d.expired:
                self._finish(
                    qj.id,
                    {JobStatus.IN_QUEUE},
                    JobStatus.EXPIRED,
                    error_type="deadline_expired",
                    error_message="the deadline passed while the job was queued",
                )
            launched = True
            for launch in d.launches:
                try:
                    launched = self._launch(launch, now) and launched
                except FencedOut:
                    raise
                except Exception:
                    logger.exception("scheduler could not launch a %s batch", launch.family)
            if launched:
                return d.retry_at
            # a launch none of whose jobs was still queued freed its slot: fill it again

    def _launch(self, launch: Launch, now: float) -> bool:
        """Move a launch's jobs to IN_PROGRESS and call its family's worker; False when none of
        them was still queued in the store (the slot is free again)."""
        try:
            recs = self.store.transition_many(
                [(qj.id, {"started_at": now}) for qj in launch.jobs],
                {JobStatus.IN_QUEUE},
                JobStatus.IN_PROGRESS,
                bump_attempts=True,
                outbox=self.webhooks.events,  # job.started, for tenants that ask for it
            )
        except Exception:
            self.dispatcher.release(launch)
            raise
        if any(r.webhook_url for r in recs):
            self.webhooks.wake()
        batch_id = uuid.uuid4().hex[:12]
        if self.dispatcher.started(launch, now, batch_id, {r.id for r in recs}) is None:
            return False
        self._spawn(self._run(launch.family, launch.cls, batch_id, recs))
        self.contention.dispatched(launch.family, batch_id, time.time())
        for rec in recs:
            self.progress[rec.id] = (0, job_from_dict(rec.job).params.num_inference_steps)
            self.logs.add(rec.id, f"started: a batch of {len(recs)} job(s), call {batch_id}")
            self._notify(rec.id)
        return True

    async def _run(self, family: str, cls: str, batch_id: str, recs: list[JobRecord]) -> None:
        model_id = recs[0].model_id
        jobs = [job_from_dict(r.job) for r in recs]
        ids = [r.id for r in recs]
        result: WorkerResult | None = None
        try:
            req = BatchRequest(
                batch_id=batch_id,
                model_id=model_id,
                priority=PriorityClass(cls),
                jobs=jobs,
                tenants={r.id: r.tenant for r in recs},
                adapters=self.adapters_.uses(model_id, jobs[0].params.adapters),
            )
            # Routing affinity: replicas that already hold this adapter set are preferred, and
            # a busy one spills the set over to another replica (Serve's multiplexed routing).
            handle = self.workers[family].options(
                multiplexed_model_id=req.multiplex_id, stream=True
            )
            stream = handle.run_batch.remote(req)
            assert isinstance(stream, DeploymentResponseGenerator)
            self.batches[batch_id] = (ids, stream)
            async for event in stream:
                if isinstance(event, ProgressEvent):
                    self._progress(ids, event)
                    self.webhooks.progress([r for r in recs if r.id in self.progress])
                else:
                    result = event
            if result is None:
                raise RuntimeError("worker stream ended without a result")
            self._complete(recs, result)
        except asyncio.CancelledError:
            raise
        except FencedOut as e:
            self._fenced_out(e)
        except Exception as e:
            try:
                self._failed(recs, e)
            except FencedOut as fenced:
                self._fenced_out(fenced)
        finally:
            self.contention.dropped(family, batch_id)
            self.batches.pop(batch_id, None)
            self.dispatcher.finished(batch_id)
            for jid in ids:
                self.progress.pop(jid, None)
                self.latest_preview.pop(jid, None)
            self._wakeup.set()

    def _progress(self, ids: list[str], event: ProgressEvent) -> None:
        """A worker's progress event: steps (never backwards), its log line, previews."""
        for jid in ids:
            if jid not in self.progress:
                continue
            if event.step >= self.progress[jid][0]:
                self.progress[jid] = (event.step, event.total)
            if event.log:
                self.logs.add(jid, event.log)
            preview = event.previews.get(jid)
            if preview is not None:
                self.latest_preview[jid] = preview
            self._notify(jid, preview)

    def _complete(self, recs: list[JobRecord], result: WorkerResult) -> None:
        """Store every job's result and usage (one write), then feed the estimator and the
        contention tracker with the call's timings."""
        by_job = {j.job_id: j for j in result.jobs}
        now = self.clock()
        total_cost = 0.0
        done: list[tuple[str, dict]] = []
        for rec in recs:
            out = by_job[rec.id]
            job = job_from_dict(rec.job)
            total_cost += job_cost(
                job.num_images, job.params.num_inference_steps, int(job.params.pixels), 1
            )
            payload = result_payload(rec, job, out.outputs, result, len(recs), now)
            payload["logs"] = as_stored(self.logs.finish(rec.id, "finished", keep=False))
            done.append((rec.id, {"result": payload, "usage": usage_of(job, out.compute_s)}))
        moved = self._finish_many(done, {JobStatus.IN_PROGRESS}, JobStatus.COMPLETED)
        completed = {r.id for r in moved}
        cancelled = [(jid, u["usage"]) for jid, u in done if jid not in completed]
        if cancelled:
            self._meter_cancelled(cancelled, by_job)
        t = result.timings
        self.estimator.observe(recs[0].model_id, total_cost, t.compute_s, t.device_s)
        if total_cost > 0:
            start, end = result.compute_span
            self.contention.finished(
                self.family_of[recs[0].model_id],
                ComputeSpan(
                    call_id=result.batch_id,
                    replica=result.replica,
                    model_id=recs[0].model_id,
                    images=result.batch_images,
                    start=start,
                    end=end,
                    seconds_per_unit=t.compute_s / total_cost,
                ),
            )

    def _meter_cancelled(self, items: list[tuple[str, dict]], by_job: dict) -> None:
        """Jobs cancelled while their batch computed: each keeps its usage (the compute it
        used is metered to its tenant; the store's usage totals move with it, and only a job
        not metered yet), and whatever the worker stored for it is deleted."""
        for rec in self.store.transition_many(
            [(jid, {"usage": usage}) for jid, usage in items if self._unmetered(jid)],
            {JobStatus.CANCELLED},
            JobStatus.CANCELLED,
        ):
            m, u = self.metrics, rec.usage
            m.tenant_images.labels(rec.tenant, rec.model_id).inc(u.get("images", 0))
            m.tenant_steps.labels(rec.tenant, rec.model_id).inc(u.get("steps", 0))
            m.tenant_compute.labels(rec.tenant, rec.model_id).inc(u.get("compute_s", 0.0))
        stored = [o for jid, _ in items for o in by_job[jid].outputs]
        if stored:
            if not hasattr(self, "_outputs"):
                self._outputs = make_storage(self.catalog.server.storage, self.catalog.resolve_path)
            self._spawn(asyncio.to_thread(delete_outputs, self._outputs, stored))

    def _unmetered(self, job_id: str) -> bool:
        rec = self.store.get(job_id)
        return rec is not None and rec.status == JobStatus.CANCELLED and not rec.usage

    def _failed(self, recs: list[JobRecord], error: Exception) -> None:
        from ray.exceptions import ActorDiedError, RayActorError

        lost = isinstance(error, RayActorError | ActorDiedError)
        for rec in recs:
            current = self.store.get(rec.id)
            if current is None or current.terminal:
                continue  # cancelled meanwhile
            if lost and current.attempts < MAX_ATTEMPTS:
                back = self.store.transition(
                    rec.id, {JobStatus.IN_PROGRESS}, JobStatus.IN_QUEUE, started_at=None
                )
                if back is not None:
                    self.logs.add(rec.id, "the worker was lost; queued again")
                    self._enqueue(self._queued_job(back, back.weight))
                    self._notify(rec.id)
                continue
            error_type = "worker_lost" if lost else "generation_failed"
            # the tenant reads a public message; the error itself is logged with the job id
            logger.error(
                "job %s (tenant %s) failed: %s: %s",
                rec.id,
                rec.tenant,
                error_type,
                f"{type(error).__name__}: {error}"[:4000],
            )
            self._finish(
                rec.id,
                {JobStatus.IN_PROGRESS},
                JobStatus.FAILED,
                error_type=error_type,
                error_message=public_error(error_type, rec.id),
            )

    async def _poll_replicas(self) -> None:
        """Follow each family worker's running replicas (its slots scale with them), every
        ``REPLICA_POLL_S`` when a family autoscales, else every ``FIXED_REPLICA_POLL_S``; the
        read runs off the event loop (it waits for the Serve controller). A failed read keeps
        the last counts; it is logged once, then every ``REPLICA_POLL_LOG_EVERY`` failures in
        a row."""
        failures = 0
        families = self.catalog.families()
        scaling = any(
            self.catalog.worker(f).min_replicas != self.catalog.worker(f).max_replicas
            for f in families
        )
        every = REPLICA_POLL_S if scaling else FIXED_REPLICA_POLL_S
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                self._read_replicas(status)
            except Exception as e:
                failures += 1
                if failures == 1 or failures % REPLICA_POLL_LOG_EVERY == 0:
                    logger.warning(
                        "scheduler could not read the worker replica counts (%d time(s) in a "
                        "row; keeping the last ones): %s: %s",
                        failures,
                        type(e).__name__,
                        e,
                        exc_info=failures == 1,
                    )
            else:
                if failures:
                    logger.info("scheduler reads the worker replica counts again")
                failures = 0
            await asyncio.sleep(every if failures == 0 else REPLICA_POLL_S)

    def _read_replicas(self, status: Any) -> None:
        app = status.applications.get(self.app_name)
        if app is None:
            return
        for family, name in self.worker_names.items():
            dep = app.deployments.get(name)
            if dep is None:
                continue
            running = sum(v for k, v in dep.replica_states.items() if str(k).endswith("RUNNING"))
            if running and running != self.dispatcher.replicas(family):
                self.dispatcher.set_replicas(family, running)
                self._wakeup.set()
