"""The gateway's FastAPI app: the routers of ``api/`` over one ``GatewayService``.

First stop of a request: the body-size limit, JSON parsing, types and the API key happen in
``api/``; every other decision is the service's or the scheduler's. Built per gateway replica
(``build_api``), so the catalog's limits configure it, and testable without Ray.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI

from genmedia.deployments.api import admin, files, health, jobs, loras, models, openai, usage
from genmedia.deployments.api.bodies import body_schemas
from genmedia.deployments.api.docs_assets import install_docs
from genmedia.deployments.api.errors import BodySizeLimit, install_error_handlers
from genmedia.deployments.api.inflight import InflightPerKey
from genmedia.deployments.api.playground import install_playground
from genmedia.deployments.intake.service import GatewayService

DESCRIPTION = (
    "Generative media models served from a shared GPU cluster. Every /v1 call needs "
    "'Authorization: Bearer <API key>'. Every error answers "
    '`{"error": {"type", "message", "fields": [{"field", "message", "limit"}]}}`; '
    "`type` is a code in lower snake_case, job statuses are upper case (IN_QUEUE, ...)."
)

TAGS = [
    {"name": "models", "description": "The models served and their parameters."},
    {"name": "generate", "description": "Generate and wait (short jobs)."},
    {"name": "queue", "description": "Submit, then poll, stream, fetch or cancel."},
    {"name": "files", "description": "Input uploads and stored outputs."},
    {"name": "loras", "description": "LoRA adapters; registration by admin tenants."},
    {"name": "usage", "description": "The caller's usage."},
    {"name": "openai", "description": "OpenAI-compatible images API (generations, edits)."},
    {"name": "health", "description": "Probes and metrics (no key)."},
]


class GatewayApp(FastAPI):
    """FastAPI with this API's error shape in its OpenAPI document: FastAPI documents a 422 of
    its own (``HTTPValidationError``) on routes with parameters, but ``errors.py`` answers every
    422 as ``ErrorBody``."""

    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()  # cached by FastAPI; the edits below are idempotent
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                r422 = op.get("responses", {}).get("422", {})
                content = r422.get("content", {}).get("application/json", {})
                if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    r422["description"] = "invalid_request: a parameter breaks its type or bound."
                    content["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        components.update(body_schemas())  # bodies parsed off the event loop (api/bodies.py)
        return schema


def _version() -> str:
    try:
        return version("genmedia")
    except PackageNotFoundError:
        return "0.0.0"


def build_api(service: GatewayService) -> FastAPI:
    """The app of one gateway replica over ``service``."""
    app = GatewayApp(
        title="genmedia",
        version=_version(),
        description=DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,  # served offline by install_docs
        redoc_url=None,
    )
    app.state.service = service
    server = service.catalog.server
    app.add_middleware(
        InflightPerKey,
        max_inflight_per_key=server.max_inflight_per_key,
        shared_inflight_per_key=server.shared_inflight_per_key,
    )
    app.add_middleware(BodySizeLimit, limit_bytes=server.max_body_bytes)  # outermost
    install_error_handlers(app)
    for router in (
        health.router,
        models.router,
        jobs.router,
        usage.router,
        files.router,
        loras.router,
        openai.router,
        admin.router,
    ):
        app.include_router(router)
    install_docs(app)
    install_playground(app)
    return app
