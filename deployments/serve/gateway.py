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
from typing import Any

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
    SchedulerNotActive,
    Submission,
    SubmitAccepted,
    UsageRow,
)
from genmedia.deployments.serve.niceness import yield_cpu_to_workers
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.schema import TenantsFile
from genmedia.models.catalog import LoraEntry, parse_catalog

TAKEOVER_RETRY_S = 30.0  # how long a call keeps trying while a standby scheduler takes over


def _not_active(e: BaseException) -> bool:
    """A standby replica's refusal (Ray re-raises the replica's exception as a subclass)."""
    return isinstance(e, SchedulerNotActive) or isinstance(
        getattr(e, "cause", None), SchedulerNotActive
    )


class RaySchedulerClient:
    """Reaches the scheduler through its Serve deployment handle (``intake.SchedulerClient``);
    every answer is a ``protocol`` message. A call that reached a standby replica
    (``SchedulerNotActive``: nothing was done) is sent again until the active replica answers or
    ``TAKEOVER_RETRY_S`` passes; other failures reach the gateway service (a 503)."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def _call(self, method: str, *args: Any) -> Any:
        deadline = time.monotonic() + TAKEOVER_RETRY_S
        pause = 0.05
        while True:
            try:
                return await getattr(self.handle, method).remote(*args)
            except Exception as e:
                if not _not_active(e) or time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)

    async def submit(self, sub: Submission) -> SubmitAccepted | Rejection:
        return await self._call("submit", sub)

    async def submit_many(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        return await self._call("submit_many", subs)

    async def submit_each(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        return await self._call("submit_each", subs)

    async def statuses(self, reads: list[tuple[str, str]]) -> list[JobStatusView | None]:
        return await self._call("statuses", reads)

    async def status(self, job_id: str, tenant: str) -> JobStatusView | None:
        return await self._call("status", job_id, tenant)

    async def wait(self, job_id: str, tenant: str, timeout_s: float) -> JobStatusView | None:
        # A scheduler restart breaks a long wait: ask the new replica until the deadline.
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                return await self._call("wait", job_id, tenant, max(0.0, left))
            except Exception:
                if left <= 1.0:
                    raise
                await asyncio.sleep(0.5)

    async def submit_and_wait(self, sub: Submission, timeout_s: float) -> JobStatusView | Rejection:
        return await self._call("submit_and_wait", sub, timeout_s)

    async def cancel(self, job_id: str, tenant: str) -> CancelOutcome:
        return await self._call("cancel", job_id, tenant)

    async def watch(self, job_id: str, tenant: str) -> AsyncIterator[JobStatusView]:
        deadline = time.monotonic() + TAKEOVER_RETRY_S
        while True:
            events = self.handle.options(stream=True).watch.remote(job_id, tenant)
            assert isinstance(events, DeploymentResponseGenerator)
            started = False
            try:
                async for event in events:
                    started = True
                    yield event
                return
            except Exception as e:
                if started or not _not_active(e) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)

    async def usage(self, tenant: str) -> list[UsageRow]:
        return await self._call("usage", tenant)

    async def adapters(self) -> list[AdapterRecord]:
        return await self._call("adapters")

    async def register_adapter(self, spec: LoraEntry) -> AdapterRecord | AdapterError:
        return await self._call("register_adapter", spec)

    async def delete_adapter(self, adapter_id: str) -> AdapterDeleted | AdapterError:
        return await self._call("delete_adapter", adapter_id)

    async def key_table(self, known_version: int | None) -> KeyTable | None:
        return await self._call("key_table", known_version)

    async def add_key(self, key: RuntimeKey) -> RuntimeKey | AdminError:
        return await self._call("add_key", key)

    async def revoke_key(self, key_id: str) -> RuntimeKey | AdminError:
        return await self._call("revoke_key", key_id)

    async def set_quotas(self, tenant: str, changes: dict[str, int]) -> dict | AdminError:
        return await self._call("set_quotas", tenant, changes)

    async def metrics_text(self) -> bytes:
        return await self._call("metrics_text")

    async def ready(self) -> dict:
        return await self._call("ready")


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
        parsed = parse_catalog(catalog, catalog_file)
        yield_cpu_to_workers(parsed.server.control_plane_niceness)
        self.workers = workers
        self.service = GatewayService(
            parsed,
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

    def __del__(self) -> None:
        """Serve ends the replica: end the service's parse process with it."""
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


GatewayDeployment = serve.deployment(Gateway)
