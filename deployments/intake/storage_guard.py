"""Storage bounds at the gateway: what a tenant may store, how fast it may upload, and what a
full disk answers.

On a request's way: ``POST /v1/files`` (``store_upload``) and a submit with an inline image
(``GatewayService._inputs``) go through ``StorageGuard`` before a byte is written:

- uploads are rate-limited per tenant (``quotas.uploads_per_minute``, a token bucket per gateway
  replica): 429 ``rate_limited`` with Retry-After;
- a tenant's stored input files (uploads and inline images, as stored) are bounded by
  ``quotas.max_stored_bytes`` and ``quotas.max_stored_files``: 429 ``storage_quota_exceeded``
  naming the limit. It is a quota, as the queue quota is (429, not 413: the request itself is
  fine; not 507: the server has room). Usage is counted from a listing of the tenant's
  ``uploads/`` and ``inputs/`` at most every ``REFRESH_S`` seconds per replica and kept up to
  date with this replica's own writes in between, so several replicas may overshoot a little;
- a write that finds the disk full (``StorageFull``) is 507 ``insufficient_storage`` for an
  upload and 503 ``storage_full`` with Retry-After for a submit (no job is created); other
  storage failures are 503 ``storage_unavailable``;
- inline images are stored before the scheduler sees the job (its worker may read them at
  once) and deleted again when the job is refused, is an idempotent replay, or fails
  validation (``settle``). When the scheduler call itself fails they stay: the job may exist;
  the sweeper deletes inputs of missing jobs after ``retention.uploads_hours``.
No Ray imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.inputs import (
    STORED_TYPES,
    UPLOAD_TYPES,
    InputError,
    clean_image,
    new_upload_id,
    upload_key,
)
from genmedia.deployments.protocol import JobStatusView, Rejection, Submission, SubmitAccepted
from genmedia.deployments.store.storage import (
    FULL_ERRNOS,
    INPUTS,
    UPLOADS,
    Storage,
    StorageError,
    StorageFull,
)
from genmedia.deployments.tenants.ratelimit import RateLimiter, retry_after_header
from genmedia.deployments.tenants.schema import Tenant

REFRESH_S = 30.0  # a tenant's stored usage is listed again after this long
FULL_RETRY_AFTER_S = 60  # Retry-After of a submit refused on a full disk


def inline_keys(tenant: str, request_id: str, inputs: dict[str, str]) -> list[str]:
    """The keys among a job's inputs that its own request stored (not uploads it named)."""
    prefix = f"{tenant}/{INPUTS}/{request_id}/"
    return [k for k in inputs.values() if k.startswith(prefix)]


