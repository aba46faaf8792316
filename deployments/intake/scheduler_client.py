"""The gateway's view of the scheduler: the calls ``GatewayService`` makes, in ``protocol``
messages. ``serve/gateway.py`` implements it over a Serve deployment handle (retrying a call a
standby refused); the unit tests implement it in process (``tests/unit/deployments/fakes.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

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
from genmedia.models.catalog import LoraEntry


class SchedulerClient(Protocol):
    """How the gateway reaches the scheduler (a deployment handle, or a fake in unit tests).
    ``status`` and ``wait`` answer None for a job that is not the tenant's (or none at all)."""

    async def submit(self, sub: Submission) -> SubmitAccepted | Rejection: ...

    async def submit_many(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        """Admit several submits of one tenant in one call (one store transaction per group),
        answered in order; the call counts once against the tenant's rate."""
        ...

    async def submit_each(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        """As ``submit_many`` for single submits of any tenants coalesced into one call."""
        ...

    async def statuses(self, reads: list[tuple[str, str]]) -> list[JobStatusView | None]:
        """``status`` of many (job id, tenant) reads in one call."""
        ...

    async def status(self, job_id: str, tenant: str) -> JobStatusView | None: ...

    async def wait(self, job_id: str, tenant: str, timeout_s: float) -> JobStatusView | None: ...

    async def submit_and_wait(
        self, sub: Submission, timeout_s: float
    ) -> JobStatusView | Rejection: ...

    async def cancel(self, job_id: str, tenant: str) -> CancelOutcome: ...

    def watch(self, job_id: str, tenant: str) -> AsyncIterator[JobStatusView]: ...

    async def usage(self, tenant: str) -> list[UsageRow]: ...

    async def adapters(self) -> list[AdapterRecord]: ...

    async def register_adapter(self, spec: LoraEntry) -> AdapterRecord | AdapterError: ...

    async def delete_adapter(self, adapter_id: str) -> AdapterDeleted | AdapterError: ...

    async def metrics_text(self) -> bytes: ...

    async def ready(self) -> dict: ...

    async def key_table(self, known_version: int | None) -> KeyTable | None:
        """Run-time keys and quotas (``tenants/runtime.py``); None: ``known_version`` is current."""
        ...

    async def add_key(self, key: RuntimeKey) -> RuntimeKey | AdminError: ...

    async def revoke_key(self, key_id: str) -> RuntimeKey | AdminError: ...

    async def set_quotas(self, tenant: str, changes: dict[str, int]) -> dict | AdminError: ...
