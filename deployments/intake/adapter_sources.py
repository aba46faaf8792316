"""LoRA adapter sources given as ``https://`` URLs (``http://`` to hosts the operator allows):
fetched once, checked as safetensors, kept in the server's storage by content hash.

On an adapter's way: ``POST /v1/admin/loras`` reaches ``GatewayService.register_adapter``, which
calls ``AdapterSources.resolve`` for a URL source before it asks the scheduler; a catalog
``loras`` entry with a URL source is resolved by the scheduler's ``AdapterRegistry`` when it checks
the catalog's adapters at start. ``resolve``:

- fetches through ``UrlFetcher.fetch_to`` (``fetch.py``: the webhook SSRF rules, the checked
  address pinned, every redirect hop checked), streaming into a temporary file while hashing,
  within ``server.inputs.adapter_max_bytes`` (413; ``server.max_adapter_bytes`` too, the
  workers' limit) and ``server.inputs.adapter_fetch_timeout_s`` (422);
- checks the file's header with the ``safetensors`` library (nothing is unpickled or loaded);
- stores it once under ``_loras/sha256-<hex>.safetensors`` (no tenant id starts with ``_``, so
  no tenant reads it through ``/v1/files`` and retention never takes it for a tenant's files);
- answers the source pinned to its content, ``<url>#sha256=<hex>``: the registry keeps that as
  the adapter's source (admins see the URL it came from) and gives workers the stored location
  (a local path, or ``s3://`` for S3 storage). A pinned source whose content is already stored
  is not downloaded again (the gateway's fetch is not repeated by the scheduler, a registered
  adapter needs no fetch after a restart); a fetched body whose digest differs from the pin is
  refused.

Errors are ``InputError`` naming the field (``source``), the rule and the limit. No Ray imports.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.fetch import FetchCap, FetchLimit, UrlFetcher
from genmedia.deployments.intake.inputs import InputError
from genmedia.deployments.store.storage import (
    LocalDirStorage,
    S3BucketStorage,
    Storage,
    StorageError,
    StorageFull,
)
from genmedia.models.catalog import Catalog, LoraEntry

ADAPTER_PREFIX = "_loras/"
PIN = "#sha256="
CONTENT_TYPE = "application/octet-stream"


def is_url_source(source: str) -> bool:
    """An adapter source the server fetches: an http(s) URL."""
    return source.strip()[:8].lower().startswith(("https://", "http://"))


def split_pin(source: str) -> tuple[str, str | None]:
    """``(url, sha256 hex or None)`` of a URL source, its ``#sha256=`` pin taken off."""
    url, sep, digest = source.strip().partition(PIN)
    return url, (digest.lower() if sep else None)


def adapter_key(digest: str) -> str:
    """The storage key of an adapter file with this SHA-256 (hex)."""
    return f"{ADAPTER_PREFIX}sha256-{digest}.safetensors"


def stored_location(storage: Storage, key: str) -> str:
    """Where a worker reads a stored file: its absolute path (local storage, same node) or
    ``s3://bucket/<prefix>/<key>``."""
    if isinstance(storage, S3BucketStorage):
        root = storage.cfg.prefix.strip("/")
        return f"s3://{storage.cfg.bucket}/{root + '/' if root else ''}{key}"
    if isinstance(storage, LocalDirStorage):
        return str((storage.root / key).resolve())
    raise TypeError(f"adapters cannot be kept in {type(storage).__name__}")


