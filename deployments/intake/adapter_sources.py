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
  refused. An unpinned URL fetched before (its ETag / Last-Modified kept under
  ``_loras/urls/``) is asked for with ``If-None-Match`` / ``If-Modified-Since``: a 304 reuses
  the stored copy, anything else is downloaded and checked again.

Errors are ``InputError`` naming the field (``source``), the rule and the limit. No Ray imports.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors import safe_open

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.fetch import FetchCap, Fetched, FetchLimit, UrlFetcher
from genmedia.deployments.intake.inputs import InputError
from genmedia.deployments.store.storage import (
    LocalDirStorage,
    S3BucketStorage,
    Storage,
    StorageError,
    StorageFull,
)
from genmedia.models.catalog import Catalog, LoraEntry

logger = logging.getLogger(__name__)

ADAPTER_PREFIX = "_loras/"
URL_INDEX = f"{ADAPTER_PREFIX}urls/"
JSON = "application/json"
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
    """The storage key of an adapter file with this SHA-256 (64 lowercase hex digits)."""
    if len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError(f"not a SHA-256 hex digest: {digest[:80]!r}")
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
class KnownUrl:
    """The last fetch of an adapter URL (kept under ``_loras/urls/``): its content and the
    validators its server sent, for a conditional GET next time."""

    url: str
    sha256: str
    etag: str | None = None
    last_modified: str | None = None

    def validators(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out


def url_index_key(url: str) -> str:
    """Where the last fetch of ``url`` is remembered."""
    return f"{URL_INDEX}{hashlib.sha256(url.encode()).hexdigest()}.json"


@dataclass(frozen=True)
class ResolvedAdapter:
    """A URL source kept in storage."""

    source: str  # ``<url>#sha256=<hex>``: what the registry records (admins see it)
    location: str  # where workers read it (local path or ``s3://``)
    sha256: str
    fetched: bool  # False: already stored (the pinned content, or a 304 to the validators)


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
        content is already stored, or the server answers 304 to the validators of the last
        fetch of the same URL."""
        url, pin = split_pin(source)
        if pin is not None and await asyncio.to_thread(self._stored, pin):
            return self._resolved(url, pin, fetched=False)
        if self.fetcher is None:
            raise InputError(field, "URL sources are turned off here (server.inputs.allow_urls)")
        known = None if pin is not None else await asyncio.to_thread(self._known, url)
        with tempfile.TemporaryDirectory(prefix="genmedia-lora-") as tmp:
            path = Path(tmp) / "adapter.safetensors"
            digest, got = await self._download(url, field, path, known)
            if got.status == 304 and known is not None:
                return self._resolved(url, known.sha256, fetched=False)
            if pin is not None and digest != pin:
                raise InputError(
                    field,
                    f"the URL's body has SHA-256 {digest}, not the pinned {pin}",
                    "sha256",
                )
            await asyncio.to_thread(self._keep, path, digest, field)
            await asyncio.to_thread(self._remember, url, digest, got)
        return self._resolved(url, digest, fetched=True)

    async def _download(
        self, url: str, field: str, path: Path, known: KnownUrl | None
    ) -> tuple[str, Fetched]:
        """Stream ``url`` into ``path`` (conditionally when it was fetched before); its
        SHA-256 (hex) and what the fetch got."""
        assert self.fetcher is not None
        h = hashlib.sha256()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:

            def sink(chunk: bytes) -> None:
                h.update(chunk)
                out.write(chunk)

            validators = known.validators() if known is not None else None
            got = await self.fetcher.fetch_to(url, field, sink, self.cap, self.deadline, validators)
        return h.hexdigest(), got

    def _known(self, url: str) -> KnownUrl | None:
        """The last fetch of ``url`` whose content is still stored, if its server gave
        validators (ETag, Last-Modified)."""
        try:
            data = self.storage.get(url_index_key(url))
            known = KnownUrl(**json.loads(data)) if data else None
        except (StorageError, ValueError, TypeError):
            return None
        if known is None or known.url != url or not self._stored(known.sha256):
            return None
        return known

    def _remember(self, url: str, digest: str, got: Fetched) -> None:
        """Keep the validators of a fetch for the next one of the same URL (best effort)."""
        if not (got.etag or got.last_modified):
            return
        known = KnownUrl(url, digest, got.etag, got.last_modified)
        try:
            self.storage.put(url_index_key(url), json.dumps(asdict(known)).encode(), JSON)
        except StorageError as e:
            logger.warning("could not keep the validators of an adapter URL: %s", e)

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
