"""The scheduler's LoRA adapter registry: which adapters exist, for which model, and whether a
request may name them.

Where it sits: the scheduler checks a submit's adapters here before admitting it (422 naming
``loras[i].id``), resolves them to their sources when it dispatches a batch, and serves the admin
adapter routes through it. Adapters come from the catalog (checked once the workers are up) and
from run-time registration (kept in the job store). Checking an adapter against its base model is
the worker's job; the registry receives that call as ``check``. No Ray here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from genmedia.deployments.protocol import (
    AdapterCheck,
    AdapterDeleted,
    AdapterError,
    AdapterRecord,
    Rejection,
)
from genmedia.deployments.store.jobs import JobStore
from genmedia.models.catalog import Catalog, LoraEntry
from genmedia.models.params import AdapterUse
from genmedia.models.registry import lora_families

logger = logging.getLogger("ray.serve")

CheckAdapter = Callable[[str, str], Awaitable[AdapterCheck]]  # (base model, source)


class AdapterRegistry:
    """Adapters by id: the catalog's, then those registered at run time (the store's)."""

    def __init__(
        self,
        catalog: Catalog,
        store: JobStore,
        check: CheckAdapter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.check = check
        self.clock = clock
        self.by_id: dict[str, AdapterRecord] = {
            a.id: AdapterRecord(
                id=a.id,
                base_model=a.base_model,
                source=self.source(a.source),
                description=a.description,
                origin="catalog",
                status="pending",
            )
            for a in catalog.loras
        }
        self.by_id.update(store.adapters())

    def source(self, source: str) -> str:
        """Where workers read an adapter: S3 and tiny sources as given, files resolved against
        the catalog's folder."""
        if source.startswith(("s3://", "tiny://")):
            return source
        return str(self.catalog.resolve_path(source.removeprefix("file://")))

    async def check_catalog_adapters(self) -> None:
        """Check every catalog adapter against its base model (once the workers are up)."""
        for aid, record in list(self.by_id.items()):
            if record.origin != "catalog":
                continue
            try:
                out = await self.check(record.base_model, record.source)
            except Exception as e:  # the worker is gone: requests naming it fail at dispatch
                out = AdapterCheck(error=f"{type(e).__name__}: {e}".splitlines()[0])
            if out.info is None:
                logger.error("LoRA adapter %s is unusable: %s", aid, out.error)
                record.status, record.error = "failed", out.error
            else:
                record.status, record.info = "ready", out.info

    def records(self) -> list[AdapterRecord]:
        return sorted(self.by_id.values(), key=lambda a: a.id)

    async def register(self, spec: LoraEntry) -> AdapterRecord | AdapterError:
        """Check an adapter against its base model, then keep it (store first)."""
        aid, base = spec.id, spec.base_model
        entry = self.catalog.model(base)
        if entry is None:
            return AdapterError(422, "invalid_request", "base_model", f"no model {base!r}")
        if entry.family not in lora_families():
            return AdapterError(
                422, "invalid_request", "base_model", f"the {entry.family} family takes no LoRA"
            )
        existing = self.by_id.get(aid)
        if existing is not None and existing.origin == "catalog":
            return AdapterError(409, "conflict", "id", f"adapter {aid!r} is defined in the catalog")
        source = self.source(spec.source)
        try:
            out = await self.check(base, source)
        except Exception as e:
            return AdapterError(503, "unavailable", "base_model", f"{type(e).__name__}: {e}")
        if out.info is None:
            return AdapterError(422, "invalid_adapter", "source", str(out.error))
        record = AdapterRecord(
            id=aid,
            base_model=base,
            source=source,
            description=spec.description,
            origin="api",
            status="ready",
            registered_at=self.clock(),
            info=out.info,
        )
        self.store.put_adapter(record)
        self.by_id[aid] = record
        return record

    def delete(self, adapter_id: str) -> AdapterDeleted | AdapterError:
        record = self.by_id.get(adapter_id)
        if record is None:
            return AdapterError(404, "not_found", "adapter_id", f"no adapter {adapter_id!r}")
        if record.origin == "catalog":
            return AdapterError(
                409, "conflict", "adapter_id", f"adapter {adapter_id!r} is defined in the catalog"
            )
        self.store.delete_adapter(adapter_id)
        del self.by_id[adapter_id]
        return AdapterDeleted(adapter_id)

    def rejection(self, model_id: str, adapters: tuple[tuple[str, float], ...]) -> Rejection | None:
        """422 for an adapter a request names that this model cannot use."""
        for i, (aid, _) in enumerate(adapters):
            record = self.by_id.get(aid)
            message = None
            if record is None:
                message = f"unknown adapter {aid!r} (GET /v1/loras lists them)"
            elif record.base_model != model_id:
                message = f"adapter {aid!r} is for model {record.base_model!r}, not {model_id!r}"
            elif record.status == "failed":
                message = f"adapter {aid!r} is unusable: {record.error}"
            if message:
                field = f"loras[{i}].id"
                return Rejection(422, "invalid_request", f"{field}: {message}", None, field=field)
        return None

    def uses(self, model_id: str, adapters: tuple[tuple[str, float], ...]) -> list[AdapterUse]:
        """A batch's adapters with their sources; LookupError for one removed since admission."""
        uses = []
        for aid, scale in adapters:
            record = self.by_id.get(aid)
            if record is None or record.base_model != model_id:
                raise LookupError(f"adapter {aid!r} was removed after the job was accepted")
            uses.append(AdapterUse(aid, scale, record.source))
        return uses
