"""``/v1/models``: the models the caller may use, each with its parameter schema.

Read-only, answered from the gateway's catalog; no scheduler call.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import Field

from genmedia.deployments.api.deps import Caller, Service
from genmedia.deployments.api.errors import AUTH, error_responses
from genmedia.deployments.api.openai import OpenAIModel, openai_model
from genmedia.deployments.api.schemas import ModelInfo, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelId = Annotated[str, Path(description="Catalog id of the model (GET /v1/models lists them).")]


class ModelListBody(ModelList):
    """genmedia's ``models`` and, for OpenAI's clients (``client.models.list()``), OpenAI's list
    fields over the same models."""

    object: Literal["list"] = Field(default="list", description="OpenAI's list marker.")
    data: list[OpenAIModel] = Field(description="The same models as OpenAI's Model objects.")


@router.get(
    "",
    summary="Models served, with parameter schemas",
    response_model=ModelListBody,
    response_model_exclude_unset=True,
    responses=error_responses(AUTH),
)
async def list_models(service: Service, caller: Caller) -> dict[str, Any]:
    models = service.describe_models(caller)
    return {"models": models, "object": "list", "data": [openai_model(m["id"]) for m in models]}


@router.get(
    "/{model_id}",
    summary="One model",
    response_model=ModelInfo,
    response_model_exclude_unset=True,
    responses=error_responses(
        AUTH,
        {
            403: "forbidden: the caller's tenant may not use this model.",
            404: "model_not_found: no model with this id.",
        },
    ),
)
async def get_model(model_id: ModelId, service: Service, caller: Caller) -> dict[str, Any]:
    entry = service.entry(model_id)
    if not caller.allows_model(model_id):
        service.auth.authorize(caller, model_id, None)
    return {**service.describe_model(entry), **openai_model(model_id)}
