"""Generation requests: the body a client sends and its resolution against a catalog entry.

The gateway parses the body into ``GenerateRequest`` (types and hard limits), then
``resolve_request`` fills the model's defaults and checks the model's bounds, naming the field
and the limit on every error. The resolved ``GenerationJob`` travels to the family worker, whose
batcher groups jobs by ``batch_key``. Pure: no Ray, no torch.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from genmedia.models.catalog import FloatBounds, IntBounds, ModelEntry
from genmedia.models.registry import FAMILIES

MAX_SEED = 2**32 - 1
HARD_MAX_PROMPT_CHARS = 100_000


class GenerateRequest(BaseModel):
    """Body of ``POST /v1/models/{model_id}/generate``; unset fields take the model's defaults."""

    model_config = ConfigDict(extra="forbid", strict=False)

    prompt: str = Field(
        min_length=1,
        max_length=HARD_MAX_PROMPT_CHARS,
        description="What to generate; the model's catalog entry may set a lower limit.",
    )
    negative_prompt: str | None = Field(
        default=None, max_length=HARD_MAX_PROMPT_CHARS, description="What to steer away from."
    )
    width: int | None = Field(default=None, description="Output width in pixels.")
    height: int | None = Field(default=None, description="Output height in pixels.")
    num_inference_steps: int | None = Field(default=None, description="Denoising steps.")
    guidance_scale: float | None = Field(default=None, description="Guidance scale.")
    num_images: int | None = Field(default=None, description="Images to generate.")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Seed of the first image (image i uses seed + i); random when unset. Same "
        "model, parameters and seed give the same output.",
    )
    scheduler: str | None = Field(default=None, description="Scheduler (sampler) name.")
    output_format: Literal["png"] = Field(default="png", description="Image encoding.")
    priority: Literal["interactive", "batch"] | None = Field(
        default=None,
        description="Priority class: 'interactive' (latency) or 'batch' (throughput). Default: "
        "interactive for the sync endpoint, the tenant's default class for the queue API.",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Queue API only: POSTed a signed JSON event when the job finishes.",
    )
    return_base64: bool = Field(
        default=False, description="Also return each image inline as base64 in the response."
    )


@dataclass(frozen=True)
class FieldError:
    """A request field that breaks a bound, with the bound."""

    field: str
    message: str
    limit: object = None

    def as_dict(self) -> dict:
        return {"field": self.field, "message": self.message, "limit": self.limit}


@dataclass(frozen=True)
class GenerationParams:
    """Resolved parameters of one request that decide which requests may share a batch."""

    model_id: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    scheduler: str

    @property
    def batch_key(self) -> tuple:
        """The parameters requests must share to run in one pipeline call."""
        return (
            self.model_id,
            self.width,
            self.height,
            self.num_inference_steps,
            self.guidance_scale,
            self.scheduler,
        )


@dataclass
class GenerationJob:
    """One request on its way to a worker: the shared parameters plus its own prompt and seed."""

    request_id: str
    params: GenerationParams
    prompt: str
    negative_prompt: str | None
    seed: int
    num_images: int
    submitted_at: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can run in one pipeline call. Whether a negative prompt is set
        is part of it: SDXL encodes "no negative prompt" as zeros and Flux turns true CFG on for
        the whole call, so mixing would change a job's image with its batch-mates."""
        return (*self.params.batch_key, self.negative_prompt is not None)

    def describe(self) -> dict:
        """What the JSON sidecar and the response record about the parameters."""
        return {
            **asdict(self.params),
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "num_images": self.num_images,
        }


def _int_in(name: str, value: int | None, b: IntBounds, errors: list[FieldError]) -> int:
    if value is None:
        return b.default
    if value < b.min:
        errors.append(FieldError(name, f"must be >= {b.min}", b.min))
    elif value > b.max:
        errors.append(FieldError(name, f"must be <= {b.max}", b.max))
    return value


