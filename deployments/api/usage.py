"""``/v1/usage``: the caller's jobs, outputs, steps and compute seconds per model, from the
scheduler's job store."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from genmedia.deployments.api.deps import Caller, Service
from genmedia.deployments.api.errors import AUTH, UNAVAILABLE, error_responses
from genmedia.deployments.api.schemas import Usage

router = APIRouter(tags=["usage"])


@router.get(
    "/v1/usage",
    summary="The caller's usage per model",
    response_model=Usage,
    response_model_exclude_unset=True,
    responses=error_responses(AUTH, UNAVAILABLE),
)
async def usage(service: Service, caller: Caller) -> dict[str, Any]:
    return await service.usage(caller)
