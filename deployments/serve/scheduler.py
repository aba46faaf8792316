"""Scheduler deployment: the one owner of every model's queue, between gateway and workers.

Gateway replicas hand it submits (``submit``) and ask it for status, results, cancels and progress
streams. It admits or refuses a job (quotas, rate, queue bounds, deadline feasibility), writes it
to the job store before answering, and whenever a worker slot is free dispatches the batch its
``Dispatcher`` picks (``deployments/scheduler/dispatcher.py``: the per-family fair queues, slots
and running batches, pure; this actor does the I/O around it), as a streaming call that reports
every denoising step. Results are stored by the worker before the job is marked
``COMPLETED``; a job's webhook event is written to the store's outbox in the same transaction as
its state, and a delivery loop sends due outbox rows. On restart it rebuilds its queues from the
store. One scheduler owns the store at a time: it holds the store's lease, renews it, and stops
once fenced out (its writes refused). Standby replicas (``server.scheduler.standby``) wait for the
lease and take over when the active one stops renewing it; gateways reach the active one through
``serve/routing.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace

from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from genmedia.deployments.metrics import SchedulerMetrics
from genmedia.deployments.protocol import (
    AdapterCheck,
    AdapterDeleted,
    AdapterError,
    AdapterRecord,
    AdminError,
    CancelOutcome,
    JobError,
    JobStatusView,
    KeyTable,
    Preview,
    PriorityClass,
    Rejection,
    RuntimeKey,
    StepProgress,
    Submission,
    SubmitAccepted,
    UsageRow,
    job_from_dict,
)
from genmedia.deployments.scheduler.adapters import AdapterRegistry
from genmedia.deployments.scheduler.contention import ContentionTracker
from genmedia.deployments.scheduler.dispatcher import Dispatcher, ModelLimits
from genmedia.deployments.scheduler.intake import Intake
from genmedia.deployments.scheduler.joblogs import JobLogs, lines_from_stored
from genmedia.deployments.scheduler.queues import CLASSES, QueuedJob, job_cost
from genmedia.deployments.serve.niceness import yield_cpu_to_workers
from genmedia.deployments.serve.scheduler_batches import MAX_ATTEMPTS, BatchRunner
from genmedia.deployments.serve.scheduler_lease import (
    LEASE_NAME,
    LeaseHolder,
    when_active,
    when_active_stream,
)
from genmedia.deployments.store.jobs import (
    TERMINAL,
    FencedOut,
    JobRecord,
    JobStatus,
)
from genmedia.deployments.store.lease import LeaseKeeper
from genmedia.deployments.store.open import open_store
from genmedia.deployments.store.retention import run_sweeper, sweeper_for
from genmedia.deployments.tenants.ratelimit import RateLimiter
from genmedia.deployments.tenants.runtime import KeyRegistry
from genmedia.deployments.tenants.schema import TenantsFile
from genmedia.deployments.webhooks.sender import WebhookSender
from genmedia.models.catalog import Catalog, LoraEntry, WebhookPolicy, parse_catalog
from genmedia.models.params import adapter_set_key

logger = logging.getLogger("ray.serve")


class Scheduler(LeaseHolder, BatchRunner):
    """See the module docstring. Its batches: ``serve/scheduler_batches.py``; its lease and
    standby gate: ``serve/scheduler_lease.py``. State is rebuilt from the store."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        catalog: dict,
        catalog_file: str,
        workers: dict[str, DeploymentHandle],
        tenants: dict,
        worker_names: dict[str, str],
        app_name: str,
        clock=time.time,
    ):
        self.catalog: Catalog = parse_catalog(catalog, catalog_file)
        yield_cpu_to_workers(self.catalog.server.control_plane_niceness)
        settings = self.catalog.server.scheduler
        self.workers = workers
        self.worker_names = worker_names
        self.app_name = app_name
        self.clock = clock
        # SQLite file or PostgreSQL URL; schema upgraded, a newer one refused (store/open.py)
        self.store = open_store(settings, self.catalog)
        self._fenced: FencedOut | None = None
        self._active = asyncio.Event()  # set once this replica holds the lease and has started
        self._start_error: Exception | None = None
        self._lease_seen: tuple[float, str | None] = (-1.0, None)
        self._tasks: set[asyncio.Task] = set()
        self.lease = LeaseKeeper(
            self.store,
            LEASE_NAME,
            ttl_s=settings.lease_ttl_s,
            renew_s=settings.lease_ttl_s / 4,
            on_lost=self._fenced_out,
        )
        # A standby replica is RUNNING for Serve at once and waits for the lease here; calls reach
        # it only when it is active (``serve/routing.py``), or wait while it takes over.
        self._spawn(self._activate(tenants))

    def _start(self, tenants: dict) -> None:
        """The active scheduler's state, rebuilt from the store, and its loops."""
        settings = self.catalog.server.scheduler
        self.tenants = {t.id: t for t in TenantsFile.model_validate(tenants).tenants}
        self.webhook_policy = WebhookPolicy.model_validate(
            self.catalog.server.webhooks.model_dump()
        )
        self.model_queue_limit = settings.model_queue_limit
        self.family_of = {m.id: m.family for m in self.catalog.models}
        # queues, shares, slots, replica counts and running batches: pure, I/O stays here
        self.dispatcher = Dispatcher(
            {
                m.id: ModelLimits(m.family, m.max_batch_size, m.batch_wait_ms / 1000.0)
                for m in self.catalog.models
            },
            batch_min_share=settings.batch_min_share,
            fifo=settings.policy == "fifo",
            families=self.catalog.families(),
            tenant_limits={t.id: t.quotas.max_concurrent_jobs for t in self.tenants.values()},
            engines={f: self.catalog.worker(f).engine for f in self.catalog.families()},
        )
        self.estimator = self.dispatcher.estimator
        self.contention = ContentionTracker()  # replicas slowing each other: for the autoscaler
        self.progress: dict[str, tuple[int, int]] = {}
        # each running job's latest preview: a stream opened mid-job starts with it
        self.latest_preview: dict[str, Preview] = {}
        self.logs = JobLogs(self.clock)  # per-job log lines (``scheduler/joblogs.py``)
        # batch id -> (job ids, the worker call's stream)
        self.batches: dict[str, tuple[list[str], DeploymentResponseGenerator]] = {}
        self.watchers: dict[str, list[asyncio.Queue]] = defaultdict(list)  # progress streams
        self.done: dict[str, asyncio.Event] = {}  # sync waits: set when the job ends
        self.rate = RateLimiter({t.id: t.quotas.requests_per_minute for t in self.tenants.values()})
        self.metrics = SchedulerMetrics(tenant_labels=self.catalog.server.metrics.tenant_labels)
        self._wakeup = asyncio.Event()
        self.webhooks = WebhookSender(
            self.store,
            self.tenants,
            self.webhook_policy,
            self._view,
            self._fenced_out,
            clock=self.clock,
        )
        self.adapters_ = AdapterRegistry(
            self.catalog, self.store, self._check_adapter, clock=self.clock
        )
        self.keys = KeyRegistry(self.store, self.tenants.values(), self.clock)  # run-time keys
        self._apply_quotas()
        self._recover()
        self._spawn(self.adapters_.check_catalog_adapters())
        self.intake = Intake(
            store=self.store,
            dispatcher=self.dispatcher,
            adapters=self.adapters_,
            tenants=self.tenants,
            rate=self.rate,
            model_queue_limit=self.model_queue_limit,
            family_of=self.family_of,
            queued_job=self._queued_job,
            view=self._view,
            dispatch_wakeup=self._wakeup,
            clock=self.clock,
        )
        self._intake_task = self._spawn(self.intake.run())  # kept when fenced out
        self._spawn(self._dispatch_loop())
        self._spawn(self._poll_replicas())
        self._spawn(run_sweeper(sweeper_for(self.catalog, self.store, self.clock)))  # retention
        self._spawn(self.lease.hold())
        self._spawn(self.webhooks.run())

    # -- helpers -----------------------------------------------------------------------------
    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _queued_job(self, rec: JobRecord, weight: float) -> QueuedJob:
        job = job_from_dict(rec.job)
        p = job.params
        return QueuedJob(
            id=rec.id,
            tenant=rec.tenant,
            model_id=rec.model_id,
            family=self.family_of[rec.model_id],
            priority=self.dispatcher.queue_class(rec.priority),  # fifo: one queue for all
            key=job.batch_key,
            images=job.num_images,
            # pixels per output: video counts its frames, audio its seconds (params.pixels)
            cost=job_cost(job.num_images, p.num_inference_steps, int(p.pixels), 1),
            arrived=rec.submitted_at,
            weight=weight,
            deadline=rec.deadline,
        )

    def _enqueue(self, qj: QueuedJob) -> None:
        self.dispatcher.enqueue(qj)
        self._wakeup.set()

    def _recover(self) -> None:
        """Queue again what the store holds unfinished (a restart): jobs of removed models and
        jobs whose worker was lost too often fail; running jobs go back to the queue."""
        back: list[QueuedJob] = []
        for rec in self.store.unfinished():
            if rec.model_id not in self.family_of:
                self.store.transition(
                    rec.id,
                    {rec.status},
                    JobStatus.FAILED,
                    finished_at=self.clock(),
                    error_type="model_removed",
                    error_message=f"model {rec.model_id!r} is no longer in the catalog",
                )
                continue
            if rec.status == JobStatus.IN_PROGRESS:
                if rec.attempts >= MAX_ATTEMPTS:
                    self._finish(
                        rec.id,
                        {JobStatus.IN_PROGRESS},
                        JobStatus.FAILED,
                        error_type="worker_lost",
                        error_message=f"the job's worker was lost {rec.attempts} times",
                    )
                    continue
                requeued = self.store.transition(
                    rec.id, {JobStatus.IN_PROGRESS}, JobStatus.IN_QUEUE, started_at=None
                )
                if requeued is None:
                    continue
                rec = requeued
            back.append(self._queued_job(rec, rec.weight))
        n = self.dispatcher.recover(back)
        self._wakeup.set()
        if n:
            logger.info("scheduler recovered %d unfinished job(s) from the store", n)
        # a store from before the outbox: its owed webhooks become outbox rows
        moved = self.store.migrate_pending_webhooks(self.webhooks.events)
        if moved:
            logger.info("scheduler moved %d owed webhook(s) into the outbox", moved)

    def _notify(self, job_id: str, preview: Preview | None = None) -> None:
        watchers = self.watchers.get(job_id)
        if not watchers:
            return
        event = self._status_of(job_id)
        if event is None:
            return
        if preview is not None and event.status == JobStatus.IN_PROGRESS:
            event.preview = preview  # streams only; a status read never carries it
        for q in watchers:
            q.put_nowait(event)

    def _finished(self, job_id: str) -> None:
        done = self.done.pop(job_id, None)
        if done is not None:
            done.set()

    # -- submit / status ---------------------------------------------------------------------
    @when_active
    async def submit(self, sub: Submission) -> SubmitAccepted | Rejection:
        """Admit (or refuse) and persist a job; answered once the store holds it."""
        return (await self.submit_many([sub]))[0]

    @when_active
    async def submit_many(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        """Admit (or refuse) submits of one tenant, answered in order once durable
        (``scheduler/intake.py``: lanes by class, group commit)."""
        if self._fenced is not None:
            raise self._fenced
        return await self.intake.submit_many(subs)

    @when_active
    async def submit_each(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        """Single submits a gateway coalesced into one call (any tenants; each counts once
        against its tenant's rate), answered in order once durable."""
        return await self.intake.submit_many(subs, each=True)

    @when_active
    async def statuses(self, reads: list[tuple[str, str]]) -> list[JobStatusView | None]:
        """``status`` for many (job id, tenant) reads a gateway coalesced into one call: the
        jobs are read from the store in one query."""
        recs = self.store.get_many([job_id for job_id, _ in reads])
        return [self._own_view(recs.get(job_id), tenant) for job_id, tenant in reads]

    def _own_view(self, rec: JobRecord | None, tenant: str) -> JobStatusView | None:
        """The job as ``tenant`` sees it; None when unknown or another tenant's."""
        return None if rec is None or rec.tenant != tenant else self._view(rec)

    def _status_of(self, job_id: str) -> JobStatusView | None:
        rec = self.store.get(job_id)
        return None if rec is None else self._view(rec)

    def _view(self, rec: JobRecord) -> JobStatusView:
        """A job as callers see it: the stored record plus queue position, ETA and progress."""
        view = JobStatusView(
            request_id=rec.id,
            model=rec.model_id,
            status=rec.status,
            priority=PriorityClass(rec.priority),
            submitted_at=rec.submitted_at,
            tenant=rec.tenant,
        )
        if rec.status == JobStatus.IN_QUEUE:
            if self.dispatcher.is_queued(rec.id):
                view.queue_position = self.dispatcher.position(rec.id)
                eta = self.dispatcher.eta(rec.id, self.clock())
                view.eta_s = None if eta is None else round(eta, 3)
            self.logs.queued(rec.id, view.queue_position)
        elif rec.status == JobStatus.IN_PROGRESS:
            step, total = self.progress.get(
                rec.id, (0, job_from_dict(rec.job).params.num_inference_steps)
            )
            view.progress = StepProgress(step=step, total=total)
        if rec.status in TERMINAL:
            view.finished_at = rec.finished_at
        if rec.status == JobStatus.COMPLETED:
            view.result = rec.result
        if rec.error_type:
            view.error = JobError(type=rec.error_type, message=rec.error_message)
        view.logs = self.logs.lines(rec.id)
        if view.logs is None and rec.result:
            view.logs = lines_from_stored(rec.result.get("logs"))
        return view

    @when_active
    async def status(self, job_id: str, tenant: str) -> JobStatusView | None:
        """The tenant's job, or None (another tenant's job is not found either)."""
        return self._own_view(self.store.get(job_id), tenant)

    @when_active
    async def wait(self, job_id: str, tenant: str, timeout_s: float) -> JobStatusView | None:
        """Status once the job is terminal (or the current one after ``timeout_s``)."""
        status = await self.status(job_id, tenant)  # never suspends: no end can slip in
        if status is not None and status.status not in TERMINAL:
            done = self.done.setdefault(job_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout_s)
            status = await self.status(job_id, tenant)
        return status

    @when_active
    async def submit_and_wait(self, sub: Submission, timeout_s: float) -> JobStatusView | Rejection:
        """The sync endpoint's one call: submit, then wait for the end (or the refusal)."""
        accepted = await self.submit(sub)
        if isinstance(accepted, Rejection):
            return accepted
        status = await self.wait(accepted.job.request_id, sub.tenant, timeout_s)
        return status or accepted.job

    @when_active_stream
    async def watch(self, job_id: str, tenant: str) -> AsyncIterator[JobStatusView]:
        """Streaming: the current status, then every change and step, until terminal (nothing
        for an unknown job)."""
        q: asyncio.Queue[JobStatusView] = asyncio.Queue()
        self.watchers[job_id].append(q)
        try:
            status = await self.status(job_id, tenant)
            if status is None:
                return
            latest = self.latest_preview.get(job_id)
            if latest is not None and status.status == JobStatus.IN_PROGRESS:
                status = replace(status, preview=latest)
            yield status
            while status.status not in TERMINAL:
                try:
                    status = await asyncio.wait_for(q.get(), 15.0)
                except TimeoutError:
                    again = await self.status(job_id, tenant)
                    if again is None:
                        return
                    status = again
                    yield replace(status, keepalive=True)
                    continue
                yield status
        finally:
            self.watchers[job_id].remove(q)
            if not self.watchers[job_id]:
                self.watchers.pop(job_id, None)

    @when_active
    async def cancel(self, job_id: str, tenant: str) -> CancelOutcome:
        """Cancel a queued or running job. A running batch stops once all its jobs are; until
        then the worker is told not to store the cancelled job's outputs, and the compute the
        job used is metered when the batch ends (``_complete``)."""
        rec = self.store.get(job_id)
        if rec is None or rec.tenant != tenant:
            return CancelOutcome.NOT_FOUND
        if rec.terminal:
            return CancelOutcome.ALREADY_FINISHED
        self.dispatcher.remove(job_id)
        done = self._finish(
            job_id,
            {JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS},
            JobStatus.CANCELLED,
            error_type=None,
            error_message=None,
        )
        if done is None:
            return CancelOutcome.ALREADY_FINISHED
        batch = self.dispatcher.batch_of(job_id)
        if batch is not None and batch.id in self.batches:
            ids, stream = self.batches[batch.id]
            if all(self._is_cancelled(j) for j in ids):
                stream.cancel()  # the worker stops at its next step boundary
            else:  # the others go on; the worker stores nothing of this job
                self._spawn(self._cancel_in_worker(batch.family, batch.id, done))
        return CancelOutcome.CANCELLED

    async def _cancel_in_worker(self, family: str, batch_id: str, rec: JobRecord) -> None:
        """Tell the worker running ``batch_id`` that ``rec`` was cancelled, so its outputs are
        not stored. Routed like the batch (its multiplexed id); a call that reaches another
        replica, or arrives after the batch, changes nothing: ``_complete`` then deletes what
        was stored."""
        try:
            uses = self.adapters_.uses(rec.model_id, job_from_dict(rec.job).params.adapters)
            mux = f"{rec.model_id}@{adapter_set_key(uses)}" if uses else rec.model_id
            handle = self.workers[family].options(multiplexed_model_id=mux)
            await asyncio.wait_for(handle.cancel_jobs.remote(batch_id, [rec.id]), 30.0)
        except Exception as e:
            logger.info("cancel of job %s in batch %s not sent: %s", rec.id, batch_id, e)

    def _is_cancelled(self, job_id: str) -> bool:
        rec = self.store.get(job_id)
        return rec is not None and rec.status == JobStatus.CANCELLED

    @when_active
    async def usage(self, tenant: str) -> list[UsageRow]:
        return self.store.usage(tenant)

    # -- LoRA adapters -----------------------------------------------------------------------
    # -- LoRA adapters (``scheduler/adapters.py`` keeps the registry) -----------------------
    async def _check_adapter(self, base_model: str, source: str) -> AdapterCheck:
        """The base model's worker reads the adapter and checks it against the loaded model."""
        family = self.family_of[base_model]
        handle = self.workers[family].options(multiplexed_model_id=base_model)
        check: AdapterCheck = await handle.check_adapter.remote(
            base_model, source, self.catalog.server.max_adapter_bytes
        )
        return check

    @when_active
    async def adapters(self) -> list[AdapterRecord]:
        return self.adapters_.records()

    @when_active
    async def register_adapter(self, spec: LoraEntry) -> AdapterRecord | AdapterError:
        """Check an adapter against its base model, then keep it (store first)."""
        return await self.adapters_.register(spec)

    @when_active
    async def delete_adapter(self, adapter_id: str) -> AdapterDeleted | AdapterError:
        return self.adapters_.delete(adapter_id)

    # -- keys and quotas changed at run time (``tenants/runtime.py``) ------------------------
    @when_active
    async def key_table(self, known_version: int | None) -> KeyTable | None:
        """The run-time key table, or None when the gateway holds this version already."""
        return self.keys.since(known_version)

    @when_active
    async def add_key(self, key: RuntimeKey) -> RuntimeKey | AdminError:
        return self.keys.add(key)

    @when_active
    async def revoke_key(self, key_id: str) -> RuntimeKey | AdminError:
        return self.keys.revoke(key_id)

    @when_active
    async def set_quotas(self, tenant: str, changes: dict[str, int]) -> dict | AdminError:
        out = self.keys.set_quotas(tenant, changes)
        self._apply_quotas()
        return out

    def _apply_quotas(self) -> None:
        """The tenants file's quotas with the stored overrides, where admission reads them."""
        limits = self.dispatcher._tenant_limits
        for tid, tenant in self.keys.tenants().items():
            self.tenants[tid] = tenant  # the mapping intake and webhooks hold
            self.rate.limits[tid] = tenant.quotas.requests_per_minute
            if limits is not None:
                limits[tid] = tenant.quotas.max_concurrent_jobs

    # -- dispatch ----------------------------------------------------------------------------
    def _finish(self, job_id: str, allowed: set, to: JobStatus, **updates) -> JobRecord | None:
        moved = self._finish_many([(job_id, updates)], allowed, to)
        return moved[0] if moved else None

    def _finish_many(
        self, items: list[tuple[str, dict]], allowed: set, to: JobStatus
    ) -> list[JobRecord]:
        """Move jobs to a terminal state in one write, then tell waiters, metrics, webhooks."""
        now = self.clock()
        moved = self.store.transition_many(
            [(job_id, {"finished_at": now, **updates}) for job_id, updates in items],
            allowed,
            to,
            outbox=self.webhooks.events,  # each job's event commits with its terminal state
        )
        for rec in moved:
            self.progress.pop(rec.id, None)
            self.latest_preview.pop(rec.id, None)
            if to != JobStatus.COMPLETED:  # a completed job's lines went with its result
                why = f": {rec.error_type}" if rec.error_type else ""
                self.logs.finish(rec.id, f"{str(to).lower()}{why}", keep=True)
            self._record(rec)
            self._notify(rec.id)
            self._finished(rec.id)
        if any(rec.webhook_url for rec in moved):
            self.webhooks.wake()
        return moved

    def _record(self, rec: JobRecord) -> None:
        m = self.metrics
        status = str(rec.status)
        m.requests.labels(rec.model_id, rec.priority, status).inc()
        m.tenant_jobs.labels(rec.tenant, rec.model_id, status).inc()
        if rec.status != JobStatus.COMPLETED or not rec.result:
            return
        t = rec.result["timings"]
        m.images.labels(rec.model_id).inc(rec.usage.get("images", 0))
        m.queue_seconds.labels(rec.model_id, rec.priority).observe(t["queue_s"])
        m.compute_seconds.labels(rec.model_id).observe(t["compute_s"])
        m.request_seconds.labels(rec.model_id, rec.priority).observe(t["total_s"])
        m.batch_size.labels(rec.model_id).observe(rec.result["batch"]["images"])
        m.tenant_images.labels(rec.tenant, rec.model_id).inc(rec.usage.get("images", 0))
        m.tenant_steps.labels(rec.tenant, rec.model_id).inc(rec.usage.get("steps", 0))
        m.tenant_compute.labels(rec.tenant, rec.model_id).inc(rec.usage.get("compute_s", 0.0))

    @when_active
    async def metrics_text(self) -> bytes:
        """The scheduler's Prometheus text (queue depth refreshed now)."""
        depth = {(m.id, c): 0 for m in self.catalog.models for c in CLASSES}
        for j in self.dispatcher.queued_jobs():
            depth[(j.model_id, j.priority)] += 1
        for (model, cls), n in depth.items():
            self.metrics.queue_depth.labels(model, cls).set(n)
        self.metrics.running.set(self.dispatcher.running_job_count)
        for m in self.catalog.models:
            share = m.gpu_fraction * self.dispatcher.replicas(m.family)
            self.metrics.gpu_share.labels(m.id, m.family).set(share)
        return self.metrics.render()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Queued work per model and class, running work per model and work enqueued so far
        per model and class, in work units, with the measured device seconds per unit (what a unit
        costs its device, not the wall time co-located replicas stretch) and how much the
        family's replicas slow each other down (``contention.py``): what the autoscaler
        (``autoscaling/serve_adapter.py``) reads when the app runs under its policy."""
        from genmedia.autoscaling.signals import encode

        if not self._active.is_set():
            return {}  # a standby: the active replica reports
        now = time.time()
        slowdowns = {m.id: self.contention.slowdown(m.id, now) for m in self.catalog.models}
        return encode(
            self.dispatcher.queued_work(),
            self.dispatcher.running_work(),
            self.estimator.device_per_cost,
            (m.id for m in self.catalog.models),
            self.dispatcher.admitted_units,
            {m: (s.per_call, s.age_s) for m, s in slowdowns.items() if s is not None},
        )

    @when_active
    async def ready(self) -> dict:
        """Each family worker's readiness (the gateway's /readyz)."""

        async def probe(family: str) -> dict:
            try:
                return await asyncio.wait_for(self.workers[family].ready.remote(), 5.0)
            except Exception as e:
                return {"error": f"{type(e).__name__}: {e}"[:300]}

        families = list(self.workers)
        results = await asyncio.gather(*(probe(f) for f in families))
        return dict(zip(families, results, strict=True))

    # -- one scheduler at a time ----------------------------------------------------------------

    async def info(self) -> dict:
        """Where this replica runs and what it holds (for ``genmedia status``)."""
        import os

        import ray

        return {
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "gpu_ids": [],
            "pid": os.getpid(),
            "loaded": [
                f"{self.dispatcher.queued_count} queued",
                f"{self.dispatcher.running_job_count} running",
            ]
            if self._active.is_set()
            else ["standby"],
        }


SchedulerDeployment = serve.deployment(Scheduler)
