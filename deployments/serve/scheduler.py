"""Scheduler deployment: the one owner of every model's queue, between gateway and workers.

Gateway replicas hand it submits (``submit``) and ask it for status, results, cancels and progress
streams. It admits or refuses a job (quotas, rate, queue bounds, deadline feasibility), writes it
to the job store before answering, keeps per-family fair queues per class, and whenever a worker
slot is free dispatches the batch the policy in ``scheduling.py`` picks, as a streaming call that
reports every denoising step. Results are stored by the worker before the job is marked
``COMPLETED``; webhooks go out after. On restart it rebuilds its queues from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from ray import serve
from ray.serve.handle import DeploymentHandle

from genmedia.deployments.metrics import SchedulerMetrics
from genmedia.deployments.scheduler.admission import AdmissionInput, admit
from genmedia.deployments.scheduler.contention import ComputeSpan, ContentionTracker
from genmedia.deployments.scheduler.eta import ServiceTimeEstimator, eta_seconds, slot_free_in
from genmedia.deployments.scheduler.queues import (
    CLASSES,
    FairQueue,
    QueuedJob,
    ShareTracker,
    expired,
    job_cost,
    next_batch,
    position,
)
from genmedia.deployments.serve.worker import BatchRequest, yield_cpu_to_workers
from genmedia.deployments.store.jobs import TERMINAL, JobRecord, JobStatus, SQLiteJobStore
from genmedia.deployments.tenants.config import RateLimiter, TenantsFile
from genmedia.deployments.webhooks.delivery import WebhookPolicy, deliver
from genmedia.models.catalog import LORA_FAMILIES, Catalog, parse_catalog
from genmedia.models.params import AdapterUse, GenerationJob, GenerationParams, adapter_set_key

logger = logging.getLogger("ray.serve")

MAIN_SLOTS_PER_REPLICA = 2
PREEMPT_SLOTS_PER_REPLICA = 2
MAX_ATTEMPTS = 3  # a job whose worker died this many times fails instead of running again
REPLICA_POLL_S = 2.0


@dataclass
class Submission:
    """A validated request from the gateway, with the tenant facts admission needs."""

    tenant: str
    model_id: str
    priority: str
    job: GenerationJob
    deadline_s: float | None = None
    idempotency_key: str | None = None
    webhook_url: str | None = None


def job_to_dict(job: GenerationJob) -> dict:
    return {**asdict(job), "params": asdict(job.params)}


def job_from_dict(d: dict) -> GenerationJob:
    return GenerationJob(**{**d, "params": GenerationParams(**d["params"])})


def _adapter_error(status: int, type_: str, field: str, message: str) -> dict:
    """An admin adapter call refused: the gateway answers it as ``status`` naming ``field``."""
    return {"error": {"status": status, "type": type_, "field": field, "message": message}}


def _public_adapter(record: dict) -> dict:
    """What callers see of a registry record (the worker-local file path stays inside)."""
    return {k: v for k, v in record.items() if k != "path"}


class Scheduler:
    """See the module docstring. One replica; its state is rebuilt from the store."""

    async def __init__(
        self,
        catalog: dict,
        catalog_file: str,
        workers: dict[str, DeploymentHandle],
        tenants: dict,
        worker_names: dict[str, str],
        app_name: str,
        clock=time.time,
    ):
        yield_cpu_to_workers()
        self.catalog: Catalog = parse_catalog(catalog, catalog_file)
        settings = self.catalog.server.scheduler
        self.workers = workers
        self.worker_names = worker_names
        self.app_name = app_name
        self.store = SQLiteJobStore(settings.job_store)
        self.tenants = {t.id: t for t in TenantsFile.model_validate(tenants).tenants}
        self.webhook_policy = WebhookPolicy.model_validate(
            self.catalog.server.webhooks.model_dump()
        )
        self.batch_min_share = settings.batch_min_share
        self.model_queue_limit = settings.model_queue_limit
        self.clock = clock
        self.family_of = {m.id: m.family for m in self.catalog.models}
        self.fifo = settings.policy == "fifo"
        self.queues: dict[str, dict[str, FairQueue]] = {
            f: {c: FairQueue(fifo=self.fifo) for c in CLASSES} for f in self.catalog.families()
        }
        self.shares = {f: ShareTracker() for f in self.catalog.families()}
        self.estimator = ServiceTimeEstimator()
        self.contention = ContentionTracker()  # replicas slowing each other: for the autoscaler
        self.replicas = {f: 1 for f in self.catalog.families()}
        self.inflight = {f: {"main": 0, "preempt": 0} for f in self.catalog.families()}
        self.main_batch_calls = dict.fromkeys(self.catalog.families(), 0)
        self.queued: dict[str, QueuedJob] = {}
        self.progress: dict[str, tuple[int, int]] = {}
        self.batch_of: dict[str, str] = {}  # running job id -> batch id
        self.running_tenant: dict[str, str] = {}  # running job id -> tenant
        # batch id -> (family, slot, expected end or None), for ETAs
        self.running_ends: dict[str, tuple[str, str, float | None]] = {}
        self.running_work: dict[str, tuple[str, float]] = {}  # batch id -> (model, cost)
        # work units enqueued per (model, class) since start: the autoscaler's arrival rates
        self.admitted_units: dict[tuple[str, str], float] = defaultdict(float)
        self.batches: dict[str, tuple[list[str], object]] = {}  # batch id -> (job ids, stream)
        self.watchers: dict[str, list[asyncio.Queue]] = defaultdict(list)  # progress streams
        self.done: dict[str, asyncio.Event] = {}  # sync waits: set when the job ends
        self.rate = RateLimiter({t.id: t.quotas.requests_per_minute for t in self.tenants.values()})
        self.metrics = SchedulerMetrics()
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        # LoRA adapters: the catalog's, then those registered at run time (the store's)
        self.adapter_registry: dict[str, dict] = {
            a.id: {
                "id": a.id,
                "base_model": a.base_model,
                "source": self._adapter_source(a.source),
                "description": a.description,
                "origin": "catalog",
                "status": "pending",
            }
            for a in self.catalog.loras
        }
        for aid, record in self.store.adapters().items():
            self.adapter_registry[aid] = {**record, "origin": "api"}
        self._recover()
        self._spawn(self._check_catalog_adapters())
        self._spawn(self._dispatch_loop())
        self._spawn(self._poll_replicas())
        for rec in self.store.webhooks_pending():
            self._spawn(self._send_webhook(rec))

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
            priority="batch" if self.fifo else rec.priority,  # fifo: one queue for all
            key=job.batch_key,
            images=job.num_images,
            # pixels per output: video counts its frames, audio its seconds (params.pixels)
            cost=job_cost(job.num_images, p.num_inference_steps, int(p.pixels), 1),
            arrived=rec.submitted_at,
            weight=weight,
            deadline=rec.deadline,
        )

    def _enqueue(self, qj: QueuedJob) -> None:
        self.admitted_units[(qj.model_id, qj.priority)] += qj.cost
        self.queues[qj.family][qj.priority].push(qj)
        self.queued[qj.id] = qj
        self._wakeup.set()

    def _recover(self) -> None:
        n = 0
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
                rec = self.store.transition(
                    rec.id, {JobStatus.IN_PROGRESS}, JobStatus.IN_QUEUE, started_at=None
                )
                if rec is None:
                    continue
            self._enqueue(self._queued_job(rec, rec.weight))
            n += 1
        if n:
            logger.info("scheduler recovered %d unfinished job(s) from the store", n)

    def _notify(self, job_id: str) -> None:
        watchers = self.watchers.get(job_id)
        if not watchers:
            return
        event = self._status_of(job_id)
        for q in watchers:
            q.put_nowait(event)

    def _finished(self, job_id: str) -> None:
        done = self.done.pop(job_id, None)
        if done is not None:
            done.set()

    def _capacity(self, family: str) -> int:
        return max(1, self.replicas.get(family, 1))

    # -- submit / status ---------------------------------------------------------------------
    async def submit(self, sub: Submission) -> dict:
        """Admit (or refuse) and persist a job; returns {"status": ...} or {"rejected": ...}."""
        now = self.clock()
        tenant = self.tenants[sub.tenant]
        quotas = tenant.quotas
        if sub.idempotency_key:
            existing = self.store.find(sub.tenant, sub.idempotency_key)
            if existing is not None:
                return {"created": False, **self._status_of(existing.id)}
        family = self.family_of[sub.model_id]
        bad_adapter = self._adapter_rejection(sub.model_id, sub.job.params.adapters)
        if bad_adapter is not None:
            return {"rejected": bad_adapter}
        tenant_jobs = [j for j in self.queued.values() if j.tenant == sub.tenant]
        running = sum(1 for t in self.running_tenant.values() if t == sub.tenant)
        model_queued = sum(1 for j in self.queued.values() if j.model_id == sub.model_id)
        ahead = self._ahead_of(family, "batch" if self.fifo else sub.priority)
        predicted = eta_seconds(
            ahead,
            self.estimator,
            self._capacity(family),
            self._slot_free_in(family, sub.priority, now),
        )
        rate_wait = self.rate.try_acquire(sub.tenant, now)
        rejection = admit(
            AdmissionInput(
                tenant=sub.tenant,
                tenant_queued=len(tenant_jobs),
                tenant_active=len(tenant_jobs) + running,
                max_queued_jobs=quotas.max_queued_jobs,
                max_concurrent_jobs=quotas.max_concurrent_jobs,
                model_queued=model_queued,
                model_queue_limit=self.model_queue_limit,
                rate_wait_s=rate_wait,
                predicted_start_s=predicted,
                deadline_in_s=sub.deadline_s,
            )
        )
        if rejection is not None:
            return {"rejected": asdict(rejection)}
        rec = JobRecord(
            id=uuid.uuid4().hex,
            tenant=sub.tenant,
            model_id=sub.model_id,
            priority=sub.priority,
            status=JobStatus.IN_QUEUE,
            job=job_to_dict(sub.job),
            submitted_at=now,
            deadline=now + sub.deadline_s if sub.deadline_s else None,
            idempotency_key=sub.idempotency_key,
            webhook_url=sub.webhook_url,
            weight=tenant.weight,
        )
        rec.job["request_id"] = rec.id
        rec, created = self.store.create(rec)
        if created:
            qj = self._queued_job(rec, tenant.weight)
            self._enqueue(qj)
        return {"created": created, **self._status_of(rec.id)}

    def _slot_free_in(self, family: str, priority: str, now: float) -> float | None:
        slots = ("main", "preempt") if priority == "interactive" else ("main",)
        best: float | None = None
        for slot in slots:
            ends = [
                end for (f, sl, end) in self.running_ends.values() if f == family and sl == slot
            ]
            free = slot_free_in(ends, self._slots(family, slot, self._capacity(family)), now)
            if free is not None and (best is None or free < best):
                best = free
        return best

    def _ahead_of(self, family: str, priority: str) -> list[QueuedJob]:
        qs = self.queues[family]
        if priority == "interactive":
            return list(qs["interactive"].jobs)
        return list(qs["interactive"].jobs) + list(qs["batch"].jobs)

    def _status_of(self, job_id: str, rec: JobRecord | None = None) -> dict:
        rec = rec or self.store.get(job_id)
        if rec is None:
            return {"status": "NOT_FOUND"}
        out: dict = {
            "request_id": rec.id,
            "model": rec.model_id,
            "status": str(rec.status),
            "priority": rec.priority,
            "submitted_at": rec.submitted_at,
            "tenant": rec.tenant,
        }
        if rec.status == JobStatus.IN_QUEUE:
            qj = self.queued.get(rec.id)
            if qj is not None:
                qs = self.queues[qj.family]
                pos = position(qs, rec.id)
                out["queue_position"] = pos
                ahead = self._ahead_of(qj.family, qj.priority)
                ahead = ahead[: pos or 0]
                eta = eta_seconds(
                    ahead,
                    self.estimator,
                    self._capacity(qj.family),
                    self._slot_free_in(qj.family, qj.priority, self.clock()),
                )
                out["eta_s"] = None if eta is None else round(eta, 3)
        elif rec.status == JobStatus.IN_PROGRESS:
            step, total = self.progress.get(
                rec.id, (0, job_from_dict(rec.job).params.num_inference_steps)
            )
            out["progress"] = {"step": step, "total": total}
        if rec.status in TERMINAL:
            out["finished_at"] = rec.finished_at
        if rec.status == JobStatus.COMPLETED:
            out["result"] = rec.result
        if rec.error_type:
            out["error"] = {"type": rec.error_type, "message": rec.error_message}
        return out

    async def status(self, job_id: str, tenant: str) -> dict:
        rec = self.store.get(job_id)
        if rec is None or rec.tenant != tenant:
            return {"status": "NOT_FOUND"}
        return self._status_of(job_id, rec)

    async def wait(self, job_id: str, tenant: str, timeout_s: float) -> dict:
        """Status once the job is terminal (or the current one after ``timeout_s``)."""
        status = await self.status(job_id, tenant)  # never suspends: no end can slip in
        if status["status"] in ("IN_QUEUE", "IN_PROGRESS"):
            done = self.done.setdefault(job_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout_s)
            status = await self.status(job_id, tenant)
        return status

    async def submit_and_wait(self, sub: Submission, timeout_s: float) -> dict:
        """The sync endpoint's one call: submit, then wait for the end (or the refusal)."""
        accepted = await self.submit(sub)
        if "rejected" in accepted:
            return accepted
        return await self.wait(accepted["request_id"], sub.tenant, timeout_s)

    async def watch(self, job_id: str, tenant: str) -> AsyncIterator[dict]:
        """Streaming: the current status, then every change and step, until terminal."""
        q: asyncio.Queue = asyncio.Queue()
        self.watchers[job_id].append(q)
        try:
            status = await self.status(job_id, tenant)
            yield status
            while status["status"] in ("IN_QUEUE", "IN_PROGRESS"):
                try:
                    status = await asyncio.wait_for(q.get(), 15.0)
                except TimeoutError:
                    status = await self.status(job_id, tenant)
                    yield {"type": "keepalive", **status}
                    continue
                yield status
        finally:
            self.watchers[job_id].remove(q)
            if not self.watchers[job_id]:
                self.watchers.pop(job_id, None)

    async def cancel(self, job_id: str, tenant: str) -> str:
        """'cancelled' | 'already_finished' | 'not_found'."""
        rec = self.store.get(job_id)
        if rec is None or rec.tenant != tenant:
            return "not_found"
        if rec.terminal:
            return "already_finished"
        qj = self.queued.pop(job_id, None)
        if qj is not None:
            self.queues[qj.family][qj.priority].remove(job_id)
        done = self._finish(
            job_id,
            {JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS},
            JobStatus.CANCELLED,
            error_type=None,
            error_message=None,
        )
        if done is None:
            return "already_finished"
        batch_id = self.batch_of.get(job_id)
        if batch_id and batch_id in self.batches:
            ids, stream = self.batches[batch_id]
            if all(self._is_cancelled(j) for j in ids):
                stream.cancel()  # the worker stops at its next step boundary
        return "cancelled"

    def _is_cancelled(self, job_id: str) -> bool:
        rec = self.store.get(job_id)
        return rec is not None and rec.status == JobStatus.CANCELLED

    async def usage(self, tenant: str) -> list[dict]:
        return self.store.usage(tenant)

    # -- LoRA adapters -----------------------------------------------------------------------
    def _adapter_source(self, source: str) -> str:
        if source.startswith(("s3://", "tiny://")):
            return source
        return str(self.catalog.resolve_path(source.removeprefix("file://")))

    async def _check_adapter(self, base_model: str, source: str) -> dict:
        """The base model's worker reads the adapter and checks it against the loaded model."""
        family = self.family_of[base_model]
        handle = self.workers[family].options(multiplexed_model_id=base_model)
        return await handle.check_adapter.remote(
            base_model, source, self.catalog.server.max_adapter_bytes
        )

    async def _check_catalog_adapters(self) -> None:
        for aid, record in list(self.adapter_registry.items()):
            if record["origin"] != "catalog":
                continue
            try:
                out = await self._check_adapter(record["base_model"], record["source"])
            except Exception as e:  # the worker is gone: requests naming it fail at dispatch
                out = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
            if "error" in out:
                logger.error("LoRA adapter %s is unusable: %s", aid, out["error"])
                record.update(status="failed", error=out["error"])
            else:
                record.update(status="ready", **out["info"])

    async def adapters(self) -> list[dict]:
        records = sorted(self.adapter_registry.values(), key=lambda a: a["id"])
        return [_public_adapter(a) for a in records]

    async def register_adapter(self, spec: dict) -> dict:
        """Check an adapter against its base model, then keep it (store first)."""
        error = _adapter_error
        aid, base = spec["id"], spec["base_model"]
        entry = self.catalog.model(base)
        if entry is None:
            return error(422, "invalid_request", "base_model", f"no model {base!r}")
        if entry.family not in LORA_FAMILIES:
            return error(
                422, "invalid_request", "base_model", f"the {entry.family} family takes no LoRA"
            )
        existing = self.adapter_registry.get(aid)
        if existing is not None and existing["origin"] == "catalog":
            return error(409, "conflict", "id", f"adapter {aid!r} is defined in the catalog")
        source = self._adapter_source(spec["source"])
        try:
            out = await self._check_adapter(base, source)
        except Exception as e:
            return error(503, "unavailable", "base_model", f"{type(e).__name__}: {e}")
        if "error" in out:
            return error(422, "invalid_adapter", "source", out["error"])
        record = {
            "id": aid,
            "base_model": base,
            "source": source,
            "description": spec.get("description", ""),
            "status": "ready",
            "registered_at": self.clock(),
            **out["info"],
        }
        self.store.put_adapter(aid, record)
        self.adapter_registry[aid] = {**record, "origin": "api"}
        return _public_adapter(self.adapter_registry[aid])

    async def delete_adapter(self, adapter_id: str) -> dict:
        record = self.adapter_registry.get(adapter_id)
        if record is None:
            return _adapter_error(404, "not_found", "adapter_id", f"no adapter {adapter_id!r}")
        if record["origin"] == "catalog":
            return _adapter_error(
                409, "conflict", "adapter_id", f"adapter {adapter_id!r} is defined in the catalog"
            )
        self.store.delete_adapter(adapter_id)
        del self.adapter_registry[adapter_id]
        return {"id": adapter_id, "deleted": True}

    def _adapter_rejection(self, model_id: str, adapters) -> dict | None:
        """422 for an adapter a request names that this model cannot use."""
        for i, (aid, _) in enumerate(adapters):
            record = self.adapter_registry.get(aid)
            message = None
            if record is None:
                message = f"unknown adapter {aid!r} (GET /v1/loras lists them)"
            elif record["base_model"] != model_id:
                message = f"adapter {aid!r} is for model {record['base_model']!r}, not {model_id!r}"
            elif record.get("status") == "failed":
                message = f"adapter {aid!r} is unusable: {record.get('error')}"
            if message:
                return {
                    "status": 422,
                    "type": "invalid_request",
                    "message": f"loras[{i}].id: {message}",
                    "field": f"loras[{i}].id",
                    "retry_after_s": None,
                }
        return None

    # -- dispatch ----------------------------------------------------------------------------
    def _max_images(self, model_id: str) -> int:
        return self.catalog.model(model_id).max_batch_size

    def _batch_wait(self, model_id: str) -> float:
        if self.fifo:
            return 0.0
        return max(self.catalog.model(model_id).batch_wait_ms / 1000.0, 0.0)

    def _finish(self, job_id: str, allowed: set, to: JobStatus, **updates) -> JobRecord | None:
        moved = self._finish_many([(job_id, updates)], allowed, to)
        return moved[0] if moved else None

    def _finish_many(
        self, items: list[tuple[str, dict]], allowed: set, to: JobStatus
    ) -> list[JobRecord]:
        """Move jobs to a terminal state in one write, then tell waiters, metrics, webhooks."""
        now = self.clock()
        moved = self.store.transition_many(
            [(job_id, {"finished_at": now, **updates}) for job_id, updates in items], allowed, to
        )
        for rec in moved:
            self.progress.pop(rec.id, None)
            self._record(rec)
            if rec.webhook_url:
                self.store.update(rec.id, webhook_pending=True)
                rec.webhook_pending = True
                self._spawn(self._send_webhook(rec))
            self._notify(rec.id)
            self._finished(rec.id)
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

    async def metrics_text(self) -> bytes:
        """The scheduler's Prometheus text (queue depth refreshed now)."""
        depth = {(m.id, c): 0 for m in self.catalog.models for c in CLASSES}
        for j in self.queued.values():
            depth[(j.model_id, j.priority)] += 1
        for (model, cls), n in depth.items():
            self.metrics.queue_depth.labels(model, cls).set(n)
        self.metrics.running.set(len(self.batch_of))
        for m in self.catalog.models:
            share = m.gpu_fraction * self.replicas.get(m.family, 0)
            self.metrics.gpu_share.labels(m.id, m.family).set(share)
        return self.metrics.render()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Queued work per model and class, running work per model and work enqueued so far
        per model and class, in work units, with the measured device seconds per unit (what a unit
        costs its device, not the wall time co-located replicas stretch) and how much the
        family's replicas slow each other down (``contention.py``): what the autoscaler
        (``autoscaling/serve_adapter.py``) reads when the app runs under its policy."""
        from genmedia.autoscaling.signals import encode

        now = time.time()
        slowdowns = {m.id: self.contention.slowdown(m.id, now) for m in self.catalog.models}
        return encode(
            ((j.model_id, j.priority, j.cost) for j in self.queued.values()),
            self.running_work.values(),
            self.estimator.device_per_cost,
            (m.id for m in self.catalog.models),
            self.admitted_units,
            {m: (s.per_call, s.age_s) for m, s in slowdowns.items() if s is not None},
        )

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

    async def _dispatch_loop(self) -> None:
        while True:
            try:
                retry_at = self._dispatch_once()
            except Exception:  # never let the loop die; the next wake-up tries again
                logger.exception("scheduler dispatch failed")
                retry_at = None
            timeout = 1.0 if retry_at is None else max(0.001, min(1.0, retry_at - self.clock()))
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _dispatch_once(self) -> float | None:
        now = self.clock()
        retry_at: float | None = None
        for family, qs in self.queues.items():
            for qj in expired(qs.values(), now):
                self.queued.pop(qj.id, None)
                self._finish(
                    qj.id,
                    {JobStatus.IN_QUEUE},
                    JobStatus.EXPIRED,
                    error_type="deadline_expired",
                    error_message="the deadline passed while the job was queued",
                )
            cap = self._capacity(family)
            for slot in ("main", "preempt"):
                while self.inflight[family][slot] < self._slots(family, slot, cap):
                    d = next_batch(
                        qs,
                        slot,
                        max_images=self._max_images,
                        batch_wait_s=self._batch_wait,
                        shares=self.shares[family],
                        batch_min_share=self.batch_min_share,
                        now=now,
                    )
                    if d.retry_at is not None:
                        retry_at = d.retry_at if retry_at is None else min(retry_at, d.retry_at)
                    if not d.batch:
                        break
                    self._launch(family, slot, d.cls, d.batch, now)
        return retry_at

    def _slots(self, family: str, slot: str, cap: int) -> int:
        """Main slots: ``MAIN_SLOTS_PER_REPLICA`` per replica, one call computing and one staged
        at the worker's gate, so the pipeline never idles while a result travels back and the
        next batch travels out. Preempt slots: two per replica (one computing, one staged at the
        gate, so a second interactive call starts the moment the first ends instead of a
        dispatch and a batch step later), and never more than main slots hold batch-class
        calls."""
        if slot == "main":
            return MAIN_SLOTS_PER_REPLICA * cap
        return min(PREEMPT_SLOTS_PER_REPLICA * cap, self.main_batch_calls[family])

    def _launch(self, family: str, slot: str, cls: str, batch: list[QueuedJob], now: float) -> None:
        qs = self.queues[family][cls]
        qs.take(batch)
        if slot == "main":
            self.shares[family].record(cls, sum(j.cost for j in batch), now)
        for qj in batch:
            self.queued.pop(qj.id, None)
        started = self.store.transition_many(
            [(qj.id, {"started_at": now}) for qj in batch],
            {JobStatus.IN_QUEUE},
            JobStatus.IN_PROGRESS,
            bump_attempts=True,
        )
        if not started:
            return
        batch_id = uuid.uuid4().hex[:12]
        self.contention.dispatched(family, batch_id, time.time())
        self.inflight[family][slot] += 1
        if slot == "main" and cls == "batch":
            self.main_batch_calls[family] += 1
        cost = sum(j.cost for j in batch)
        expected = self.estimator.seconds(batch[0].model_id, cost)
        self.running_ends[batch_id] = (family, slot, None if expected is None else now + expected)
        self.running_work[batch_id] = (batch[0].model_id, cost)
        for rec in started:
            self.batch_of[rec.id] = batch_id
            self.running_tenant[rec.id] = rec.tenant
            self.progress[rec.id] = (0, job_from_dict(rec.job).params.num_inference_steps)
            self._notify(rec.id)
        self._spawn(self._run(family, slot, cls, batch_id, started))

    async def _run(
        self, family: str, slot: str, cls: str, batch_id: str, recs: list[JobRecord]
    ) -> None:
        model_id = recs[0].model_id
        jobs = [job_from_dict(r.job) for r in recs]
        ids = [r.id for r in recs]
        result = None
        try:
            adapters = self._adapter_uses(model_id, jobs[0].params.adapters)
            req = BatchRequest(
                batch_id=batch_id,
                model_id=model_id,
                priority=cls,
                jobs=jobs,
                tenants={r.id: r.tenant for r in recs},
                adapters=adapters,
            )
            # Routing affinity: replicas that already hold this adapter set are preferred, and
            # a busy one spills the set over to another replica (Serve's multiplexed routing).
            mux_id = model_id + (f"@{adapter_set_key(adapters)}" if adapters else "")
            handle = self.workers[family].options(multiplexed_model_id=mux_id, stream=True)
            stream = handle.run_batch.remote(req)
            self.batches[batch_id] = (ids, stream)
            async for event in stream:
                if event["type"] == "progress":
                    for jid in ids:
                        if jid in self.progress:
                            self.progress[jid] = (event["step"], event["total"])
                            self._notify(jid)
                else:
                    result = event
            if result is None:
                raise RuntimeError("worker stream ended without a result")
            self._complete(recs, result)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed(recs, e)
        finally:
            self.contention.dropped(family, batch_id)
            self.batches.pop(batch_id, None)
            self.running_ends.pop(batch_id, None)
            self.running_work.pop(batch_id, None)
            for jid in ids:
                self.batch_of.pop(jid, None)
                self.running_tenant.pop(jid, None)
                self.progress.pop(jid, None)
            self.inflight[family][slot] -= 1
            if slot == "main" and cls == "batch":
                self.main_batch_calls[family] -= 1
            self._wakeup.set()

    def _complete(self, recs: list[JobRecord], result: dict) -> None:
        by_job = {r["job_id"]: r for r in result["results"]}
        now = self.clock()
        total_cost = 0.0
        done: list[tuple[str, dict]] = []
        for rec in recs:
            r = by_job[rec.id]
            job = job_from_dict(rec.job)
            total_cost += job_cost(
                job.num_images, job.params.num_inference_steps, int(job.params.pixels), 1
            )
            started = rec.started_at or now
            payload = {
                "images": r["images"],
                "seed": job.seed,
                "parameters": job.describe(),
                "timings": {
                    "queue_s": round(started - rec.submitted_at, 6),
                    "load_s": round(result.get("load_s", 0.0), 6),
                    "adapter_load_s": round(result.get("adapter_load_s", 0.0), 6),
                    "wait_s": round(result.get("wait_s", 0.0), 6),
                    "paused_s": round(result.get("paused_s", 0.0), 6),
                    "compute_s": round(result["compute_s"], 6),
                    "device_s": round(result.get("device_s", result["compute_s"]), 6),
                    "store_s": round(result.get("store_s", 0.0), 6),
                    "total_s": round(now - rec.submitted_at, 6),
                },
                "batch": {
                    "id": result["batch_id"],
                    "images": result["batch_images"],
                    "requests": len(recs),
                },
                "device": result.get("device"),
                "acceleration": result.get("acceleration", {}),
                "loras": result.get("adapters", []),
                "task": job.params.task,
            }
            usage = {
                "images": job.num_images,
                "steps": job.num_images * job.params.num_inference_steps,
                "compute_s": r["compute_s"],
            }
            done.append((rec.id, {"result": payload, "usage": usage}))
        self._finish_many(done, {JobStatus.IN_PROGRESS}, JobStatus.COMPLETED)
        self.estimator.observe(
            recs[0].model_id, total_cost, result["compute_s"], result.get("device_s")
        )
        span = result.get("compute_span")
        if span and result.get("replica") and total_cost > 0:
            self.contention.finished(
                self.family_of[recs[0].model_id],
                ComputeSpan(
                    call_id=result["batch_id"],
                    replica=str(result["replica"]),
                    model_id=recs[0].model_id,
                    images=int(result["batch_images"]),
                    start=float(span[0]),
                    end=float(span[1]),
                    seconds_per_unit=float(result["compute_s"]) / total_cost,
                ),
            )

    def _adapter_uses(self, model_id: str, adapters) -> list[AdapterUse]:
        uses = []
        for aid, scale in adapters:
            record = self.adapter_registry.get(aid)
            if record is None or record["base_model"] != model_id:
                raise LookupError(f"adapter {aid!r} was removed after the job was accepted")
            uses.append(AdapterUse(aid, scale, record["source"]))
        return uses

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
                    self._enqueue(self._queued_job(back, back.weight))
                    self._notify(rec.id)
                continue
            message = f"{type(error).__name__}: {error}".splitlines()[0][:500]
            self._finish(
                rec.id,
                {JobStatus.IN_PROGRESS},
                JobStatus.FAILED,
                error_type="worker_lost" if lost else "generation_failed",
                error_message=message,
            )

    async def _poll_replicas(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                app = serve.status().applications.get(self.app_name)
                if app is not None:
                    for family, name in self.worker_names.items():
                        dep = app.deployments.get(name)
                        if dep is not None:
                            running = sum(
                                v
                                for k, v in dep.replica_states.items()
                                if str(k).endswith("RUNNING")
                            )
                            if running and running != self.replicas.get(family):
                                self.replicas[family] = running
                                self._wakeup.set()
            await asyncio.sleep(REPLICA_POLL_S)

    # -- webhooks ----------------------------------------------------------------------------
    async def _send_webhook(self, rec: JobRecord) -> None:
        event = {"type": f"job.{str(rec.status).lower()}", **self._status_of(rec.id)}
        event.pop("tenant", None)
        tenant = self.tenants.get(rec.tenant)
        secret = tenant.webhook_secret if tenant else None
        result = await deliver(rec.webhook_url, event, secret, self.webhook_policy)
        if not result.ok:
            logger.warning(
                "webhook for %s to host %s failed after %d attempt(s): %s",
                rec.id,
                urlsplit(rec.webhook_url).hostname,  # query strings often carry tokens
                result.attempts,
                result.error,
            )
        self.store.update(rec.id, webhook_pending=False)

    async def info(self) -> dict:
        """Where this replica runs and what it holds (for ``genmedia status``)."""
        import os

        import ray

        return {
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "gpu_ids": [],
            "pid": os.getpid(),
            "loaded": [f"{len(self.queued)} queued", f"{len(self.batch_of)} running"],
        }

    async def check_health(self) -> None:
        if not any(not t.done() for t in self._tasks):
            raise RuntimeError("scheduler loops stopped")


SchedulerDeployment = serve.deployment(Scheduler)
