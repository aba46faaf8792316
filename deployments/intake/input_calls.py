"""A submit's input images at the gateway (a mixin of ``intake/service.py``'s
``GatewayService``): each given inline, as a stored file or as a URL (fetched through the
SSRF-checked client, ``intake/fetch.py``), decoded and checked off the event loop in the
request's lane (``intake/inputs.py``), stored within the tenant's storage quota, and removed
again when the request is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.fetch import UrlFetcher, is_fetch_url
from genmedia.deployments.intake.inputs import (
    InputError,
    InputImage,
    check_mask,
    fetched_input,
    load_input,
)
from genmedia.deployments.intake.storage_guard import StorageGuard
from genmedia.deployments.protocol import PriorityClass
from genmedia.deployments.store.storage import Storage
from genmedia.deployments.tenants.schema import Tenant
from genmedia.models.catalog import ModelEntry
from genmedia.models.params import GenerateRequest, resolve_task


class InputCalls:
    """Input images of a submit; the state is the ``GatewayService``'s."""

    storage: Storage
    storage_guard: StorageGuard
    fetcher: UrlFetcher | None
    off_loop: Callable[..., Awaitable[Any]]  # ``GatewayService.off_loop``: a lane's threads

    async def _inputs(
        self,
        tenant: Tenant,
        entry: ModelEntry,
        req: GenerateRequest,
        request_id: str,
        lane: PriorityClass,
    ) -> tuple[dict[str, str], tuple[int, int] | None]:
        """Check the request's input images and store the inline ones (written anew, within
        the tenant's storage quota); returns their storage keys (what the worker reads) and the
        image's size (the output's size)."""
        if req.image is None and req.mask_image is None:
            return {}, None
        if resolve_task(entry, req)[1]:
            return {}, None  # the task itself is refused: resolve_request names why
        p = entry.parameters
        max_pixels = p.width.max * p.height.max

        def load(value: str, field: str) -> tuple[InputImage, str]:
            img, key = load_input(
                value,
                field,
                tenant=tenant.id,
                read=self.storage.get,
                max_pixels=max_pixels,
                clean=True,
            )
            if key is None:
                key = f"{tenant.id}/inputs/{request_id}/{field}"
                self.storage_guard.put(
                    tenant, key, img.data, "application/octet-stream", upload=False
                )
                stored.append(key)
            return img, key

        def load_fetched(data: bytes, field: str) -> tuple[InputImage, str]:
            img, key = fetched_input(data, field, tenant=tenant.id, max_pixels=max_pixels)
            if self.storage.get(key) is None:  # stored once per content (kept: other jobs)
                self.storage_guard.put(
                    tenant, key, img.data, "application/octet-stream", upload=False
                )
            return img, key

        async def obtain(value: str, field: str) -> tuple[InputImage, str]:
            if not is_fetch_url(value):
                return await self.off_loop(lane, load, value, field)
            if self.fetcher is None:
                raise InputError(field, "URL inputs are turned off here (server.inputs.allow_urls)")
            data = await self.fetcher.fetch(value, field)  # on the loop: network, no thread
            return await self.off_loop(lane, load_fetched, data, field)

        keys: dict[str, str] = {}
        stored: list[str] = []
        try:
            image = mask = None
            if req.image is not None:
                image, keys["image"] = await obtain(req.image, "image")
            if req.mask_image is not None:
                mask, keys["mask"] = await obtain(req.mask_image, "mask_image")
            if image is not None and mask is not None:
                check_mask(mask, image)
        except BaseException as e:
            await asyncio.to_thread(self.storage_guard.discard, tenant.id, stored)
            if not isinstance(e, InputError):
                raise
            raise ApiError(
                e.status,
                "invalid_input" if e.status == 422 else "file_not_found",
                f"{e.field}: {e}",
                [{"field": e.field, "message": str(e), "limit": e.limit}],
            ) from None
        return keys, (image.width, image.height) if image is not None else None
