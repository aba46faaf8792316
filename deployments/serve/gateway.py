"""Gateway deployment: the FastAPI ingress of the Ray Serve app (CPU only, no GPU visible).

Front of a request's way. Each replica builds a ``GatewayService`` over a deployment handle of
the scheduler and serves the routes of ``api/``. It holds no queue: every job goes to the one
scheduler, so order and fairness are global across gateway replicas.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from genmedia.deployments.api.app import build_api
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.protocol import (
    AdapterDeleted,
    AdapterError,
    AdapterRecord,
    AdminError,
    CancelOutcome,
    JobStatusView,
    KeyTable,
    Rejection,
    RuntimeKey,
    Submission,
    SubmitAccepted,
    UsageRow,
)
from genmedia.deployments.serve.worker import yield_cpu_to_workers
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.schema import TenantsFile
from genmedia.models.catalog import LoraEntry, parse_catalog


class RaySchedulerClient:
    """Reaches the scheduler through its Serve deployment handle (``intake.SchedulerClient``);
    every answer is a ``protocol`` message."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def submit(self, sub: Submission) -> SubmitAccepted | Rejection:
        return await self.handle.submit.remote(sub)

    async def submit_many(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        return await self.handle.submit_many.remote(subs)

    async def submit_each(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        return await self.handle.submit_each.remote(subs)

    async def statuses(self, reads: list[tuple[str, str]]) -> list[JobStatusView | None]:
        return await self.handle.statuses.remote(reads)

    async def status(self, job_id: str, tenant: str) -> JobStatusView | None:
        return await self.handle.status.remote(job_id, tenant)

    async def wait(self, job_id: str, tenant: str, timeout_s: float) -> JobStatusView | None:
        # A scheduler restart breaks a long wait: ask the new replica until the deadline.
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                return await self.handle.wait.remote(job_id, tenant, max(0.0, left))
            except Exception:
                if left <= 1.0:
                    raise
                await asyncio.sleep(0.5)

    async def submit_and_wait(self, sub: Submission, timeout_s: float) -> JobStatusView | Rejection:
        return await self.handle.submit_and_wait.remote(sub, timeout_s)

    async def cancel(self, job_id: str, tenant: str) -> CancelOutcome:
        return await self.handle.cancel.remote(job_id, tenant)

    async def watch(self, job_id: str, tenant: str) -> AsyncIterator[JobStatusView]:
        events = self.handle.options(stream=True).watch.remote(job_id, tenant)
        assert isinstance(events, DeploymentResponseGenerator)
        async for event in events:
            yield event

    async def usage(self, tenant: str) -> list[UsageRow]:
        return await self.handle.usage.remote(tenant)

    async def adapters(self) -> list[AdapterRecord]:
        return await self.handle.adapters.remote()

    async def register_adapter(self, spec: LoraEntry) -> AdapterRecord | AdapterError:
        return await self.handle.register_adapter.remote(spec)

    async def delete_adapter(self, adapter_id: str) -> AdapterDeleted | AdapterError:
        return await self.handle.delete_adapter.remote(adapter_id)

    async def key_table(self, known_version: int | None) -> KeyTable | None:
        return await self.handle.key_table.remote(known_version)

    async def add_key(self, key: RuntimeKey) -> RuntimeKey | AdminError:
        return await self.handle.add_key.remote(key)

    async def revoke_key(self, key_id: str) -> RuntimeKey | AdminError:
        return await self.handle.revoke_key.remote(key_id)

    async def set_quotas(self, tenant: str, changes: dict[str, int]) -> dict | AdminError:
        return await self.handle.set_quotas.remote(tenant, changes)

    async def metrics_text(self) -> bytes:
        return await self.handle.metrics_text.remote()

    async def ready(self) -> dict:
        return await self.handle.ready.remote()


@serve.ingress()
class Gateway:
    """Ray Serve ingress; the app is built per replica from the catalog it was deployed with."""

    def __init__(
        self,
        catalog: dict,
        catalog_file: str,
        scheduler: DeploymentHandle,
        workers: dict[str, DeploymentHandle],
        tenants: dict,
    ):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU deployment may otherwise see every GPU
        yield_cpu_to_workers()
        self.workers = workers
        self.service = GatewayService(
            parse_catalog(catalog, catalog_file),
            RaySchedulerClient(scheduler),
            Authenticator(TenantsFile.model_validate(tenants)),
        )

    async def info(self) -> dict:
        """Where this replica runs (for ``genmedia status``): no GPU, its CPU share."""
        import ray

        return {
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "gpu_ids": [],
            "loaded": [],
            "pid": os.getpid(),
        }

    def __serve_build_asgi_app__(self):
        return build_api(self.service)


GatewayDeployment = serve.deployment(Gateway)
