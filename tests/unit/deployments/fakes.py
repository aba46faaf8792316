"""Schedulers without Ray for the gateway's unit tests: they speak the ``protocol`` messages of
``intake.service.SchedulerClient``, complete every job at once and write its outputs to a real
storage. ``StreamingScheduler`` adds the progress stream, a delay and refusals per tenant (the
load-test replay drives it over real HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np

from genmedia.deployments.protocol import (
    AdapterDeleted,
    AdapterError,
    AdapterRecord,
    AdminError,
    CancelOutcome,
    JobStatus,
    JobStatusView,
    KeyTable,
    Rejection,
    RuntimeKey,
    StepProgress,
    Submission,
    SubmitAccepted,
    UsageRow,
)
from genmedia.deployments.store.storage import Storage
from genmedia.deployments.tenants.runtime import KeyRegistry
from genmedia.deployments.tenants.schema import Tenant
from genmedia.models.catalog import LoraEntry
from genmedia.models.media import encode_image


class FakeScheduler:
    """Completes every job at once with a solid-colour PNG written to the real storage."""

    def __init__(
        self,
        storage: Storage,
        fail: Exception | None = None,
        reject: Rejection | dict[str, Any] | None = None,
    ) -> None:
        self.storage = storage
        self.subs: list[Submission] = []
        self.fail = fail
        self.reject = Rejection(**reject) if isinstance(reject, dict) else reject
        self.jobs: dict[str, JobStatusView] = {}

    def _outputs(self, sub: Submission) -> list[dict[str, Any]]:
        job = sub.job
        images = []
        for i in range(job.num_images):
            pixels = np.full(
                (job.params.height, job.params.width, 3), (job.seed + i) % 256, np.uint8
            )
            key = f"{sub.tenant}/x/{job.request_id}/{i}.png"
            self.storage.put(key, encode_image(pixels), "image/png")
            images.append(
                {
                    "key": key,
                    "seed": job.seed + i,
                    "width": job.params.width,
                    "height": job.params.height,
                    "content_type": "image/png",
                    "sha256": "-",
                }
            )
        return images

    async def submit(self, sub: Submission) -> SubmitAccepted | Rejection:
        if self.fail:
            raise self.fail
        if self.reject:
            return self.reject
        self.subs.append(sub)
        job = sub.job
        status = JobStatusView(
            request_id=job.request_id,
            model=sub.model_id,
            status=JobStatus.COMPLETED,
            priority=sub.priority,
            submitted_at=0.0,
            tenant=sub.tenant,
            finished_at=0.0,
            result={
                "images": self._outputs(sub),
                "seed": job.seed,
                "parameters": job.describe(),
                "timings": {"queue_s": 0.0, "compute_s": 0.01, "total_s": 0.02},
                "batch": {"id": "b", "images": job.num_images, "requests": 1},
            },
        )
        self.jobs[job.request_id] = status
        return SubmitAccepted(created=True, job=status)

    async def submit_many(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        return [await self.submit(sub) for sub in subs]

    async def submit_each(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        return [await self.submit(sub) for sub in subs]

    async def statuses(self, reads: list[tuple[str, str]]) -> list[JobStatusView | None]:
        return [await self.status(job_id, tenant) for job_id, tenant in reads]

    async def status(self, job_id: str, tenant: str) -> JobStatusView | None:
        s = self.jobs.get(job_id)
        return s if s is not None and s.tenant == tenant else None

    async def wait(self, job_id: str, tenant: str, timeout_s: float) -> JobStatusView | None:
        return await self.status(job_id, tenant)

    async def submit_and_wait(self, sub: Submission, timeout_s: float) -> JobStatusView | Rejection:
        accepted = await self.submit(sub)
        if isinstance(accepted, Rejection):
            return accepted
        return await self.wait(accepted.job.request_id, sub.tenant, timeout_s) or accepted.job

    async def cancel(self, job_id: str, tenant: str) -> CancelOutcome:
        s = await self.status(job_id, tenant)
        return CancelOutcome.NOT_FOUND if s is None else CancelOutcome.ALREADY_FINISHED

    async def watch(self, job_id: str, tenant: str) -> AsyncIterator[JobStatusView]:
        s = await self.status(job_id, tenant)
        if s is not None:
            yield s

    async def usage(self, tenant: str) -> list[UsageRow]:
        return []

    async def adapters(self) -> list[AdapterRecord]:
        return []

    async def register_adapter(self, spec: LoraEntry) -> AdapterRecord | AdapterError:
        return AdapterError(503, "unavailable", "base_model", "no workers in unit tests")

    async def delete_adapter(self, adapter_id: str) -> AdapterDeleted | AdapterError:
        return AdapterError(404, "not_found", "adapter_id", f"no adapter {adapter_id!r}")

    async def metrics_text(self) -> bytes:
        return b"genmedia_queue_depth 0.0\n"

    async def ready(self) -> dict[str, Any]:
        return {"sd15": {"loaded": ["sd15-tiny"]}}

    # keys and quotas at run time: the real registry over an in-memory store (use_keys)
    keys: KeyRegistry | None = None

    def use_keys(self, tenants: list[Tenant]) -> KeyRegistry:
        self.keys = KeyRegistry(MemoryKeyStore(), tenants)
        return self.keys

    async def key_table(self, known_version: int | None) -> KeyTable | None:
        return None if self.keys is None else self.keys.since(known_version)

    async def add_key(self, key: RuntimeKey) -> RuntimeKey | AdminError:
        return self._no_keys() if self.keys is None else self.keys.add(key)

    async def revoke_key(self, key_id: str) -> RuntimeKey | AdminError:
        return self._no_keys() if self.keys is None else self.keys.revoke(key_id)

    async def set_quotas(self, tenant: str, changes: dict[str, int]) -> dict | AdminError:
        return self._no_keys() if self.keys is None else self.keys.set_quotas(tenant, changes)

    @staticmethod
    def _no_keys() -> AdminError:
        return AdminError(503, "unavailable", "key_id", "no key registry in this test")


class MemoryKeyStore:
    """``store.jobs.KeyStore`` in memory, for the fake scheduler."""

    def __init__(self) -> None:
        self.keys: dict[str, RuntimeKey] = {}
        self.quotas: dict[str, dict[str, int]] = {}

    def add_api_key(self, key: RuntimeKey) -> bool:
        if key.id in self.keys:
            return False
        self.keys[key.id] = key
        return True

    def revoke_api_key(self, key_id: str, at: float) -> bool:
        key = self.keys.get(key_id)
        if key is None:
            return False
        if key.revoked_at is None:
            self.keys[key_id] = replace(key, revoked_at=at)
        return True

    def set_tenant_quotas(self, tenant: str, quotas: dict[str, int], at: float) -> None:
        self.quotas[tenant] = dict(quotas)

    def api_keys(self) -> list[RuntimeKey]:
        return [self.keys[k] for k in sorted(self.keys)]

    def tenant_quotas(self) -> dict[str, dict[str, int]]:
        return {t: dict(q) for t, q in self.quotas.items()}


class StreamingScheduler(FakeScheduler):
    """Adds the status stream (queued → step 1 → the end), a delay and refusals per tenant."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage)
        self.delay_s = 0.0
        self.refuse: set[str] = set()
        self.cancelled: list[str] = []

    async def submit(self, sub: Submission) -> SubmitAccepted | Rejection:
        if sub.tenant in self.refuse:
            return Rejection(429, "quota_exceeded", "too many queued jobs", 1.0)
        return await super().submit(sub)

    async def watch(self, job_id: str, tenant: str) -> AsyncIterator[JobStatusView]:
        final = await self.status(job_id, tenant)
        if final is None:
            return
        base = replace(final, result=None, finished_at=None)
        yield replace(base, status=JobStatus.IN_QUEUE, queue_position=0)
        yield replace(base, status=JobStatus.IN_PROGRESS, progress=StepProgress(0, 4))
        await asyncio.sleep(self.delay_s / 2)
        yield replace(base, status=JobStatus.IN_PROGRESS, progress=StepProgress(1, 4))
        await asyncio.sleep(self.delay_s / 2)
        yield final

    async def cancel(self, job_id: str, tenant: str) -> CancelOutcome:
        self.cancelled.append(job_id)
        return await super().cancel(job_id, tenant)
