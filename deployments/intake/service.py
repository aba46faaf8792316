"""The gateway's logic, without HTTP or Ray: authenticate, validate, hand to the scheduler.

``api/`` puts HTTP in front of it; ``serve/gateway.py`` runs it in a Ray Serve replica with a
scheduler client made of a deployment handle. It talks to the scheduler in ``protocol`` messages
and turns their answers into response bodies. A sync request is a queue job the gateway waits on.
Input images: ``intake/input_calls.py``; admin calls (adapters, keys, quotas):
``intake/admin_calls.py``; the scheduler's calls: ``intake/scheduler_client.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic import BaseModel

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.adapter_sources import (
    AdapterSources,
)
from genmedia.deployments.intake.admin_calls import AdminCalls
from genmedia.deployments.intake.bodies import INLINE_BODY_BYTES, SMALL_BODY_BYTES, parse_json
from genmedia.deployments.intake.coalesce import Coalescer
from genmedia.deployments.intake.fetch import UrlFetcher
from genmedia.deployments.intake.guard import TenantGuard, leave_intake_slot
from genmedia.deployments.intake.headers import parse_deadline, parse_idempotency_key
from genmedia.deployments.intake.input_calls import InputCalls
from genmedia.deployments.intake.parse_pool import OnErrors, ParsePool
from genmedia.deployments.intake.scheduler_client import SchedulerClient
from genmedia.deployments.intake.storage_guard import StorageGuard, store_upload, upload_type
from genmedia.deployments.metrics import GatewayMetrics
from genmedia.deployments.protocol import (
    CancelOutcome,
    JobStatus,
    JobStatusView,
    PriorityClass,
    Rejection,
    Submission,
    SubmitAccepted,
)
from genmedia.deployments.store.storage import Storage, make_storage
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.ratelimit import retry_after_header
from genmedia.deployments.tenants.runtime import (
    KeyRefresher,
)
from genmedia.deployments.tenants.schema import Tenant
from genmedia.deployments.webhooks.urls import WebhookUrlError, validate_webhook_url
from genmedia.models.catalog import Catalog, ModelEntry
from genmedia.models.params import (
    GenerateRequest,
    GenerationJob,
    parameter_schema,
    resolve_request,
)
from genmedia.models.registry import FAMILIES

LOADS_TTL_S = 30.0  # how often /v1/models asks the workers for measured load times
# Batch-class scheduler calls (single submits of the batch class and bulk submits) one gateway
# replica has open at once; interactive calls never wait for these (intake lanes). Enough for
# the scheduler to group-commit what arrives together, few enough that a burst waits here.
BULK_CALLS_IN_FLIGHT = 64
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def body_sha256(entry: ModelEntry, req: GenerateRequest) -> str:
    """SHA-256 of the canonical body of a submit (the model, and the fields the caller set
    to other than their defaults, as sorted compact JSON; the idempotency key left out): what
    an idempotency key is bound to (a repeat with another body is refused, Stripe's rule)."""
    body = req.model_dump(mode="json", exclude_defaults=True, exclude={"idempotency_key"})
    canonical = json.dumps(
        {"model": entry.id, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _not_found(job_id: str) -> ApiError:
    return ApiError(
        404,
        "not_found",
        f"no request {job_id!r}",
        [{"field": "request_id", "message": "unknown request", "limit": None}],
    )


class GatewayService(AdminCalls, InputCalls):
    """Everything the HTTP layer calls; one per gateway replica."""

    def __init__(
        self,
        catalog: Catalog,
        scheduler: SchedulerClient,
        auth: Authenticator,
        storage: Storage | None = None,
        metrics: GatewayMetrics | None = None,
    ):
        self.catalog = catalog
        self.scheduler = scheduler
        self.auth = auth
        self.storage = storage or make_storage(catalog.server.storage, catalog.resolve_path)
        self.metrics = metrics or GatewayMetrics()
        # Intake lanes: body parsing (past 1 KB) and input decoding run off the event loop,
        # interactive and batch-class work on separate threads, and batch-class scheduler
        # calls are capped, so a burst of bulk submits never holds up an interactive one.
        self._pools = {
            PriorityClass.INTERACTIVE: ThreadPoolExecutor(2, "intake-interactive"),
            PriorityClass.BATCH: ThreadPoolExecutor(1, "intake-batch"),
        }
        self.bulk_calls = asyncio.Semaphore(BULK_CALLS_IN_FLIGHT)
        # large bodies parse in a process of their own (``intake/parse_pool.py``), started
        # with a Serve replica (a loop runs here), else on the first large body
        self.parse_pool = ParsePool(fallback=self._pools[PriorityClass.BATCH])
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self.parse_pool.start()
        # per-tenant rate limit of every /v1 call and caps on progress streams (api/deps.py)
        self.guard = TenantGuard(auth.tenants.values(), catalog.server)
        # floods of status reads and batch-class submits: one scheduler call per group
        self._status_reads = Coalescer(scheduler.statuses, concurrency=4)
        self._batch_submits = Coalescer(self._submit_each, concurrency=2)
        self._loads: dict[str, float] = {}  # measured model load seconds (measured_loads)
        self._loads_at = -LOADS_TTL_S
        self._loads_task: asyncio.Task[None] | None = None
        self.storage_guard = StorageGuard(self.storage)  # storage quotas, upload rate, full disk
        inputs = catalog.server.inputs  # input images given as URLs (``intake/fetch.py``)
        self.fetcher = (
            UrlFetcher(inputs, catalog.server.max_body_bytes) if inputs.allow_urls else None
        )
        self.adapter_sources = AdapterSources(catalog, self.storage, self.fetcher)  # LoRA URLs
        # keys and quotas changed at run time: asked of the scheduler once a second, off the
        # request path (started here inside a Serve replica; tests call ``keys.tick``)
        self.keys = KeyRefresher(scheduler.key_table, self._apply_keys)
        self.keys.start()

    async def off_loop(self, lane: PriorityClass, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pools[lane], fn, *args)

    async def parse_body(self, raw: bytes, model: type[M], on_errors: OnErrors = None) -> M:
        """A request body as ``model`` (``intake/bodies.parse_json``'s 400/422): a body of at
        most ``INLINE_BODY_BYTES`` at once (microseconds, less than a thread hop), a small one
        on the interactive lane's threads, a large one in the parse process, whose parse does
        not hold this process's interpreter lock (``intake/parse_pool.py``)."""
        if len(raw) <= INLINE_BODY_BYTES:
            return parse_json(raw, model, on_errors)
        if len(raw) > SMALL_BODY_BYTES:
            return await self.parse_pool.parse(raw, model, on_errors)
        return await self.off_loop(PriorityClass.INTERACTIVE, parse_json, raw, model, on_errors)

    def close(self) -> None:
        """End what the service started besides its threads (the parse process)."""
        self.parse_pool.shutdown()

    # -- catalog -----------------------------------------------------------------------------
    def entry(self, model_id: str) -> ModelEntry:
        entry = self.catalog.model(model_id)
        if entry is None:
            raise ApiError(
                404,
                "model_not_found",
                f"unknown model {model_id!r}; GET /v1/models lists the models served",
                [{"field": "model_id", "message": "unknown model", "limit": None}],
            )
        return entry

    def describe_models(self, tenant: Tenant) -> list[dict]:
        return [self.describe_model(m) for m in self.catalog.models if tenant.allows_model(m.id)]

    async def _submit_each(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        async with self.bulk_calls:
            return await self.scheduler.submit_each(subs)

    def measured_loads(self) -> dict[str, float]:
        """Seconds each model took to load on a worker replica, as the workers report them in
        their readiness; refreshed in the background at most every ``LOADS_TTL_S`` so that
        ``/v1/models`` stays an answer from the catalog. Empty until first known."""
        now = time.monotonic()
        if now - self._loads_at > LOADS_TTL_S and self._loads_task is None:
            self._loads_at = now
            self._loads_task = asyncio.get_running_loop().create_task(self._refresh_loads())
        return self._loads

    async def _refresh_loads(self) -> None:
        try:
            report = await asyncio.wait_for(self.scheduler.ready(), 5.0)
            for family in report.values():
                if isinstance(family, dict):
                    self._loads.update(family.get("load_s") or {})
        except Exception:
            pass  # workers not ready: the catalog's figure stands
        finally:
            self._loads_task = None

    def describe_model(self, m: ModelEntry) -> dict:
        return {
            "id": m.id,
            "family": m.family,
            "family_title": FAMILIES[m.family].title,
            "task": m.task,
            "description": m.description,
            "dtype": m.dtype,
            "max_batch_size": m.max_batch_size,
            "priority_class": m.priority_class,
            "parameters": parameter_schema(m),
            "load_s": {"measured": self.measured_loads().get(m.id), "catalog": m.scaling.load_s},
        }

    # -- submit ------------------------------------------------------------------------------
    async def call(self, coro: Awaitable[T]) -> T:
        """A scheduler call; its failure (unreachable, restarting) is a 503 with Retry-After."""
        try:
            return await coro
        except ApiError:
            raise
        except Exception as e:
            raise ApiError(
                503,
                "unavailable",
                f"scheduler unavailable: {type(e).__name__}",
                headers={"Retry-After": "1"},
            ) from e

    def priority_of(
        self, tenant: Tenant, entry: ModelEntry, req: GenerateRequest, sync: bool
    ) -> str:
        """The class a request queues in (authorized for the tenant and model)."""
        priority: str | None = req.priority
        if priority is None:
            # long jobs (a batch-class model: video, audio) default to batch on both APIs
            if entry.priority_class == "batch" and tenant.allows_class("batch"):
                priority = "batch"
            else:
                priority = "interactive" if sync else tenant.default_class
        self.auth.authorize(tenant, entry.id, priority)
        return priority

    async def _prepare(
        self,
        tenant: Tenant,
        model_id: str,
        req: GenerateRequest,
        *,
        sync: bool,
        deadline: str | None,
        idempotency_key: str | None,
    ) -> Submission:
        """Everything checked at the gateway, as a submission for the scheduler."""
        entry = self.entry(model_id)
        priority = self.priority_of(tenant, entry, req, sync)
        deadline_s = parse_deadline(deadline)
        key = parse_idempotency_key(idempotency_key)
        return await self.submission(tenant, entry, req, priority, deadline_s, key, sync=sync)

    async def submission(
        self,
        tenant: Tenant,
        entry: ModelEntry,
        req: GenerateRequest,
        priority: str,
        deadline_s: float | None,
        key: str | None,
        *,
        sync: bool,
    ) -> Submission:
        lane = PriorityClass(priority)
        if req.webhook_url is not None:
            await self._check_webhook(req.webhook_url, sync=sync)
        request_id = uuid.uuid4().hex
        inputs, image_size = await self._inputs(tenant, entry, req, request_id, lane)
        try:
            # on the loop: every list and string is bounded at parse time, so resolving costs
            # 10-15 µs, a tenth of a hop to a lane's thread (and no wait behind bulk work there)
            job = self.resolve_job(entry, req, request_id, image_size, inputs)
        except BaseException:  # refused: the inline images it stored go
            await self.storage_guard.discard_inline(tenant.id, request_id, inputs)
            raise
        return Submission(
            tenant=tenant.id,
            model_id=entry.id,
            priority=lane,
            job=job,
            deadline_s=deadline_s,
            idempotency_key=key,
            webhook_url=req.webhook_url,
            body_sha256=None if key is None else await self.off_loop(lane, body_sha256, entry, req),
        )

    @staticmethod
    def resolve_job(
        entry: ModelEntry,
        req: GenerateRequest,
        request_id: str,
        image_size: tuple[int, int] | None,
        inputs: dict[str, str],
    ) -> GenerationJob:
        """The request against its model's bounds (bounded work: microseconds); 422 naming
        each field."""
        job, errors = resolve_request(entry, req, request_id=request_id, image_size=image_size)
        if errors:
            raise ApiError(
                422,
                "invalid_request",
                "; ".join(f"{e.field}: {e.message}" for e in errors),
                [e.as_dict() for e in errors],
            )
        assert job is not None
        if inputs:
            job.extra["inputs"] = inputs
        return job

    async def _check_webhook(self, url: str, *, sync: bool) -> None:
        """A webhook needs the queue API and a URL the webhook rules allow (422 otherwise)."""
        if sync:
            raise ApiError(
                422,
                "invalid_request",
                "webhook_url needs the queue API (POST /v1/queue/models/{model_id})",
                [{"field": "webhook_url", "message": "queue API only", "limit": None}],
            )
        try:
            await asyncio.to_thread(validate_webhook_url, url, self.catalog.server.webhooks)
        except WebhookUrlError as e:
            raise ApiError(
                422,
                "invalid_webhook_url",
                f"webhook_url: {e}",
                [{"field": "webhook_url", "message": str(e), "limit": e.rule}],
            ) from None

    async def upload(
        self, tenant: Tenant, data: bytes, content_type: str | None, base_url: str
    ) -> dict:
        """``POST /v1/files``: keep an input image for later requests (image / mask_image),
        written anew without metadata, within the tenant's upload rate and storage quota."""
        ctype = upload_type(content_type)
        self.storage_guard.take_upload_token(tenant)
        max_pixels = max(
            m.parameters.width.max * m.parameters.height.max for m in self.catalog.models
        )
        guard = self.storage_guard
        return await asyncio.to_thread(
            store_upload, guard, tenant, data, ctype, max_pixels, base_url
        )

    def _check_refused(
        self, sub: Submission, result: SubmitAccepted | JobStatusView | Rejection
    ) -> None:
        """Count the outcome; raise the scheduler's refusal as 429 with Retry-After."""
        if not isinstance(result, Rejection):
            self.metrics.submitted.labels(sub.model_id, sub.priority).inc()
            return
        r = result
        self.metrics.rejected.labels(sub.model_id, r.type).inc()
        fields = [{"field": r.field, "message": r.message, "limit": None}] if r.field else None
        retry = r.retry_after_s
        raise ApiError(
            r.status,
            r.type,
            r.message,
            fields,
            headers={"Retry-After": retry_after_header(retry)} if retry is not None else None,
        )

    async def submit(
        self,
        tenant: Tenant,
        model_id: str,
        req: GenerateRequest,
        *,
        deadline: str | None = None,
        idempotency_key: str | None = None,
    ) -> SubmitAccepted:
        """The queue API's submit: accepted (202, ``public_status`` is its body) or refused
        (429 and friends)."""
        sub = await self._prepare(
            tenant, model_id, req, sync=False, deadline=deadline, idempotency_key=idempotency_key
        )
        if sub.priority is PriorityClass.BATCH:  # coalesced with others into one call
            result = await self.call(self._batch_submits.call(sub))
        else:
            result = await self.call(self.scheduler.submit(sub))
        await self.storage_guard.settle(sub, result)
        self._check_refused(sub, result)
        assert isinstance(result, SubmitAccepted)
        return result

    async def generate(
        self,
        tenant: Tenant,
        model_id: str,
        req: GenerateRequest,
        base_url: str,
        *,
        deadline: str | None = None,
        idempotency_key: str | None = None,
        wait_s: float | None = None,
    ) -> dict | JobStatusView:
        """The sync path: one scheduler call that submits the job and waits for its end. With
        ``wait_s`` (``Prefer: wait``) a job still running then answers its status instead of
        a 504."""
        sub = await self._prepare(
            tenant, model_id, req, sync=True, deadline=deadline, idempotency_key=idempotency_key
        )
        timeout = wait_s or self.catalog.server.request_timeout_s
        leave_intake_slot()  # the gateway's work is done; the rest is waiting
        status = await self.call(self.scheduler.submit_and_wait(sub, timeout))
        await self.storage_guard.settle(sub, status)
        self._check_refused(sub, status)
        assert isinstance(status, JobStatusView)
        s = status.status
        job_id = status.request_id
        if s is JobStatus.COMPLETED:
            return self.result_body(status, base_url, req.return_base64)
        if s in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS) and wait_s is not None:
            return status
        if s in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS):
            raise ApiError(
                504,
                "timeout",
                f"request {job_id} did not finish within "
                f"{timeout:g}s; it goes on: GET /v1/queue/requests/{job_id}/status",
            )
        code = {JobStatus.FAILED: 500, JobStatus.EXPIRED: 504, JobStatus.CANCELLED: 409}.get(s, 500)
        err = status.error
        raise ApiError(
            code,
            (err.type if err else None) or s.lower(),
            (err.message if err else None) or f"request {job_id} ended {s}",
        )

    # -- queue API ---------------------------------------------------------------------------
    def urls(self, job_id: str, base_url: str) -> dict:
        root = f"{base_url.rstrip('/')}/v1/queue/requests/{job_id}"
        return {
            "status_url": f"{root}/status",
            "result_url": root,
            "response_url": root,  # fal's name for result_url
            "cancel_url": f"{root}/cancel",
            "stream_url": f"{root}/stream",
        }

    def public_status(
        self, status: JobStatusView | SubmitAccepted, base_url: str, logs: bool = False
    ) -> dict[str, Any]:
        """A status body: the job without its tenant and result, plus its URLs (a submit's
        also says whether it ``created`` the job); ``logs`` adds the job's log lines."""
        created: dict[str, Any] = {}
        if isinstance(status, SubmitAccepted):
            created, status = {"created": status.created}, status.job
        out = status.as_dict(tenant=False, result=False, logs=logs)
        return {**created, **out, **self.urls(status.request_id, base_url)}

    async def wait(self, tenant: Tenant, job_id: str, wait_s: float) -> JobStatusView:
        """The job's status once it ends, or after ``wait_s`` (``Prefer: wait``)."""
        leave_intake_slot()
        status = await self.call(self.scheduler.wait(job_id, tenant.id, wait_s))
        if status is None:
            raise _not_found(job_id)
        return status

    async def _status(self, tenant: Tenant, job_id: str) -> JobStatusView:
        status = await self.call(self._status_reads.call((job_id, tenant.id)))
        if status is None:
            raise _not_found(job_id)
        return status

    async def status(
        self, tenant: Tenant, job_id: str, base_url: str, logs: bool = False
    ) -> dict[str, Any]:
        """The job's status body (``logs``: with its log lines, as ``?logs=1`` asks)."""
        return self.public_status(await self._status(tenant, job_id), base_url, logs)

    async def result(
        self, tenant: Tenant, job_id: str, base_url: str, return_base64: bool = False
    ) -> dict[str, Any]:
        status = await self._status(tenant, job_id)
        s = status.status
        if s in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS):
            raise ApiError(
                409,
                "not_finished",
                f"request {job_id} is {s}; see its status_url",
                headers={"Retry-After": "1"},
            )
        if s is JobStatus.COMPLETED:
            return self.result_body(status, base_url, return_base64)
        return self.public_status(status, base_url)

    def result_body(
        self, status: JobStatusView, base_url: str, return_base64: bool
    ) -> dict[str, Any]:
        """A completed job's result: its outputs with URLs (and base64 if asked)."""
        assert status.result is not None
        result = dict(status.result)
        outputs = []
        for img in result["images"]:
            d = {**img, "url": self.storage.url(img["key"], base_url), "path": img["key"]}
            if return_base64:
                import base64

                data = self.storage.get(img["key"])
                d["base64"] = base64.b64encode(data).decode() if data is not None else None
            outputs.append(d)
        # "outputs" for every task; image tasks also answer under their historical "images"
        result.pop("images")
        result["outputs"] = outputs
        # results stored before video and audio existed have no "task"
        if result.get("task", "text-to-image") in ("text-to-image", "image-to-image", "inpainting"):
            result["images"] = outputs
        return {
            "id": status.request_id,
            "request_id": status.request_id,
            "model": status.model,
            "status": "COMPLETED",
            "priority": str(status.priority),
            **result,
        }

    async def cancel(self, tenant: Tenant, job_id: str) -> dict[str, Any]:
        outcome = await self.call(self.scheduler.cancel(job_id, tenant.id))
        if outcome is CancelOutcome.NOT_FOUND:
            raise _not_found(job_id)
        if outcome is CancelOutcome.ALREADY_FINISHED:
            raise ApiError(400, "already_completed", f"request {job_id} already finished")
        return {"request_id": job_id, "status": "CANCELLATION_REQUESTED"}

    async def stream(
        self, tenant: Tenant, job_id: str, base_url: str, logs: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        self.guard.check_streams(tenant)  # 429 over a cap, before the stream starts
        await self._status(tenant, job_id)  # 404 before the stream starts

        async def events() -> AsyncIterator[dict[str, Any]]:
            async with self.guard.stream_slot(tenant) as deadline:
                async for status in self.scheduler.watch(job_id, tenant.id):
                    yield self.public_status(status, base_url, logs)
                    if self.guard.clock() > deadline:
                        return  # stream_max_s: the client reconnects to go on

        return events()

    async def usage(self, tenant: Tenant) -> dict[str, Any]:
        rows = await self.call(self.scheduler.usage(tenant.id))
        models: dict[str, dict[str, Any]] = {}
        for r in rows:
            m = models.setdefault(
                r.model_id,
                {"jobs": 0, "images": 0, "steps": 0, "compute_s": 0.0, "by_status": {}},
            )
            m["jobs"] += r.jobs
            m["images"] += r.images
            m["steps"] += r.steps
            m["compute_s"] += r.compute_s
            m["by_status"][str(r.status)] = r.jobs
        return {"tenant": tenant.id, "models": models}

    def file_key(self, tenant: Tenant, path: str) -> str:
        """A storage key the tenant may read; 404 for another tenant's file (as for none)."""
        from genmedia.deployments.store.storage import safe_key

        try:
            key = safe_key(path)
        except ValueError as e:
            raise ApiError(
                400, "invalid_path", str(e), [{"field": "path", "message": str(e), "limit": None}]
            ) from None
        if key.split("/", 1)[0] != tenant.id:
            raise ApiError(404, "file_not_found", f"no file {path!r}")
        return key

    # -- health ------------------------------------------------------------------------------
    async def readiness(self, timeout_s: float = 5.0) -> tuple[bool, dict]:
        try:
            report = await asyncio.wait_for(self.scheduler.ready(), timeout_s)
        except Exception as e:
            return False, {"scheduler": f"{type(e).__name__}: {e}"[:300]}
        ok = all("error" not in r and r.get("loaded") for r in report.values())
        return ok, report
