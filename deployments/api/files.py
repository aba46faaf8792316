"""``/v1/files``: input images the caller uploads, and the outputs (and sidecars) it reads back.

An upload is rate-limited, checked (type, pixels), written anew without metadata (a JPEG stays
JPEG, anything else becomes PNG) and stored under the caller's tenant within its storage quota by
``GatewayService`` (``intake/storage_guard.py``);
a read maps the path to a storage key of the caller's own (another tenant's file answers 404, as
a missing one does) and answers the bytes. A read with ``expires`` and ``sig`` (the signed URL
a result lists on local storage, ``store/storage.py``) needs no API key: the signature is
checked instead (403 when it is tampered with or expired) and the read is charged to the
tenant the path belongs to.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials

from genmedia.deployments.api.deps import BaseUrl, Caller, Service, bearer, get_caller
from genmedia.deployments.api.errors import AUTH, error_responses
from genmedia.deployments.api.schemas import Upload
from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.inputs import UPLOAD_TYPES
from genmedia.deployments.store.storage import SignatureError, safe_key
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
                403: "invalid_signature: a signed URL whose signature does not match its "
                "path, or that has expired, or signed URLs are not served here.",
                404: "file_not_found: no such file of the caller's tenant.",
            },
        ),
    },
)
async def get_file(
    path: Annotated[str, Path(description="The output's path, as the result lists it.")],
    request: Request,
    response: Response,
    service: Service,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    expires: Annotated[
        str | None, Query(description="Signed URL: unix time it expires (no API key needed).")
    ] = None,
    sig: Annotated[str | None, Query(description="Signed URL: its HMAC-SHA256 signature.")] = None,
) -> Response:
    if expires is not None or sig is not None:
        key = _signed_key(service, path, expires, sig, request, response)
    else:
        caller = await get_caller(request, response, service, _credentials)
        key = service.file_key(caller, path)
    try:
        data = await asyncio.to_thread(service.storage.get, key)
    except ValueError:
        data = None
    if data is None:
        raise ApiError(404, "file_not_found", f"no file {path!r}")
    suffix = "." + key.rsplit(".", 1)[-1] if "." in key else ""
    return Response(data, media_type=CONTENT_TYPES.get(suffix, "application/octet-stream"))


def _signed_key(
    service: Service,
    path: str,
    expires: str | None,
    sig: str | None,
    request: Request,
    response: Response,
) -> str:
    """The storage key of a signed URL (403 naming what is wrong), the read charged to the
    tenant the path belongs to."""
    signer = getattr(service.storage, "signer", None)
    if signer is None:
        raise ApiError(403, "invalid_signature", "signed URLs are not served by this storage")
    try:
        key = safe_key(path)
        signer.verify(key, expires, sig)
    except SignatureError as e:
        raise ApiError(
            403,
            "invalid_signature",
            f"{e} ({e.reason}); ask for the result again for a fresh URL",
            [
                {
                    "field": "sig" if e.reason == "bad_signature" else "expires",
                    "message": str(e),
                    "limit": None,
                }
            ],
        ) from None
    except ValueError as e:
        raise ApiError(400, "invalid_path", str(e)) from None
    tenant = service.auth.tenants.get(key.split("/", 1)[0])
    if tenant is not None:
        headers = service.guard.charge(tenant, request.method)
        request.state.ratelimit_headers = headers
        response.headers.update(headers)
    return key
