"""LoRA adapters: ``/v1/loras`` lists those of the caller's models (where each is read from, and
why a check failed, for admin tenants only); ``/v1/admin/loras`` registers and removes adapters
at run time (admin tenants only).

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
    response_model=Adapter,
    response_model_exclude_unset=True,
    responses=error_responses(
        AUTH,
        BODY,
        _ADMIN,
        {
            409: "conflict: an adapter with this id is defined in the catalog.",
            422: "invalid_request: a field breaks its type or bound, or the base model is "
            "unknown or takes no LoRA; invalid_adapter: the file does not fit the base model.",
            503: "unavailable: the scheduler, or a worker of the base model, cannot be "
            "reached now.",
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
