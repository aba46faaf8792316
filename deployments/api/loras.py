"""LoRA adapters: ``/v1/loras`` lists those of the caller's models (where each is read from, and
why a check failed, for admin tenants only); ``/v1/admin/loras`` registers and removes adapters
at run time (admin tenants only). An ``https://`` source (``http://`` to a host in
``server.inputs.allowed_http_hosts``) is fetched by the gateway under the SSRF rules, checked as
safetensors and stored once by content hash (``intake/adapter_sources.py``); the adapter's
``source`` then reads ``<url>#sha256=<hex>``.

The registry lives in the scheduler: ``GatewayService`` forwards each call and turns the
scheduler's refusal into an error answer naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from genmedia.deployments.api.deps import Caller, Service
from genmedia.deployments.api.errors import AUTH, BODY, UNAVAILABLE, error_responses
from genmedia.deployments.api.schemas import Adapter, AdapterDeleted, AdapterList
from genmedia.models.catalog import LoraEntry

router = APIRouter(tags=["loras"])

_ADMIN = {403: "forbidden: the caller's tenant is not an admin tenant."}


@router.get(
    "/v1/loras",
    summary="LoRA adapters of the models the caller uses (sources: admin tenants only)",
    response_model=AdapterList,
    response_model_exclude_unset=True,
    responses=error_responses(AUTH, UNAVAILABLE),
)
async def list_loras(service: Service, caller: Caller) -> dict[str, Any]:
    return await service.adapters(caller)


@router.post(
    "/v1/admin/loras",
    status_code=201,
    summary="Register a LoRA adapter (admin tenants); checked against its base model first",
    description="The body's `source` is a local path, `s3://...`, `tiny://...` or an "
    "`https://` URL (`http://` only to hosts in `server.inputs.allowed_http_hosts`). A URL is "
    "fetched under the SSRF rules (public addresses only, each redirect checked), within "
    "`server.inputs.adapter_max_bytes` and `server.inputs.adapter_fetch_timeout_s`; its body "
    "must be a safetensors file. It is stored once by content hash and the adapter's `source` "
    "reads `<url>#sha256=<hex>` (a `#sha256=` suffix sent in the body pins the content: a "
    "stored copy is not fetched again, a different body is refused).",
    response_model=Adapter,
    response_model_exclude_unset=True,
    responses=error_responses(
        AUTH,
        BODY,
        _ADMIN,
        {
            409: "conflict: an adapter with this id is defined in the catalog.",
            413: "payload_too_large: the source URL's body is over "
            "server.inputs.adapter_max_bytes (the error names the limit).",
            422: "invalid_request: a field breaks its type or bound, or the base model is "
            "unknown or takes no LoRA; invalid_adapter: the source URL is refused (address, "
            "scheme, redirects), cannot be fetched in time, is not a safetensors file, or the "
            "file does not fit the base model.",
            503: "unavailable: the scheduler, or a worker of the base model, cannot be "
            "reached now.",
            507: "insufficient_storage: the fetched adapter could not be stored (disk full).",
        },
    ),
)
async def register_lora(body: LoraEntry, service: Service, caller: Caller) -> dict[str, Any]:
    return await service.register_adapter(caller, body)


@router.delete(
    "/v1/admin/loras/{adapter_id}",
    summary="Remove a LoRA adapter registered at run time (admin tenants)",
    response_model=AdapterDeleted,
    response_model_exclude_unset=True,
    responses=error_responses(
        AUTH,
        _ADMIN,
        UNAVAILABLE,
        {
            404: "not_found: no adapter with this id.",
            409: "conflict: the adapter is defined in the catalog.",
        },
    ),
)
async def delete_lora(
    adapter_id: Annotated[str, Path(description="The adapter's id.")],
    service: Service,
    caller: Caller,
) -> dict[str, Any]:
    return await service.delete_adapter(caller, adapter_id)
