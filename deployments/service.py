"""The gateway's logic, without HTTP or Ray: validate, dispatch to the family worker, store.

``api.py`` puts HTTP in front of it; ``gateway.py`` runs it in a Ray Serve replica with a worker
client made of deployment handles. Unit tests drive it with an in-process worker client.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from genmedia.deployments.batching import BatchInfo
from genmedia.deployments.http_errors import ApiError
from genmedia.deployments.metrics import GatewayMetrics
from genmedia.deployments.outputs import store_images
from genmedia.deployments.storage import Storage, make_storage
from genmedia.models.catalog import Catalog, ModelEntry
from genmedia.models.params import GenerateRequest, GenerationJob, parameter_schema, resolve_request
from genmedia.models.registry import FAMILIES


@dataclass
class WorkerResult:
    """What a worker returns for one job: its images (uint8 HxWx3) and how it ran."""

    images: list  # list[np.ndarray]
    batch: BatchInfo
    batch_ref: str  # replica-unique id of the pipeline call
    replica: str
    device: str


class WorkerClient(Protocol):
    """How the gateway reaches the family workers."""

    async def generate(self, family: str, job: GenerationJob) -> WorkerResult: ...

    async def ready(self, family: str) -> dict: ...


class WorkerUnavailable(Exception):
    """The worker could not be reached or refused the job (overload, shutdown)."""


def new_request_id() -> str:
    return uuid.uuid4().hex


class GatewayService:
    """Everything the HTTP layer calls; one per gateway replica."""

    def __init__(
        self,
        catalog: Catalog,
        workers: WorkerClient,
        storage: Storage | None = None,
        metrics: GatewayMetrics | None = None,
        clock=time.time,
    ):
        self.catalog = catalog
        self.workers = workers
        self.storage = storage or make_storage(catalog.server.storage, catalog.resolve_path)
        self.metrics = metrics or GatewayMetrics()
        self.clock = clock

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

    def describe_models(self) -> list[dict]:
        return [self.describe_model(m) for m in self.catalog.models]

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
        }

    # -- generation --------------------------------------------------------------------------
    async def generate(self, model_id: str, req: GenerateRequest, base_url: str) -> dict:
        entry = self.entry(model_id)
        started = self.clock()
        request_id = new_request_id()
        job, errors = resolve_request(entry, req, request_id=request_id, now=started)
        if errors:
            raise ApiError(
                422,
                "invalid_request",
                "; ".join(f"{e.field}: {e.message}" for e in errors),
                [e.as_dict() for e in errors],
            )
        assert job is not None
        m = self.metrics
        m.in_flight.labels(model_id).inc()
        try:
            try:
                result = await asyncio.wait_for(
                    self.workers.generate(entry.family, job), self.catalog.server.request_timeout_s
                )
            except TimeoutError:
                m.errors.labels(model_id, "timeout").inc()
                raise ApiError(
                    504,
                    "timeout",
                    f"generation did not finish within {self.catalog.server.request_timeout_s:g}s",
                ) from None
            except WorkerUnavailable as e:
                m.errors.labels(model_id, "unavailable").inc()
                raise ApiError(503, "unavailable", str(e), headers={"Retry-After": "1"}) from e
            except ApiError:
                raise
            except Exception as e:
                m.errors.labels(model_id, "generation_failed").inc()
                raise ApiError(
                    500, "generation_failed", f"{type(e).__name__}: {e}".splitlines()[0][:500]
                ) from e
            worker_done = self.clock()
            stored = await asyncio.to_thread(
                store_images,
                self.storage,
                job,
                result.images,
                base_url=base_url,
                return_base64=req.return_base64,
                extra={"batch": result.batch_ref, "batch_size": result.batch.batch_size},
                now=started,
            )
            done = self.clock()
        except ApiError:
            m.requests.labels(model_id, "error").inc()
            raise
        finally:
            m.in_flight.labels(model_id).dec()
        b = result.batch
        dispatch_s = max(0.0, (worker_done - started) - b.queue_s - b.compute_s)
        queue_s = dispatch_s + b.queue_s
        m.requests.labels(model_id, "ok").inc()
        m.images.labels(model_id).inc(len(stored))
        m.queue_seconds.labels(model_id).observe(queue_s)
        m.compute_seconds.labels(model_id).observe(b.compute_s)
        m.request_seconds.labels(model_id).observe(done - started)
        m.batch_size.labels(model_id).observe(b.batch_size)
        return {
            "id": request_id,
            "model": model_id,
            "status": "COMPLETED",
            "seed": job.seed,
            "parameters": job.describe(),
            "images": [s.as_dict() for s in stored],
            "timings": {
                "queue_s": round(queue_s, 6),
                "compute_s": round(b.compute_s, 6),
                "store_s": round(done - worker_done, 6),
                "total_s": round(done - started, 6),
            },
            "batch": {"id": result.batch_ref, "images": b.batch_size, "requests": b.num_requests},
            "device": result.device,
        }

    # -- health ------------------------------------------------------------------------------
    async def readiness(self, timeout_s: float = 5.0) -> tuple[bool, dict]:
        families = self.catalog.families()

        async def probe(family: str) -> dict:
            try:
                return await asyncio.wait_for(self.workers.ready(family), timeout_s)
            except Exception as e:
                return {"error": f"{type(e).__name__}: {e}"[:300]}

        results = await asyncio.gather(*(probe(f) for f in families))
        report = dict(zip(families, results, strict=True))
        ok = all("error" not in r and r.get("loaded") for r in results)
        return ok, report
