"""HTTP routes of the gateway: a thin FastAPI layer over ``GatewayService``.

First stop of a request: the body-size limit, JSON parsing and type checks happen here; every
other decision is the service's. Built per gateway replica (``build_api``), so the catalog's limits
configure it, and testable without Ray.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from genmedia.deployments.http_errors import ApiError, BodySizeLimit, install_error_handlers
from genmedia.deployments.service import GatewayService
from genmedia.deployments.storage import safe_key
from genmedia.models.params import GenerateRequest

CONTENT_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".wav": "audio/wav",
}


def _version() -> str:
    try:
        return version("genmedia")
    except PackageNotFoundError:
        return "0.0.0"


def build_api(service: GatewayService) -> FastAPI:
    app = FastAPI(
        title="genmedia",
        version=_version(),
        description="Generative media models served from a shared GPU cluster.",
    )
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
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/v1/models", tags=["models"], summary="Models served, with parameter schemas")
    async def list_models() -> dict:
        return {"models": service.describe_models()}

    @app.get("/v1/models/{model_id}", tags=["models"], summary="One model")
    async def get_model(model_id: str) -> dict:
        return service.describe_model(service.entry(model_id))

    @app.post(
        "/v1/models/{model_id}/generate",
        tags=["generate"],
        summary="Generate and wait for the result (sync)",
    )
    async def generate(model_id: str, body: GenerateRequest, request: Request) -> dict:
        return await service.generate(model_id, body, str(request.base_url))

    @app.get("/v1/files/{path:path}", tags=["files"], summary="A stored output or its sidecar")
    async def get_file(path: str) -> Response:
        try:
            key = safe_key(path)
        except ValueError as e:
            raise ApiError(
                400, "invalid_path", str(e), [{"field": "path", "message": str(e), "limit": None}]
            ) from None
        try:
            data = service.storage.get(key)
        except ValueError:
            data = None
        if data is None:
            raise ApiError(404, "file_not_found", f"no file {path!r}")
        suffix = "." + key.rsplit(".", 1)[-1] if "." in key else ""
        return Response(data, media_type=CONTENT_TYPES.get(suffix, "application/octet-stream"))

    return app
