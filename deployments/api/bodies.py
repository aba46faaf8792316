"""JSON request bodies as route dependencies that parse off the event loop.

Between the HTTP layer and a route: ``json_body(Model)`` reads the raw bytes and has
``intake.bodies.parse_json`` validate them (``GatewayService.parse_body``: a body of at most
1 KB at once, costing microseconds; small bodies on the interactive lane's threads, large ones
in the gateway's parse process), so no body, however hostile, holds the event loop or its
interpreter lock for more than microseconds. ``body_openapi(Model)`` documents the body in
``/docs`` as FastAPI would have; ``GatewayApp`` adds the models' schemas to the document's
components.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.service import GatewayService

M = TypeVar("M", bound=BaseModel)
BODY_MODELS: dict[str, type[BaseModel]] = {}  # documented bodies, by schema name


def json_body(
    model: type[M], on_errors: Callable[[list[Any]], ApiError] | None = None
) -> Callable[[Request], Awaitable[M]]:
    """A dependency answering the request's body as ``model`` (400/422 as ``ApiError``, or
    ``on_errors``' answer to pydantic's errors)."""
    BODY_MODELS[model.__name__] = model

    async def parse(request: Request) -> M:
        raw = await request.body()
        service: GatewayService = request.app.state.service
        return await service.parse_body(raw, model, on_errors)

    return parse


def body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body ``json_body(model)`` reads."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def body_schemas() -> dict[str, Any]:
    """The component schemas of every documented body (with the models they nest)."""
    out: dict[str, Any] = {}
    for name, model in BODY_MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    return out
