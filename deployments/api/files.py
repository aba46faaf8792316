"""``/v1/files``: input images the caller uploads, and the outputs (and sidecars) it reads back.

An upload is rate-limited, checked (type, pixels), written anew without metadata (a JPEG stays
JPEG, anything else becomes PNG) and stored under the caller's tenant within its storage quota by
``GatewayService`` (``intake/storage_guard.py``);
a read maps the path to a storage key of the caller's own (another tenant's file answers 404, as
a missing one does) and answers the bytes.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from genmedia.deployments.api.deps import BaseUrl, Caller, Service
from genmedia.deployments.api.errors import AUTH, error_responses
from genmedia.deployments.api.schemas import Upload
from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.inputs import UPLOAD_TYPES
from genmedia.models import media

router = APIRouter(prefix="/v1/files", tags=["files"])

CONTENT_TYPES = {f".{ext}": media.content_type(fmt) for fmt, ext in media.EXTENSIONS.items()}
CONTENT_TYPES.update({".json": "application/json", ".jpeg": "image/jpeg"})

_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "",
    status_code=201,
    summary="Upload an input image (raw body, Content-Type image/png, image/jpeg or "
    "image/webp); use its id as 'image' or 'mask_image'",
    description="The image is stored written anew, without metadata (text, EXIF, XMP, ICC): "
    "a JPEG as JPEG, anything else as PNG; the answer gives the stored type and size. It "
    "expires after the server's retention.uploads_hours.",
    response_model=Upload,
    response_model_exclude_unset=True,
    responses=error_responses(
        AUTH,
        {
            413: "payload_too_large: the body is over the gateway's limit.",
            415: "unsupported_media_type: Content-Type is not an accepted image type.",
            422: "invalid_input: the body is empty, not an image, or over the pixel limit.",
            429: "rate_limited: over quotas.uploads_per_minute (Retry-After); "
            "storage_quota_exceeded: the tenant's stored inputs would exceed "
            "quotas.max_stored_bytes or quotas.max_stored_files (fields[0].field names it).",
            503: "storage_unavailable: the storage could not be written (Retry-After).",
            507: "insufficient_storage: the server's storage is full; nothing was stored.",
        },
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {ctype: _BINARY for ctype in UPLOAD_TYPES},
        }
    },
)
async def upload_file(
    request: Request, service: Service, base_url: BaseUrl, caller: Caller
) -> dict[str, Any]:
    data = await request.body()
    return await service.upload(caller, data, request.headers.get("content-type"), base_url)


@router.get(
    "/{path:path}",
    summary="A stored output or its sidecar",
    response_class=Response,
    responses={
        200: {
            "description": "The file's bytes, with its content type.",
            "content": {ctype: _BINARY for ctype in sorted(set(CONTENT_TYPES.values()))},
        },
        **error_responses(
            AUTH,
            {
                400: "invalid_path: the path is not a valid storage key.",
                404: "file_not_found: no such file of the caller's tenant.",
            },
        ),
    },
)
async def get_file(
    path: Annotated[str, Path(description="The output's path, as the result lists it.")],
    service: Service,
    caller: Caller,
) -> Response:
    key = service.file_key(caller, path)
    try:
        data = await asyncio.to_thread(service.storage.get, key)
    except ValueError:
        data = None
    if data is None:
        raise ApiError(404, "file_not_found", f"no file {path!r}")
    suffix = "." + key.rsplit(".", 1)[-1] if "." in key else ""
    return Response(data, media_type=CONTENT_TYPES.get(suffix, "application/octet-stream"))
