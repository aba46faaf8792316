"""Keys and quotas on a running cluster (admin tenants only): add a key to a tenant of the
tenants file, revoke any key, change a tenant's quotas. No redeploy: the scheduler stores the
change in the job store and every gateway replica applies it within about a second
(``tenants/runtime.py``). Tenants themselves are added in the tenants file only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from genmedia.deployments.api.deps import Caller, Service
from genmedia.deployments.api.errors import AUTH, BODY, UNAVAILABLE, error_responses
from genmedia.deployments.tenants.runtime import QuotaPatch

router = APIRouter(tags=["admin"])

_ADMIN = {403: "forbidden: the caller's tenant is not an admin tenant."}
_TENANT = {404: "not_found: no such tenant in the tenants file."}
TenantPath = Annotated[str, Path(description="A tenant id of the tenants file.")]


class NewKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", max_length=500, description="Who or what uses the key.")


class NewKey(BaseModel):
    id: str = Field(description="The key's public id (revoke it by this id).")
    key: str = Field(description="The key itself: shown once, only its hash is stored.")
    tenant: str
    created_at: float = Field(description="Unix seconds.")
    description: str


class RevokedKey(BaseModel):
    id: str
    tenant: str
    revoked_at: float = Field(description="Unix seconds; the key is refused from then on.")


class TenantQuotas(BaseModel):
    tenant: str
    quotas: dict[str, int] = Field(description="The tenant's quotas now in force.")
    overrides: dict[str, int] = Field(description="Fields set at run time over the tenants file.")


@router.post(
    "/v1/admin/tenants/{tenant}/keys",
    status_code=201,
    summary="Add an API key to a tenant (admin tenants); the key is answered once",
    response_model=NewKey,
    responses=error_responses(AUTH, BODY, _ADMIN, _TENANT, UNAVAILABLE),
)
async def add_key(
    tenant: TenantPath, service: Service, caller: Caller, body: NewKeyBody | None = None
) -> dict[str, Any]:
    return await service.add_key(caller, tenant, body.description if body else "")


@router.delete(
    "/v1/admin/keys/{key_id}",
    summary="Revoke an API key, of the tenants file or added at run time (admin tenants)",
    response_model=RevokedKey,
    responses=error_responses(AUTH, _ADMIN, UNAVAILABLE, {404: "not_found: no such key."}),
)
async def revoke_key(
    key_id: Annotated[str, Path(description="The key's public id (8 hex).")],
    service: Service,
    caller: Caller,
) -> dict[str, Any]:
    return await service.revoke_key(caller, key_id)


@router.patch(
    "/v1/admin/tenants/{tenant}/quotas",
    summary="Change a tenant's quotas (admin tenants), within the bounds of the tenants file",
    response_model=TenantQuotas,
    responses=error_responses(AUTH, BODY, _ADMIN, _TENANT, UNAVAILABLE),
)
async def set_quotas(
    tenant: TenantPath, body: QuotaPatch, service: Service, caller: Caller
) -> dict[str, Any]:
    return await service.set_quotas(caller, tenant, body)
