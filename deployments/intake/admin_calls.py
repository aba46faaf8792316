"""Admin calls of the gateway (a mixin of ``intake/service.py``'s ``GatewayService``): LoRA
adapters registered and removed at run time (a URL source fetched and stored here first,
``intake/adapter_sources.py``), and keys and quotas changed at run time (``tenants/runtime.py``).
The scheduler keeps both; admin tenants only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.adapter_sources import (
    AdapterSources,
    is_url_source,
    resolve_entry,
)
from genmedia.deployments.intake.guard import TenantGuard
from genmedia.deployments.intake.scheduler_client import SchedulerClient
from genmedia.deployments.protocol import (
    AdapterDeleted,
    AdapterError,
    AdapterRecord,
    KeyTable,
)
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.runtime import (
    KeyRefresher,
    QuotaPatch,
    admin_add_key,
    admin_revoke_key,
    admin_set_quotas,
)
from genmedia.deployments.tenants.schema import Tenant
from genmedia.models.catalog import Catalog, LoraEntry

T = TypeVar("T")


def _adapter_outcome(out: AdapterRecord | AdapterDeleted | AdapterError) -> dict[str, Any]:
    """The scheduler's answer to an admin adapter call, or its refusal as an ApiError."""
    if isinstance(out, AdapterError):
        raise ApiError(
            out.status,
            out.type,
            f"{out.field}: {out.message}",
            [{"field": out.field, "message": out.message, "limit": None}],
        )
    return out.public(admin=True) if isinstance(out, AdapterRecord) else out.as_dict()


class AdminCalls:
    """LoRA adapters, keys and quotas; the state is the ``GatewayService``'s."""

    catalog: Catalog
    scheduler: SchedulerClient
    auth: Authenticator
    guard: TenantGuard
    keys: KeyRefresher
    adapter_sources: AdapterSources
    call: Callable[[Awaitable[Any]], Awaitable[Any]]  # ``GatewayService.call``: 503 on failure

    async def adapters(self, tenant: Tenant) -> dict:
        items = await self.call(self.scheduler.adapters())
        return {
            "loras": [
                a.public(admin=tenant.admin) for a in items if tenant.allows_model(a.base_model)
            ]
        }

    def _admin(self, tenant: Tenant) -> None:
        if not tenant.admin:
            raise ApiError(403, "forbidden", f"tenant {tenant.id!r} is not an admin tenant")

    async def register_adapter(
        self, tenant: Tenant, spec: LoraEntry | dict[str, Any]
    ) -> dict[str, Any]:
        self._admin(tenant)
        entry = spec if isinstance(spec, LoraEntry) else LoraEntry.model_validate(spec)
        if is_url_source(entry.source):  # fetched and stored here; the scheduler gets the pin
            entry = await resolve_entry(self.adapter_sources, entry)
        return _adapter_outcome(await self.call(self.scheduler.register_adapter(entry)))

    async def delete_adapter(self, tenant: Tenant, adapter_id: str) -> dict[str, Any]:
        self._admin(tenant)
        return _adapter_outcome(await self.call(self.scheduler.delete_adapter(adapter_id)))

    # -- keys and quotas at run time (``tenants/runtime.py``) --------------------------------
    def _apply_keys(self, table: KeyTable) -> None:
        self.auth.apply(table)
        replicas = max(1, self.catalog.server.gateway_replicas)  # as TenantGuard divides them
        for t in self.auth.tenants.values():
            limit = max(1, t.quotas.requests_per_minute // replicas)
            self.guard.limits[t.id] = self.guard.rate.limits[t.id] = limit

    async def add_key(self, tenant: Tenant, owner: str, description: str) -> dict[str, Any]:
        self._admin(tenant)
        out = await admin_add_key(self.call, self.scheduler, self.auth.tenants, owner, description)
        await self.call(self.keys.tick(force=True))  # this replica knows it at once
        return out

    async def revoke_key(self, tenant: Tenant, key_id: str) -> dict[str, Any]:
        self._admin(tenant)
        key = await admin_revoke_key(self.call, self.scheduler, key_id)
        await self.call(self.keys.tick(force=True))
        return {"id": key.id, "tenant": key.tenant, "revoked_at": key.revoked_at}

    async def set_quotas(self, tenant: Tenant, owner: str, patch: QuotaPatch) -> dict[str, Any]:
        self._admin(tenant)
        out = await admin_set_quotas(self.call, self.scheduler, self.auth.tenants, owner, patch)
        await self.call(self.keys.tick(force=True))
        return out
