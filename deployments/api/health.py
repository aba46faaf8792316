"""Liveness, readiness and metrics: what the cluster's probes and Prometheus call, without a key.

Outside a request's way: ``/healthz`` answers while the gateway runs, ``/readyz`` asks the
scheduler for every family worker's report, ``/metrics`` joins the gateway's and the scheduler's
Prometheus text.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from genmedia.deployments.api.deps import Service
from genmedia.deployments.api.schemas import Health, Readiness

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
    summary="Prometheus metrics (text format)",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(service: Service) -> Response:
    text = service.metrics.render()
    # The gateway's own metrics still answer while the scheduler restarts.
    with contextlib.suppress(Exception):
        text += await asyncio.wait_for(service.scheduler.metrics_text(), 5.0)
    return Response(text, media_type=service.metrics.content_type)
