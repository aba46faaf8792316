"""API keys and quotas changed on a running cluster, on top of the tenants file.

The tenants file stays the bootstrap: its tenants, keys and quotas apply; keys added at run time
add to them, a revoked key (of the file or added at run time) is refused, and quota overrides
replace single fields of a tenant's ``quotas``. Tenants themselves come only from the file.

Three places use this module:
- the scheduler owns the writes (``KeyRegistry`` over the job store's ``api_keys`` and
  ``tenant_quotas`` tables) and answers the table with a version;
- each gateway replica asks the scheduler for that table at most once a second
  (``KeyRefresher``, off the request path) and rebuilds its ``auth.Authenticator`` index when
  the version changed, so a revoked key answers 401 on every replica within about a second;
- the admin routes (``api/admin.py``) go through ``admin_*`` below: checks, then one scheduler
  call each. The plaintext of a new key is made on the gateway and never leaves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genmedia.deployments.errors import ApiError
from genmedia.deployments.protocol import AdminError, KeyTable, RuntimeKey
from genmedia.deployments.store.jobs import KeyStore
from genmedia.deployments.tenants.keys import new_api_key
from genmedia.deployments.tenants.schema import Quotas, Tenant

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # a gateway replica asks the scheduler for the key table at most this often
KeyIndex = dict[str, list[tuple[str, Tenant]]]  # key id -> (hash, tenant) candidates


# -- the effective tenants and key index (scheduler and gateway) ---------------------------------
def with_quotas(
    tenants: Iterable[Tenant], overrides: dict[str, dict[str, int]]
) -> dict[str, Tenant]:
    """The tenants with their quota overrides applied (an override that no longer validates
    against ``Quotas`` is ignored, the file's value stands)."""
    out: dict[str, Tenant] = {}
    for t in tenants:
        fields = overrides.get(t.id)
        if fields:
            try:
                quotas = Quotas.model_validate({**t.quotas.model_dump(), **fields})
                t = t.model_copy(update={"quotas": quotas})
            except ValidationError as e:
                log.warning("quota overrides of tenant %r ignored: %s", t.id, e)
        out[t.id] = t
    return out


def key_index(tenants: dict[str, Tenant], keys: Iterable[RuntimeKey]) -> KeyIndex:
    """Key id -> (hash, tenant) of every usable key: the file's not revoked, plus those added at
    run time and not revoked (of a tenant still in the file)."""
    keys = list(keys)
    revoked = {k.id for k in keys if k.revoked_at is not None}
    index: KeyIndex = {}
    for t in tenants.values():
        for k in t.api_keys:
            if k.id not in revoked:
                index.setdefault(k.id, []).append((k.hash, t))
    for rk in keys:
        if rk.revoked_at is None and rk.tenant in tenants:
            index.setdefault(rk.id, []).append((rk.hash, tenants[rk.tenant]))
    return index


class QuotaPatch(BaseModel):
    """Quota fields to change; each within the bounds of the tenants file's ``quotas``."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent_jobs: int | None = Field(default=None, description="Running jobs cap.")
    requests_per_minute: int | None = Field(default=None, description="Rate limit of /v1 calls.")
    max_queued_jobs: int | None = Field(default=None, description="Queued jobs cap.")
    max_stored_bytes: int | None = Field(default=None, description="Stored input bytes cap.")
    max_stored_files: int | None = Field(default=None, description="Stored input files cap.")
    uploads_per_minute: int | None = Field(default=None, description="Upload rate limit.")

    def changes(self) -> dict[str, int]:
        return self.model_dump(exclude_none=True)


# -- the scheduler's side ------------------------------------------------------------------------
class KeyRegistry:
    """Run-time keys and quota overrides: the job store first, then the cached table whose
    version the gateways compare. The version starts from the clock, so a restarted scheduler
    never answers a version a gateway already holds with other contents."""

    def __init__(
        self, store: KeyStore, tenants: Iterable[Tenant], clock: Callable[[], float] = time.time
    ):
        self.store = store
        self.base = {t.id: t for t in tenants}
        self.clock = clock
        self.version = time.time_ns()
        self.table = self._load()

    def _load(self) -> KeyTable:
        return KeyTable(self.version, tuple(self.store.api_keys()), self.store.tenant_quotas())

    def _changed(self) -> None:
        self.version += 1
        self.table = self._load()

    def since(self, known: int | None) -> KeyTable | None:
        """The table, or None when ``known`` is its version."""
        return None if known == self.table.version else self.table

    def tenants(self) -> dict[str, Tenant]:
        """The file's tenants with the stored quota overrides."""
        return with_quotas(self.base.values(), self.table.quotas)

    def _file_key(self, key_id: str) -> RuntimeKey | None:
        for t in self.base.values():
            for k in t.api_keys:
                if k.id == key_id:
                    return RuntimeKey(k.id, t.id, k.hash, self.clock(), None, k.description)
        return None

    def _unknown_tenant(self, tenant: str) -> AdminError | None:
        if tenant in self.base:
            return None
        return AdminError(
            404,
            "not_found",
            "tenant",
            f"no tenant {tenant!r} in the tenants file (tenants are added there, not at run time)",
        )

    def add(self, key: RuntimeKey) -> RuntimeKey | AdminError:
        if (err := self._unknown_tenant(key.tenant)) is not None:
            return err
        taken = AdminError(409, "conflict", "key_id", f"key id {key.id} is already used")
        if self._file_key(key.id) is not None or not self.store.add_api_key(key):
            return taken
        self._changed()
        return key

    def revoke(self, key_id: str) -> RuntimeKey | AdminError:
        now = self.clock()
        if not self.store.revoke_api_key(key_id, now):
            file_key = self._file_key(key_id)
            if file_key is None:
                return AdminError(404, "not_found", "key_id", f"no key {key_id!r}")
            self.store.add_api_key(
                RuntimeKey(file_key.id, file_key.tenant, file_key.hash, now, now, "tenants file")
            )
        self._changed()
        return next(k for k in self.table.keys if k.id == key_id)

    def set_quotas(self, tenant: str, changes: dict[str, int]) -> dict[str, Any] | AdminError:
        """Merge ``changes`` into the tenant's overrides; the effective quotas and overrides."""
        if (err := self._unknown_tenant(tenant)) is not None:
            return err
        if not changes:
            return AdminError(422, "invalid_request", "quotas", "names no quota field to change")
        overrides = {**self.table.quotas.get(tenant, {}), **changes}
        try:
            Quotas.model_validate({**self.base[tenant].quotas.model_dump(), **overrides})
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "quotas"
            return AdminError(422, "invalid_request", f"quotas.{field}", first["msg"])
        self.store.set_tenant_quotas(tenant, overrides, self.clock())
        self._changed()
        quotas = self.tenants()[tenant].quotas.model_dump()
        return {"tenant": tenant, "quotas": quotas, "overrides": overrides}


# -- the gateway's side --------------------------------------------------------------------------
class KeyRefresher:
    """Asks the scheduler for the key table at most every ``interval_s`` (one call per replica,
    none per request) and applies it when its version changed. ``tick`` is one check (tests
    drive it with a fake clock); ``start`` runs checks in the background on the running loop."""

    def __init__(
        self,
        fetch: Callable[[int | None], Awaitable[KeyTable | None]],
        apply: Callable[[KeyTable], None],
        interval_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fetch, self.apply, self.interval_s, self.clock = fetch, apply, interval_s, clock
        self.version: int | None = None
        self.checked_at = -float("inf")
        self._task: asyncio.Task[None] | None = None

    async def tick(self, force: bool = False) -> bool:
        """One check unless the last was under ``interval_s`` ago; True when applied."""
        now = self.clock()
        if not force and now - self.checked_at < self.interval_s:
            return False
        self.checked_at = now
        table = await self.fetch(self.version)
        if table is None:
            return False
        self.apply(table)
        self.version = table.version
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as e:  # scheduler restarting: keep the last table, ask again
                log.debug("key table refresh failed: %s", e)
            left = self.checked_at + self.interval_s - self.clock()
            await asyncio.sleep(max(0.05, left))

    def start(self) -> bool:
        """Run in the background when a loop is running here (a Serve replica); else False."""
        if self._task is not None:
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._task = loop.create_task(self.run())
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class KeyScheduler(Protocol):
    """The scheduler calls the admin routes make (``intake.service.SchedulerClient``)."""

    async def add_key(self, key: RuntimeKey) -> RuntimeKey | AdminError: ...

    async def revoke_key(self, key_id: str) -> RuntimeKey | AdminError: ...

    async def set_quotas(self, tenant: str, changes: dict[str, int]) -> dict | AdminError: ...


def _check(out: Any) -> Any:
    if isinstance(out, AdminError):
        raise ApiError(
            out.status,
            out.type,
            f"{out.field}: {out.message}",
            [{"field": out.field, "message": out.message, "limit": None}],
        )
    return out


def _file_tenant(tenants: dict[str, Tenant], tenant: str) -> None:
    if tenant not in tenants:
        message = f"no tenant {tenant!r} in the tenants file (no run-time tenant creation)"
        raise ApiError(
            404, "not_found", message, [{"field": "tenant", "message": message, "limit": None}]
        )


async def admin_add_key(
    call: Callable[[Awaitable[Any]], Awaitable[Any]],
    scheduler: KeyScheduler,
    tenants: dict[str, Tenant],
    tenant: str,
    description: str,
) -> dict[str, Any]:
    """A new key of ``tenant``: the scheduler stores its hash; the plaintext is answered once."""
    _file_tenant(tenants, tenant)
    key_id, key, record = new_api_key(description)
    row = RuntimeKey(key_id, tenant, record.hash, time.time(), None, description)
    stored: RuntimeKey = _check(await call(scheduler.add_key(row)))
    return {
        "id": stored.id,
        "key": key,
        "tenant": tenant,
        "created_at": stored.created_at,
        "description": description,
    }


async def admin_revoke_key(
    call: Callable[[Awaitable[Any]], Awaitable[Any]], scheduler: KeyScheduler, key_id: str
) -> RuntimeKey:
    return _check(await call(scheduler.revoke_key(key_id)))


async def admin_set_quotas(
    call: Callable[[Awaitable[Any]], Awaitable[Any]],
    scheduler: KeyScheduler,
    tenants: dict[str, Tenant],
    tenant: str,
    patch: QuotaPatch,
) -> dict[str, Any]:
    _file_tenant(tenants, tenant)
    return _check(await call(scheduler.set_quotas(tenant, patch.changes())))
