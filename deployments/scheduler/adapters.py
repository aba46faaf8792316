"""The scheduler's LoRA adapter registry: which adapters exist, for which model, and whether a
request may name them.

Where it sits: the scheduler checks a submit's adapters here before admitting it (422 naming
``loras[i].id``), resolves them to their sources when it dispatches a batch, and serves the admin
adapter routes through it. Adapters come from the catalog (checked once the workers are up) and
from run-time registration (kept in the job store). Checking an adapter against its base model is
the worker's job; the registry receives that call as ``check``. An ``https://`` source (``http://``
to an allowed host) is fetched, checked as safetensors and stored by content hash
(``intake/adapter_sources.py``); the record keeps the URL pinned to that content
(``<url>#sha256=<hex>``) and workers are given the stored copy (``location``). No Ray here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from genmedia.deployments.intake.adapter_sources import (
    AdapterSources,
    is_url_source,
    split_pin,
)
from genmedia.deployments.intake.inputs import InputError
from genmedia.deployments.protocol import (
    AdapterCheck,
    AdapterDeleted,
    AdapterError,
    AdapterRecord,
    Rejection,
)
from genmedia.deployments.store.jobs import JobStore
from genmedia.deployments.store.storage import StorageError
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
        sources: AdapterSources | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.check = check
        self.clock = clock
        self._sources = sources  # URL sources; built from the catalog on first use
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
        """An adapter's source as the registry keeps it: S3, tiny and URL sources as given,
        files resolved against the catalog's folder."""
        if source.startswith(("s3://", "tiny://")) or is_url_source(source):
            return source
        return str(self.catalog.resolve_path(source.removeprefix("file://")))

    @property
    def sources(self) -> AdapterSources:
        """Fetches and stores URL sources (storage and fetcher of the catalog's settings)."""
        if self._sources is None:
            from genmedia.deployments.intake.fetch import UrlFetcher
            from genmedia.deployments.store.storage import make_storage

            server = self.catalog.server
            inputs = server.inputs
            fetcher = UrlFetcher(inputs, server.max_body_bytes) if inputs.allow_urls else None
            storage = make_storage(server.storage, self.catalog.resolve_path)
            self._sources = AdapterSources(self.catalog, storage, fetcher)
        return self._sources

    def location(self, source: str) -> str | None:
        """Where workers read an adapter: the stored copy of a URL source (None before it is
        fetched), any other source as kept."""
        return self.sources.location(source) if is_url_source(source) else source

    async def _fetch(self, source: str) -> str:
        """A URL source pinned to its stored content (fetched unless stored); InputError."""
        return (await self.sources.resolve(source)).source

    async def check_catalog_adapters(self) -> None:
        """Check every catalog adapter against its base model (once the workers are up)."""
        for aid, record in list(self.by_id.items()):
            if record.origin != "catalog":
                continue
            try:
                if is_url_source(record.source):
                    record.source = await self._fetch(record.source)
                out = await self.check(record.base_model, str(self.location(record.source)))
            except InputError as e:  # the URL could not be fetched or is no safetensors file
                out = AdapterCheck(error=f"source: {e}")
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
        if is_url_source(source):
            try:
                source = await self._fetch(source)
            except InputError as e:
                kind = "payload_too_large" if e.status == 413 else "invalid_adapter"
                return AdapterError(e.status, kind, "source", str(e))
            except StorageError as e:
                return AdapterError(503, "unavailable", "source", f"not stored: {e}")
        try:
            out = await self.check(base, str(self.location(source)))
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
            elif is_url_source(record.source) and split_pin(record.source)[1] is None:
                field = f"loras[{i}].id"
                return Rejection(
                    503,
                    "adapter_pending",
                    f"{field}: adapter {aid!r} is still being fetched from its URL; retry later",
                    5.0,
                    field=field,
                )
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
            location = self.location(record.source)
            if location is None:
                raise LookupError(f"adapter {aid!r} has not been fetched from its URL yet")
            uses.append(AdapterUse(aid, scale, location))
        return uses
