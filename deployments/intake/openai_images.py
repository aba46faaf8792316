"""OpenAI's images API in genmedia's terms: requests in, ``GenerateRequest`` out, and back.

Sits in the gateway beside ``service.py``: ``api/openai.py`` parses ``POST /v1/images/generations``
(JSON) and ``POST /v1/images/edits`` (multipart) into the models below; this module turns them
into a ``GenerateRequest`` for ``GatewayService.generate`` (the sync path: same tenants, quotas
and priority), turns its answer into OpenAI's ``ImagesResponse`` and any ``ApiError`` into
OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``. OpenAI masks mark the
area to edit with transparency; genmedia's with white: ``openai_mask`` converts.
No FastAPI, no Ray.
"""

from __future__ import annotations

import io
import re
import time
from typing import Any, Literal

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.inputs import InputError, InputImage, check_image, check_mask
from genmedia.models.catalog import ModelEntry
from genmedia.models.params import HARD_MAX_PROMPT_CHARS, MAX_SEED, GenerateRequest, LoraRequest
from genmedia.models.registry import FAMILIES

SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# ``quality`` scales the model's default number of denoising steps (within its bounds).
QUALITY_STEPS = {"low": 0.5, "auto": 1.0, "standard": 1.0, "medium": 1.0, "high": 2.0, "hd": 2.0}
# OpenAI parameters genmedia does not implement: refused by name, not as unknown.
UNSUPPORTED = frozenset(
    {
        "partial_images",
        "input_fidelity",
        "svg",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "markup",
    }
)
# genmedia's field names as OpenAI's parameters, for error bodies.
PARAM_OF = {
    "model_id": "model",
    "num_images": "n",
    "width": "size",
    "height": "size",
    "mask_image": "mask",
    "output_quality": "output_compression",
    "return_base64": "response_format",
}


class _Common(BaseModel):
    """The parameters both routes take: OpenAI's, then genmedia's extensions (``extra_body``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Catalog id of the model (GET /v1/models lists them).")
    prompt: str = Field(min_length=1, max_length=HARD_MAX_PROMPT_CHARS)
    n: int | None = Field(default=None, description="Images to make (the model's bounds).")
    size: str | None = Field(
        default=None,
        description="'WIDTHxHEIGHT' within the model's bounds, or 'auto' (the model's default; "
        "for edits, the input image's size).",
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        default=None, description="b64_json (default) or url (a link to the stored output)."
    )
    quality: str | None = Field(
        default=None,
        description="Denoising steps relative to the model's default: low = half, "
        "auto/standard/medium = default, high/hd = twice (within the model's bounds).",
    )
    output_format: Literal["png", "jpeg", "webp"] | None = Field(default=None)
    output_compression: int | None = Field(
        default=None, ge=1, le=100, description="jpeg/webp quality 1-100."
    )
    background: Literal["auto", "opaque"] | None = Field(
        default=None, description="Outputs are opaque; 'transparent' is not supported."
    )
    moderation: Literal["auto", "low"] | None = Field(
        default=None, description="Accepted; genmedia does no moderation."
    )
    stream: bool | None = Field(default=None, description="Streaming is not supported.")
    user: str | None = Field(default=None, description="Accepted, not used.")
    safety_identifier: str | None = Field(default=None, description="Accepted, not used.")
    # genmedia extensions (the openai package sends them with extra_body=...)
    negative_prompt: str | None = Field(default=None, max_length=HARD_MAX_PROMPT_CHARS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    priority: Literal["interactive", "batch"] | None = Field(
        default=None, description="Priority class; interactive by default, as the sync route."
    )


class ImageGenerationRequest(_Common):
    """Body of ``POST /v1/images/generations``."""

    style: str | None = Field(
        default=None, description="Not supported: describe the style in the prompt."
    )
    loras: list[LoraRequest] | None = Field(default=None, description="genmedia: LoRA adapters.")


class ImageEditRequest(_Common):
    """The text fields of ``POST /v1/images/edits`` (the files are ``image`` and ``mask``)."""

    strength: float | None = Field(
        default=None, description="genmedia: how much of the image is re-noised (0-1]."
    )


def invalid(param: str, message: str, code: str = "invalid_value", limit: Any = None) -> ApiError:
    """A 400 naming the OpenAI parameter (as ``field``, which ``openai_error`` reads)."""
    return ApiError(400, code, message, [{"field": param, "message": message, "limit": limit}])


def validation_error(errors: list[Any]) -> ApiError:
    """Pydantic's errors of a request (``loc`` with or without ``body``) as one 400."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None
    kind = first.get("type")
    if kind == "json_invalid":
        return ApiError(400, "invalid_json", "We could not parse the JSON body of your request.")
    if kind == "extra_forbidden" and param in UNSUPPORTED:
        return invalid(
            param,
            f"Unsupported parameter: '{param}' is not supported by genmedia's images API.",
            "unsupported_parameter",
        )
    if kind == "extra_forbidden":
        return invalid(str(param), f"Unknown parameter: '{param}'.", "unknown_parameter")
    if kind == "missing":
        return invalid(
            str(param), f"Missing required parameter: '{param}'.", "missing_required_parameter"
        )
    if param is None:
        return ApiError(400, "invalid_request", f"Invalid body: {first.get('msg', 'invalid')}")
    where = ".".join(loc)
    ctx = first.get("ctx") or {}
    limit = next((ctx[k] for k in ("le", "ge", "max_length", "expected") if k in ctx), None)
    return invalid(
        param, f"Invalid value for '{where}': {first.get('msg', 'invalid')}.", limit=limit
    )


