"""HTTP routes of the gateway: a thin FastAPI layer over ``GatewayService``.

First stop of a request: the body-size limit, JSON parsing, types and the API key happen here;
every other decision is the service's or the scheduler's. Built per gateway replica
(``build_api``), so the catalog's limits configure it, and testable without Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from genmedia.deployments.api.errors import ApiError, BodySizeLimit, install_error_handlers
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.tenants.config import Tenant
from genmedia.models import media
from genmedia.models.catalog import LoraEntry
from genmedia.models.params import GenerateRequest

CONTENT_TYPES = {f".{ext}": media.content_type(fmt) for fmt, ext in media.EXTENSIONS.items()}
CONTENT_TYPES.update({".json": "application/json", ".jpeg": "image/jpeg"})


def _version() -> str:
    try:
        return version("genmedia")
    except PackageNotFoundError:
        return "0.0.0"


def _caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    """The tenant of the bearer key (401 without a valid one)."""
    return request.app.state.service.auth.authenticate(authorization)


Caller = Annotated[Tenant, Depends(_caller)]
Deadline = Annotated[
    str | None,
    Header(
        alias="X-Deadline-Seconds",
        description="Seconds from now by which the job must start; refused (429) when it "
        "cannot, EXPIRED when it passes in the queue.",
    ),
]
IdemKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A retried submit with the same key returns the same job.",
    ),
]


def build_api(service: GatewayService) -> FastAPI:
    app = FastAPI(
        title="genmedia",
        version=_version(),
        description="Generative media models served from a shared GPU cluster. Every /v1 call "
        "needs 'Authorization: Bearer <API key>'.",
    )
    app.state.service = service
    app.add_middleware(BodySizeLimit, limit_bytes=service.catalog.server.max_body_bytes)
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"], summary="Liveness: the gateway answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get(
        "/readyz", tags=["health"], summary="Readiness: every family worker has its models loaded"
    )
    async def readyz() -> JSONResponse:
        ok, report = await service.readiness()
        return JSONResponse(
            status_code=200 if ok else 503, content={"ready": ok, "families": report}
        )

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        text = service.metrics.render()
        # The gateway's own metrics still answer while the scheduler restarts.
        with contextlib.suppress(Exception):
            text += await asyncio.wait_for(service.scheduler.metrics_text(), 5.0)
        return Response(text, media_type=service.metrics.content_type)

    @app.get("/v1/models", tags=["models"], summary="Models served, with parameter schemas")
    async def list_models(caller: Caller) -> dict:
        return {"models": service.describe_models(caller)}

    @app.get("/v1/models/{model_id}", tags=["models"], summary="One model")
    async def get_model(model_id: str, caller: Caller) -> dict:
        entry = service.entry(model_id)
        if not caller.allows_model(model_id):
            service.auth.authorize(caller, model_id, None)
        return service.describe_model(entry)

    @app.post(
        "/v1/models/{model_id}/generate",
        tags=["generate"],
        summary="Generate and wait for the result (sync; interactive by default)",
    )
    async def generate(
        model_id: str,
        body: GenerateRequest,
        request: Request,
        caller: Caller,
        deadline: Deadline = None,
        idempotency_key: IdemKey = None,
    ) -> dict:
        return await service.generate(
            caller,
            model_id,
            body,
            str(request.base_url),
            deadline=deadline,
            idempotency_key=idempotency_key,
        )

    @app.post(
        "/v1/queue/models/{model_id}",
        tags=["queue"],
        status_code=202,
        summary="Submit a job; answers at once with its URLs",
    )
    async def submit(
        model_id: str,
        body: GenerateRequest,
        request: Request,
        caller: Caller,
        deadline: Deadline = None,
        idempotency_key: IdemKey = None,
    ) -> dict:
        status = await service.submit(
            caller, model_id, body, deadline=deadline, idempotency_key=idempotency_key
        )
        return service.public_status(status, str(request.base_url))

    @app.get(
        "/v1/queue/requests/{request_id}/status",
        tags=["queue"],
        summary="IN_QUEUE (position, ETA), IN_PROGRESS (step), COMPLETED, FAILED, ...",
    )
    async def status(request_id: str, request: Request, caller: Caller) -> dict:
        return await service.status(caller, request_id, str(request.base_url))

    @app.get(
        "/v1/queue/requests/{request_id}",
        tags=["queue"],
        summary="The result of a finished job (409 while it runs)",
    )
    async def result(
        request_id: str, request: Request, caller: Caller, return_base64: bool = False
    ) -> dict:
        return await service.result(caller, request_id, str(request.base_url), return_base64)

    @app.put(
        "/v1/queue/requests/{request_id}/cancel",
        tags=["queue"],
        status_code=202,
        summary="Cancel: a queued job leaves the queue, a running one stops between steps",
    )
    async def cancel(request_id: str, caller: Caller) -> dict:
        return await service.cancel(caller, request_id)

    @app.get(
        "/v1/queue/requests/{request_id}/stream",
        tags=["queue"],
        summary="Server-sent events: status changes and step progress until the end",
    )
    async def stream(request_id: str, request: Request, caller: Caller) -> StreamingResponse:
        events = await service.stream(caller, request_id, str(request.base_url))

        async def sse():
            async for event in events:
                name = "keepalive" if event.get("type") == "keepalive" else "status"
                yield f"event: {name}\ndata: {json.dumps(event)}\n\n"

        return StreamingResponse(
            sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/v1/usage", tags=["usage"], summary="The caller's usage per model")
    async def usage(caller: Caller) -> dict:
        return await service.usage(caller)

    @app.post(
        "/v1/files",
        tags=["files"],
        status_code=201,
        summary="Upload an input image (raw body, Content-Type image/png, image/jpeg or "
        "image/webp); use its id as 'image' or 'mask_image'",
    )
    async def upload_file(request: Request, caller: Caller) -> dict:
        data = await request.body()
        return await service.upload(
            caller, data, request.headers.get("content-type"), str(request.base_url)
        )

    @app.get("/v1/loras", tags=["loras"], summary="LoRA adapters of the models the caller uses")
    async def list_loras(caller: Caller) -> dict:
        return await service.adapters(caller)

    @app.post(
        "/v1/admin/loras",
        tags=["loras"],
        status_code=201,
        summary="Register a LoRA adapter (admin tenants); checked against its base model first",
    )
    async def register_lora(body: LoraEntry, caller: Caller) -> dict:
        return await service.register_adapter(caller, body.model_dump())

    @app.delete(
        "/v1/admin/loras/{adapter_id}",
        tags=["loras"],
        summary="Remove a LoRA adapter registered at run time (admin tenants)",
    )
    async def delete_lora(adapter_id: str, caller: Caller) -> dict:
        return await service.delete_adapter(caller, adapter_id)

    @app.get("/v1/files/{path:path}", tags=["files"], summary="A stored output or its sidecar")
    async def get_file(path: str, caller: Caller) -> Response:
        key = service.file_key(caller, path)
        try:
            data = await asyncio.to_thread(service.storage.get, key)
        except ValueError:
            data = None
        if data is None:
            raise ApiError(404, "file_not_found", f"no file {path!r}")
        suffix = "." + key.rsplit(".", 1)[-1] if "." in key else ""
        return Response(data, media_type=CONTENT_TYPES.get(suffix, "application/octet-stream"))

    return app