def check_safetensors(path: Path, field: str) -> int:
    """The tensor count of a safetensors file (its header only); InputError otherwise."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            return len(list(f.keys()))
    except Exception as e:  # safetensors raises its own error types for bad files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            field, f"the URL's body is not a safetensors file ({first[:200]})", "safetensors"
        ) from None


@dataclass(frozen=True)
class ResolvedAdapter:
    """A URL source kept in storage."""

    source: str  # ``<url>#sha256=<hex>``: what the registry records (admins see it)
    location: str  # where workers read it (local path or ``s3://``)
    sha256: str
    fetched: bool  # False: the pinned content was already stored


class AdapterSources:
    """Resolves URL adapter sources into stored files (see the module docstring)."""

    def __init__(self, catalog: Catalog, storage: Storage, fetcher: UrlFetcher | None) -> None:
        server = catalog.server
        self.storage = storage
        self.fetcher = fetcher
        inputs = server.inputs
        if inputs.adapter_max_bytes <= server.max_adapter_bytes:
            self.cap = FetchCap(inputs.adapter_max_bytes, "server.inputs.adapter_max_bytes", 413)
        else:
            self.cap = FetchCap(server.max_adapter_bytes, "server.max_adapter_bytes", 413)
        self.deadline = FetchLimit(
            inputs.adapter_fetch_timeout_s, "server.inputs.adapter_fetch_timeout_s"
        )

    def location(self, source: str) -> str | None:
        """The stored location of a pinned URL source (no I/O); None for an unpinned one."""
        digest = split_pin(source)[1]
        return stored_location(self.storage, adapter_key(digest)) if digest else None

    def _stored(self, digest: str) -> bool:
        key = adapter_key(digest)
        return any(o.key == key for o in self.storage.list_files(ADAPTER_PREFIX))

    async def resolve(self, source: str, field: str = "source") -> ResolvedAdapter:
        """The stored copy of a URL source: fetched, checked and stored unless its pinned
        content is already stored."""
        url, pin = split_pin(source)
        if pin is not None and await asyncio.to_thread(self._stored, pin):
            return self._resolved(url, pin, fetched=False)
        if self.fetcher is None:
            raise InputError(field, "URL sources are turned off here (server.inputs.allow_urls)")
        with tempfile.TemporaryDirectory(prefix="genmedia-lora-") as tmp:
            path = Path(tmp) / "adapter.safetensors"
            digest = await self._download(url, field, path)
            if pin is not None and digest != pin:
                raise InputError(
                    field,
                    f"the URL's body has SHA-256 {digest}, not the pinned {pin}",
                    "sha256",
                )
            await asyncio.to_thread(self._keep, path, digest, field)
        return self._resolved(url, digest, fetched=True)

    async def _download(self, url: str, field: str, path: Path) -> str:
        """Stream ``url`` into ``path``; its SHA-256 (hex)."""
        assert self.fetcher is not None
        h = hashlib.sha256()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:

            def sink(chunk: bytes) -> None:
                h.update(chunk)
                out.write(chunk)

            await self.fetcher.fetch_to(url, field, sink, self.cap, self.deadline)
        return h.hexdigest()

    def _keep(self, path: Path, digest: str, field: str) -> None:
        """Check the file's header, then store it unless the same content is stored."""
        check_safetensors(path, field)
        if not self._stored(digest):
            self.storage.put(adapter_key(digest), path.read_bytes(), CONTENT_TYPE)

    def _resolved(self, url: str, digest: str, *, fetched: bool) -> ResolvedAdapter:
        location = stored_location(self.storage, adapter_key(digest))
        return ResolvedAdapter(f"{url}{PIN}{digest}", location, digest, fetched)


async def resolve_entry(sources: AdapterSources, entry: LoraEntry) -> LoraEntry:
    """An admin registration with its URL source fetched, stored and pinned (the scheduler
    then finds the stored copy and fetches nothing); ApiError naming ``source`` otherwise."""
    try:
        resolved = await sources.resolve(entry.source)
    except InputError as e:
        kind = "payload_too_large" if e.status == 413 else "invalid_adapter"
        raise ApiError(
            e.status,
            kind,
            f"source: {e}",
            [{"field": "source", "message": str(e), "limit": e.limit}],
        ) from None
    except StorageError as e:
        status = 507 if isinstance(e, StorageFull) else 503
        raise ApiError(
            status,
            "insufficient_storage" if status == 507 else "unavailable",
            f"source: the adapter could not be stored: {e}",
            [{"field": "source", "message": "not stored", "limit": None}],
        ) from None
    return entry.model_copy(update={"source": resolved.source})