def parse_form(fields: dict[str, str]) -> ImageEditRequest:
    """The text fields of an edit request, checked as ``ImageEditRequest`` (400 when not)."""
    try:
        return ImageEditRequest.model_validate(fields)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def parse_size(value: str | None) -> tuple[int, int] | None:
    """'WIDTHxHEIGHT' (None for unset or 'auto'); the model's bounds are checked later."""
    if value is None or value == "auto":
        return None
    m = SIZE.match(value.strip())
    if not m or 0 in (int(m[1]), int(m[2])):
        raise invalid(
            "size", f"size must be 'WIDTHxHEIGHT' (e.g. '64x64') or 'auto', not {value!r}"
        )
    return int(m[1]), int(m[2])


def image_model(entry: ModelEntry, task: str) -> None:
    """400 unless ``entry`` makes images and its family does ``task``."""
    tasks = FAMILIES[entry.family].tasks
    if entry.task != "text-to-image" or task not in tasks:
        raise invalid(
            "model",
            f"model {entry.id!r} does not do {task} (it does {', '.join(tasks)}); GET /v1/models "
            "lists the models served",
            "unsupported_model",
        )


def _steps(entry: ModelEntry, req: _Common) -> int | None:
    """``num_inference_steps`` from ``quality`` (or as sent)."""
    if req.quality is None:
        return req.num_inference_steps
    factor = QUALITY_STEPS.get(req.quality)
    if factor is None:
        raise invalid(
            "quality",
            f"quality must be one of {', '.join(QUALITY_STEPS)}, not {req.quality!r}",
            "unsupported_value",
            list(QUALITY_STEPS),
        )
    if req.num_inference_steps is not None:
        if req.quality != "auto":
            raise invalid("quality", "set quality or num_inference_steps, not both")
        return req.num_inference_steps
    b = entry.parameters.steps
    return min(b.max, max(b.min, round(b.default * factor)))


def _fields(entry: ModelEntry, req: _Common) -> dict[str, Any]:
    """The ``GenerateRequest`` fields both routes share."""
    if req.stream:
        raise invalid(
            "stream",
            "stream=true is not supported: the answer comes when the images are done (genmedia's "
            "queue API streams progress: POST /v1/queue/models/{model_id})",
            "unsupported_value",
        )
    return {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "num_images": req.n,
        "seed": req.seed,
        "num_inference_steps": _steps(entry, req),
        "guidance_scale": req.guidance_scale,
        "scheduler": req.scheduler,
        "output_format": req.output_format,
        "output_quality": req.output_compression,
        "priority": req.priority,
        "return_base64": req.response_format != "url",
    }


