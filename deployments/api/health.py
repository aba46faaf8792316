"""Liveness, readiness and metrics: what the cluster's probes and Prometheus call.

Outside a request's way: ``/healthz`` answers while the gateway runs and ``/readyz`` asks the
scheduler for every family worker's report, both without a key; ``/metrics`` joins the
gateway's and the scheduler's Prometheus text for an admin tenant's key (401 without a valid
key, 403 for another tenant's), or for anyone with ``server.metrics.public``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response, Security
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials

from genmedia.deployments.api.deps import Service, bearer
from genmedia.deployments.api.errors import AUTH, error_responses
from genmedia.deployments.api.schemas import Health, Readiness
from genmedia.deployments.errors import ApiError

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Liveness: the gateway answers",
    response_model=Health,
    response_model_exclude_unset=True,
)
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: every family worker has its models loaded",
    response_model=Readiness,
    response_model_exclude_unset=True,
    responses={
        503: {
            "model": Readiness,
            "description": "Not ready: a worker is loading, down "
            "or the scheduler cannot be reached.",
        }
    },
)
async def readyz(service: Service, response: Response) -> dict[str, Any]:
    ok, report = await service.readiness()
    response.status_code = 200 if ok else 503
    return {"ready": ok, "families": report}


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format): an admin tenant's key unless public",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(
            AUTH, {403: "forbidden: the key's tenant is not an admin tenant (server.metrics)."}
        ),
    },
)
async def metrics(
    request: Request,
    service: Service,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Response:
    if not service.catalog.server.metrics.public:
        tenant = service.auth.authenticate(request.headers.get("authorization"))  # 401
        if not tenant.admin:
            raise ApiError(
                403,
                "forbidden",
                f"tenant {tenant.id!r} is not an admin tenant: /metrics needs an admin key "
                "(or server.metrics.public: true)",
            )
    text = service.metrics.render()
    # The gateway's own metrics still answer while the scheduler restarts.
    with contextlib.suppress(Exception):
        text += await asyncio.wait_for(service.scheduler.metrics_text(), 5.0)
    return Response(text, media_type=service.metrics.content_type)
