"""OpenAI-compatible images routes: ``POST /v1/images/generations`` and ``/v1/images/edits``.

First stop of a request sent by OpenAI's clients (``openai.OpenAI(base_url=".../v1")``):
the JSON body or the multipart form is parsed here, ``intake/openai_images.py`` maps it to a
``GenerateRequest`` and ``GatewayService.generate`` runs it as the sync route does (same key,
tenant, quotas, interactive priority by default). Errors on these routes only answer OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}`` (``OpenAIRoute``); the body-size
limit (413) answers before routing, in genmedia's shape. ``/v1/models`` serves both shapes
(``models.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from genmedia.deployments.api.bodies import body_openapi, json_body
from genmedia.deployments.api.deps import BaseUrl, Caller, Service
from genmedia.deployments.api.schemas import Body
from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.openai_images import (
    ImageEditRequest,
    ImageGenerationRequest,
    edit_request,
    generation_request,
    images_response,
    invalid,
    openai_error,
    parse_form,
    validation_error,
)

MAX_FORM_FIELDS = 64
MAX_FORM_FILES = 4


class OpenAIError(Body):
    message: str = Field(description="What is wrong, naming the parameter and its limit.")
    type: str = Field(
        description="invalid_request_error, permission_error, rate_limit_error or server_error."
    )
    param: str | None = Field(description="The OpenAI parameter at fault, if one is.")
    code: str | None = Field(
        description="invalid_api_key, model_not_found, unknown_parameter, unsupported_parameter, "
        "invalid_value, ... or genmedia's error type (rate_limited, unavailable, ...)."
    )


class OpenAIErrorBody(Body):
    error: OpenAIError


class ImageData(Body):
    url: str | None = Field(default=None, description="response_format=url: the stored output.")
    b64_json: str | None = Field(default=None, description="response_format=b64_json: the bytes.")


class ImagesResponse(Body):
    created: int = Field(description="Unix time of the answer.")
    data: list[ImageData]
    size: str | None = Field(default=None, description="'WIDTHxHEIGHT' of the outputs.")
    output_format: str | None = Field(default=None, description="png, jpeg or webp.")


class OpenAIModel(Body):
    """An entry of ``GET /v1/models``' ``data`` (OpenAI's ``Model``)."""

    id: str
    object: str = "model"
    created: int = Field(description="0: the catalog records no creation time.")
    owned_by: str


def openai_model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "genmedia"}


def _answer(err: ApiError) -> JSONResponse:
    status, body = openai_error(err)
    return JSONResponse(status_code=status, content=body, headers=err.headers)


class OpenAIRoute(APIRoute):
    """A route whose errors (key, body, parameters, the service's) answer OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                return _answer(e)
            except RequestValidationError as e:
                return _answer(validation_error(list(e.errors())))
            except StarletteHTTPException as e:
                return _answer(ApiError(e.status_code, "http_error", str(e.detail)))

        return route


_ERRORS = {
    400: "invalid_request_error: a parameter is unknown, unsupported or out of the model's "
    "bounds (param names it; code: unknown_parameter, unsupported_parameter, invalid_value, "
    "invalid_input, ...).",
    401: "invalid_api_key: no API key, or not a valid one.",
    403: "permission_error: the tenant may not use this model or priority class.",
    404: "model_not_found: no model with this id.",
    429: "rate_limit_error: refused at admission (code: rate_limited, tenant_queue_full, ...), "
    "with Retry-After.",
    500: "server_error: the job failed.",
    503: "server_error (unavailable): the scheduler cannot be reached; retry after Retry-After.",
    504: "server_error (timeout): not finished within the server's request timeout.",
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": text} for status, text in _ERRORS.items()
}
RESPONSES["4XX"] = {"model": OpenAIErrorBody, "description": "Any other client error."}

GenerationsBody = Annotated[
    ImageGenerationRequest, Depends(json_body(ImageGenerationRequest, validation_error))
]  # parsed and validated off the event loop, as the queue routes' bodies
router = APIRouter(prefix="/v1/images", tags=["openai"], route_class=OpenAIRoute)


@router.post(
    "/generations",
    summary="OpenAI-compatible: generate images (sync; interactive by default)",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=RESPONSES,
    openapi_extra=body_openapi(ImageGenerationRequest),
)
async def generations(
    body: GenerationsBody, service: Service, base_url: BaseUrl, caller: Caller
) -> dict[str, Any]:
    entry = service.entry(body.model)
    req = generation_request(entry, body)
    result = await service.generate(caller, entry.id, req, base_url)
    assert isinstance(result, dict)  # without Prefer: wait, a result or an error
    return images_response(result, body.response_format)


async def _edit_form(request: Request) -> tuple[ImageEditRequest, bytes, bytes | None]:
    """The multipart form: one ``image`` file (or ``image[]``), an optional ``mask`` file and
    the text fields."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise invalid("image", "the body must be multipart/form-data with an 'image' file")
    form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    files: dict[str, list[UploadFile]] = {}
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(name.removesuffix("[]"), []).append(value)
        else:
            fields[name] = value
    images = files.pop("image", [])
    masks = files.pop("mask", [])
    for name in files:
        raise invalid(name, f"Unknown parameter: '{name}'.", "unknown_parameter")
    if len(images) != 1:
        raise invalid("image", f"send one 'image' file, not {len(images)}")
    if len(masks) > 1:
        raise invalid("mask", "send at most one 'mask' file")
    req = parse_form(fields)
    image = await images[0].read()
    mask = await masks[0].read() if masks else None
    return req, image, mask


_EDIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "model", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG with alpha: transparent pixels are repainted "
                            "(inpainting); without it, image-to-image.",
                        },
                        **ImageEditRequest.model_json_schema()["properties"],
                    },
                }
            }
        },
    }
}


@router.post(
    "/edits",
    summary="OpenAI-compatible: edit an image (image-to-image; inpainting with a mask)",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=RESPONSES,
    openapi_extra=_EDIT_BODY,
)
async def edits(
    request: Request, service: Service, base_url: BaseUrl, caller: Caller
) -> dict[str, Any]:
    body, image, mask = await _edit_form(request)
    entry = service.entry(body.model)
    req = await asyncio.to_thread(edit_request, entry, body, image, mask)
    result = await service.generate(caller, entry.id, req, base_url)
    assert isinstance(result, dict)  # without Prefer: wait, a result or an error
    return images_response(result, body.response_format)