def _generate_request(values: dict[str, Any]) -> GenerateRequest:
    try:
        return GenerateRequest(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise _renamed(validation_error(e.errors())) from None


def _renamed(err: ApiError) -> ApiError:
    for f in err.fields:
        f["field"] = PARAM_OF.get(f["field"], f["field"])
    return err


def generation_request(entry: ModelEntry, req: ImageGenerationRequest) -> GenerateRequest:
    """A text-to-image ``GenerateRequest`` from OpenAI's parameters (400 naming a refused one)."""
    image_model(entry, "text-to-image")
    if req.style is not None:
        raise invalid(
            "style",
            "style is not supported: genmedia models take no style parameter; describe the "
            "style in the prompt",
            "unsupported_parameter",
        )
    size = parse_size(req.size)
    values = _fields(entry, req)
    if size is not None:
        values["width"], values["height"] = size
    if req.loras:
        values["loras"] = req.loras
    return _generate_request(values)


def _input_error(e: InputError) -> ApiError:
    return ApiError(
        e.status, "invalid_input", f"{e.field}: {e}", [{"field": e.field, "message": str(e)}]
    )


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def openai_mask(data: bytes, max_pixels: int) -> tuple[bytes, InputImage]:
    """An OpenAI mask (transparent = edit) as genmedia's (an L image, white = repaint)."""
    checked = check_image(data, "mask", max_pixels)
    with Image.open(io.BytesIO(data)) as m:
        if "A" not in m.getbands() and "transparency" not in m.info:
            raise InputError(
                "mask",
                "must have an alpha channel (a PNG with transparency): its transparent pixels "
                "mark the area to edit",
            )
        alpha = m.convert("RGBA").getchannel("A")
    return _png(ImageOps.invert(alpha)), checked


def _resized(data: bytes, size: tuple[int, int], resample: Image.Resampling) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        return _png(img.resize(size, resample))


def edit_request(
    entry: ModelEntry, req: ImageEditRequest, image: bytes, mask: bytes | None
) -> GenerateRequest:
    """An image-to-image (no mask) or inpainting ``GenerateRequest`` with the images inline;
    ``size`` other than the image's resizes the image (and mask). CPU work: run in a thread."""
    image_model(entry, "inpainting" if mask is not None else "image-to-image")
    size = parse_size(req.size)
    p = entry.parameters
    max_pixels = p.width.max * p.height.max
    try:
        img = check_image(image, "image", max_pixels)
        mask_png = None
        if mask is not None:
            mask_png, mask_img = openai_mask(mask, max_pixels)
            try:
                check_mask(mask_img, img)
            except InputError as e:
                raise InputError("mask", str(e), e.limit) from None
    except InputError as e:
        raise _renamed(_input_error(e)) from None
    if size is not None and size != (img.width, img.height):
        image = _resized(image, size, Image.Resampling.LANCZOS)
        if mask_png is not None:
            mask_png = _resized(mask_png, size, Image.Resampling.NEAREST)
    import base64

    values = _fields(entry, req)
    values["image"] = base64.b64encode(image).decode()
    if mask_png is not None:
        values["mask_image"] = base64.b64encode(mask_png).decode()
    values["strength"] = req.strength
    return _generate_request(values)


def images_response(result: dict[str, Any], response_format: str | None) -> dict[str, Any]:
    """``GatewayService.generate``'s answer as OpenAI's ``ImagesResponse``."""
    outputs = result.get("outputs") or result.get("images") or []
    key = "url" if response_format == "url" else "b64_json"
    data = [{key: o["url"] if key == "url" else o.get("base64")} for o in outputs]
    out: dict[str, Any] = {"created": int(time.time()), "data": data}
    if outputs:
        first = outputs[0]
        out["size"] = f"{first['width']}x{first['height']}"
        out["output_format"] = str(first.get("content_type", "image/png")).split("/")[-1]
    return out


_TYPE_OF_STATUS = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error(err: ApiError) -> tuple[int, dict[str, Any]]:
    """An ``ApiError`` as OpenAI's status and body. genmedia's 422 (a bound) answers 400, as
    OpenAI does; ``param`` is the OpenAI name of the first field; ``code`` genmedia's type
    (``invalid_api_key`` for a 401)."""
    status = 400 if err.status == 422 else err.status
    type_ = _TYPE_OF_STATUS.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    code = "invalid_api_key" if status == 401 else err.type
    if code == "invalid_request" and err.fields:
        code = "invalid_value"
    params = [PARAM_OF.get(f["field"], f["field"]) for f in err.fields if f.get("field")]
    message = err.message
    if err.fields and err.type in ("invalid_request", "invalid_input"):
        message = "; ".join(_field_text(f) for f in err.fields)
    body = {"message": message, "type": type_, "param": params[0] if params else None, "code": code}
    return status, {"error": body}


def _field_text(f: dict[str, Any]) -> str:
    """One field error in OpenAI's names: 'n: must be <= 4', 'size: width must be <= 512'."""
    field = str(f["field"])
    param = PARAM_OF.get(field, field)
    text = str(f.get("message", "invalid"))
    if field in ("width", "height"):
        text = f"{field} {text}"
    limit = f.get("limit")
    if limit is not None and str(limit) not in text:
        text = f"{text} (limit {limit})"
    return f"{param}: {text}"