class StorageGuard:
    """Quotas, the upload rate and full-disk answers of one gateway replica. Thread-safe (the
    intake lanes call it from their threads)."""

    def __init__(self, storage: Storage, clock: Callable[[], float] = time.monotonic):
        self.storage = storage
        self.clock = clock
        self._lock = threading.Lock()
        self._usage: dict[str, tuple[int, int, float]] = {}  # tenant -> bytes, files, listed at
        self._uploads = RateLimiter({})

    # -- usage and quota ---------------------------------------------------------------------
    def usage(self, tenant_id: str) -> tuple[int, int]:
        """Bytes and files of the tenant's stored inputs (listed at most every REFRESH_S)."""
        now = self.clock()
        with self._lock:
            cached = self._usage.get(tenant_id)
        if cached is not None and now - cached[2] < REFRESH_S:
            return cached[0], cached[1]
        nbytes = files = 0
        for cls in (UPLOADS, INPUTS):
            for obj in self.storage.list_files(f"{tenant_id}/{cls}/"):
                nbytes += obj.size
                files += 1
        with self._lock:
            self._usage[tenant_id] = (nbytes, files, now)
        return nbytes, files

    def _add(self, tenant_id: str, nbytes: int, files: int) -> None:
        with self._lock:
            b, f, at = self._usage.get(tenant_id, (0, 0, -REFRESH_S))
            self._usage[tenant_id] = (max(0, b + nbytes), max(0, f + files), at)

    def reserve(self, tenant: Tenant, nbytes: int, field: str) -> None:
        """Count a file about to be stored; 429 naming the quota it would exceed."""
        used_bytes, used_files = self.usage(tenant.id)
        q = tenant.quotas
        for name, used, more, limit, unit in (
            ("max_stored_files", used_files, 1, q.max_stored_files, "files"),
            ("max_stored_bytes", used_bytes, nbytes, q.max_stored_bytes, "bytes"),
        ):
            if used + more > limit:
                message = (
                    f"storage quota exceeded: {used} {unit} stored, this {field} needs {more} "
                    f"more, quotas.{name} is {limit} (uploads and input images are deleted "
                    "when they expire: server.retention.uploads_hours)"
                )
                raise ApiError(
                    429,
                    "storage_quota_exceeded",
                    message,
                    [{"field": f"quotas.{name}", "message": message, "limit": limit}],
                )
        self._add(tenant.id, nbytes, 1)

    # -- writes ------------------------------------------------------------------------------
    def put(
        self, tenant: Tenant, key: str, data: bytes, content_type: str, *, upload: bool
    ) -> None:
        """Reserve quota and store; a full disk is 507 (upload) or 503 (submit)."""
        field = "upload" if upload else "input image"
        self.reserve(tenant, len(data), field)
        try:
            self.storage.put(key, data, content_type)
        except (StorageError, OSError) as e:
            self._add(tenant.id, -len(data), -1)
            if isinstance(e, StorageFull) or getattr(e, "errno", None) in FULL_ERRNOS:
                raise _full(upload) from e
            raise ApiError(
                503,
                "storage_unavailable",
                f"the {field} could not be stored: {type(e).__name__}",
                headers={"Retry-After": "5"},
            ) from e

    def discard(self, tenant_id: str, keys: list[str]) -> None:
        """Delete files a refused request stored (never raises: the sweeper is the backstop)."""
        sizes: dict[str, int] = {}
        for parent in {k.rsplit("/", 1)[0] + "/" for k in keys}:
            with contextlib.suppress(Exception):
                sizes.update((o.key, o.size) for o in self.storage.list_files(parent))
        for key in keys:
            with contextlib.suppress(Exception):
                if self.storage.delete(key):
                    self._add(tenant_id, -sizes.get(key, 0), -1)

    async def discard_inline(self, tenant_id: str, request_id: str, inputs: dict[str, str]) -> None:
        """Delete the inline images a request stored (not the uploads it named)."""
        keys = inline_keys(tenant_id, request_id, inputs)
        if keys:
            await asyncio.to_thread(self.discard, tenant_id, keys)

    async def settle(
        self, sub: Submission, result: SubmitAccepted | JobStatusView | Rejection
    ) -> None:
        """After the scheduler answered: keep a new job's inline inputs, delete a refused or
        replayed request's."""
        keys = inline_keys(sub.tenant, sub.job.request_id, sub.job.extra.get("inputs") or {})
        if not keys:
            return
        if isinstance(result, SubmitAccepted):
            kept = result.created and result.job.request_id == sub.job.request_id
        elif isinstance(result, JobStatusView):
            kept = result.request_id == sub.job.request_id
        else:
            kept = False
        if not kept:
            await asyncio.to_thread(self.discard, sub.tenant, keys)

    # -- uploads -----------------------------------------------------------------------------
    def take_upload_token(self, tenant: Tenant) -> None:
        """One upload of the tenant's bucket; 429 with Retry-After when it is empty."""
        rpm = tenant.quotas.uploads_per_minute
        with self._lock:
            if self._uploads.limits.get(tenant.id) != rpm:
                self._uploads.limits[tenant.id] = rpm
            wait = self._uploads.try_acquire(tenant.id, self.clock())
        if wait > 0:
            message = f"upload rate limit: quotas.uploads_per_minute is {rpm}"
            raise ApiError(
                429,
                "rate_limited",
                message,
                [{"field": "quotas.uploads_per_minute", "message": message, "limit": rpm}],
                headers={"Retry-After": retry_after_header(wait)},
            )


def _full(upload: bool) -> ApiError:
    """A full disk: 507 for an upload (nothing stored), 503 with Retry-After for a submit."""
    if upload:
        return ApiError(
            507,
            "insufficient_storage",
            "the server's storage is full; the upload was not stored",
            [{"field": "body", "message": "storage full", "limit": None}],
        )
    return ApiError(
        503,
        "storage_full",
        "the server's storage is full; the request was not accepted (no job was created)",
        [{"field": "image", "message": "storage full", "limit": None}],
        headers={"Retry-After": str(FULL_RETRY_AFTER_S)},
    )


def upload_type(content_type: str | None) -> str:
    """The upload's media type, one of UPLOAD_TYPES; 415 otherwise."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype not in UPLOAD_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be one of {', '.join(UPLOAD_TYPES)}",
            [
                {
                    "field": "Content-Type",
                    "message": "not an accepted image type",
                    "limit": list(UPLOAD_TYPES),
                }
            ],
        )
    return ctype


def store_upload(
    guard: StorageGuard, tenant: Tenant, data: bytes, ctype: str, max_pixels: int, base_url: str
) -> dict[str, Any]:
    """``POST /v1/files`` after its type was checked (blocking: run it off the event loop):
    decode, write anew without metadata, check the quota, store."""
    try:
        img, suffix = clean_image(data, "body", max_pixels)
    except InputError as e:
        raise ApiError(
            422,
            "invalid_input",
            f"body: {e}",
            [{"field": "body", "message": str(e), "limit": e.limit}],
        ) from None
    upload_id = new_upload_id()
    key = upload_key(tenant.id, upload_id, suffix)
    stored_type = STORED_TYPES[suffix]
    guard.put(tenant, key, img.data, stored_type, upload=True)
    return {
        "id": upload_id,
        "path": key,
        "url": guard.storage.url(key, base_url),
        "content_type": stored_type,
        "bytes": len(img.data),
        "width": img.width,
        "height": img.height,
    }