def _float_in(name: str, value: float | None, b: FloatBounds, errors: list[FieldError]) -> float:
    if value is None:
        return b.default
    if value != value:  # NaN
        errors.append(FieldError(name, "must be a number", None))
    elif value < b.min:
        errors.append(FieldError(name, f"must be >= {b.min:g}", b.min))
    elif value > b.max:
        errors.append(FieldError(name, f"must be <= {b.max:g}", b.max))
    return value


def resolve_request(
    entry: ModelEntry, req: GenerateRequest, *, request_id: str, now: float = 0.0
) -> tuple[GenerationJob | None, list[FieldError]]:
    """Fill defaults from the catalog entry and check every bound; all errors at once."""
    errors: list[FieldError] = []
    p = entry.parameters
    multiple = FAMILIES[entry.family].size_multiple
    width = _int_in("width", req.width, p.width, errors)
    height = _int_in("height", req.height, p.height, errors)
    for name, v in (("width", width), ("height", height)):
        if v % multiple:
            errors.append(FieldError(name, f"must be a multiple of {multiple}", multiple))
    steps = _int_in("num_inference_steps", req.num_inference_steps, p.steps, errors)
    guidance = _float_in("guidance_scale", req.guidance_scale, p.guidance, errors)
    num_images = _int_in("num_images", req.num_images, p.num_images, errors)
    if not req.prompt.strip():
        errors.append(FieldError("prompt", "must not be blank", None))
    if len(req.prompt) > p.max_prompt_chars:
        errors.append(
            FieldError("prompt", f"longer than {p.max_prompt_chars} characters", p.max_prompt_chars)
        )
    if req.negative_prompt and len(req.negative_prompt) > p.max_prompt_chars:
        errors.append(
            FieldError(
                "negative_prompt",
                f"longer than {p.max_prompt_chars} characters",
                p.max_prompt_chars,
            )
        )
    allowed = entry.allowed_schedulers()
    scheduler = req.scheduler or entry.scheduler_default()
    if scheduler not in allowed:
        errors.append(
            FieldError(
                "scheduler",
                f"unknown scheduler {scheduler!r}; allowed: {', '.join(allowed)}",
                allowed,
            )
        )
    seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1)
    if seed + num_images - 1 > MAX_SEED:
        errors.append(FieldError("seed", f"seed + num_images - 1 must be <= {MAX_SEED}", MAX_SEED))
    if errors:
        return None, errors
    params = GenerationParams(entry.id, width, height, steps, float(guidance), scheduler)
    job = GenerationJob(
        request_id,
        params,
        req.prompt,
        req.negative_prompt or None,
        seed,
        num_images,
        submitted_at=now,
    )
    return job, []


def parameter_schema(entry: ModelEntry) -> dict:
    """What ``GET /v1/models`` shows of one model: defaults, bounds and choices per field."""
    p = entry.parameters
    multiple = FAMILIES[entry.family].size_multiple

    def rng(b: IntBounds | FloatBounds, **extra: object) -> dict:
        return {
            "type": "integer" if isinstance(b, IntBounds) else "number",
            "default": b.default,
            "minimum": b.min,
            "maximum": b.max,
            **extra,
        }

    return {
        "prompt": {"type": "string", "minLength": 1, "maxLength": p.max_prompt_chars},
        "negative_prompt": {"type": "string", "maxLength": p.max_prompt_chars},
        "width": rng(p.width, multipleOf=multiple),
        "height": rng(p.height, multipleOf=multiple),
        "num_inference_steps": rng(p.steps),
        "guidance_scale": rng(p.guidance),
        "num_images": rng(p.num_images),
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
        "scheduler": {
            "type": "string",
            "enum": entry.allowed_schedulers(),
            "default": entry.scheduler_default(),
        },
        "output_format": {"type": "string", "enum": ["png"], "default": "png"},
        "return_base64": {"type": "boolean", "default": False},
    }
