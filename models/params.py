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

from genmedia.models.catalog import FloatBounds, IntBounds, ModelEntry, ParameterBounds
from genmedia.models.family import FamilySpec
from genmedia.models.media import DEFAULT_FORMAT_BY_TASK, FORMATS_BY_TASK
from genmedia.models.previews import supports_preview
from genmedia.models.registry import FAMILIES

MAX_SEED = 2**32 - 1
HARD_MAX_PROMPT_CHARS = 100_000
MAX_INLINE_INPUT_CHARS = 30_000_000  # base64 of a ~20 MB image; the body limit applies first
# Parse-time bounds: a body past them is refused by pydantic before any other work; the
# catalog's own (lower) bounds are checked when the request is resolved against its model.
HARD_MAX_LORAS = 16  # the catalog's max_loras is at most this
HARD_MAX_SIDE = 16_384
HARD_MAX_STEPS = 1_000
HARD_MAX_IMAGES = 64
HARD_MAX_FRAMES = 10_000
HARD_MAX_FPS = 240
HARD_MAX_DURATION_S = 3_600.0
HARD_MAX_GUIDANCE = 1_000.0
HARD_MAX_NAME_CHARS = 64  # scheduler names, output formats
DEFAULT_QUALITY = 90
Task = Literal["text-to-image", "image-to-image", "inpainting", "text-to-video", "text-to-audio"]
MEDIA_TASK = {"image-to-image": "text-to-image", "inpainting": "text-to-image"}  # output kind


class LoraRequest(BaseModel):
    """One LoRA adapter a request applies."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, description="Adapter id (GET /v1/loras).")
    scale: float | None = Field(
        default=None,
        ge=-100.0,
        le=100.0,
        allow_inf_nan=False,
        description="Adapter strength; default and bounds from the model.",
    )


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
    width: int | None = Field(default=None, le=HARD_MAX_SIDE, description="Output width in pixels.")
    height: int | None = Field(
        default=None, le=HARD_MAX_SIDE, description="Output height in pixels."
    )
    num_inference_steps: int | None = Field(
        default=None, le=HARD_MAX_STEPS, description="Denoising steps."
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=-HARD_MAX_GUIDANCE,
        le=HARD_MAX_GUIDANCE,
        allow_inf_nan=False,
        description="Guidance scale.",
    )
    num_images: int | None = Field(
        default=None, le=HARD_MAX_IMAGES, description="Images to generate."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Seed of the first image (image i uses seed + i); random when unset. Same "
        "model, parameters and seed give the same output.",
    )
    scheduler: str | None = Field(
        default=None, max_length=HARD_MAX_NAME_CHARS, description="Scheduler (sampler) name."
    )
    image: str | None = Field(
        default=None,
        max_length=MAX_INLINE_INPUT_CHARS,
        description="Image-to-image / inpainting input: an uploaded file's id (POST /v1/files), "
        "a URL of a file this service stores (.../v1/files/<path>), an https:// URL (fetched "
        "with the webhook address rules; http:// only to hosts the operator allows), or base64 "
        "(a data: URL or bare). Sets the output size.",
    )
    mask_image: str | None = Field(
        default=None,
        max_length=MAX_INLINE_INPUT_CHARS,
        description="Inpainting mask, same forms as 'image' and the same size: white pixels are "
        "repainted, black ones kept.",
    )
    strength: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Image-to-image / inpainting: how much of the input is re-noised (0-1].",
    )
    num_frames: int | None = Field(
        default=None, le=HARD_MAX_FRAMES, description="Video: frames per clip."
    )
    fps: int | None = Field(
        default=None, le=HARD_MAX_FPS, description="Video: frames per second of the MP4."
    )
    duration_s: float | None = Field(
        default=None,
        le=HARD_MAX_DURATION_S,
        allow_inf_nan=False,
        description="Audio: clip length in seconds.",
    )
    loras: list[LoraRequest] = Field(
        default_factory=list,
        max_length=HARD_MAX_LORAS,
        description="LoRA adapters to apply, with their scales (the model sets a lower limit).",
    )
    output_format: str | None = Field(
        default=None,
        max_length=HARD_MAX_NAME_CHARS,
        description="Output encoding: png (default), jpeg or webp for images; mp4 for video; wav "
        "(default), flac or mp3 for audio.",
    )
    output_quality: int | None = Field(
        default=None, ge=1, le=100, description="jpeg/webp quality (default 90)."
    )
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
    preview: bool = Field(
        default=False,
        description="Queue API: send a small approximate RGB preview of the first output on the "
        "progress stream (at most about two a second), as each status event's 'preview'.",
    )


class BulkItem(GenerateRequest):
    """One job of a bulk submit (``POST /v1/queue/models/{model_id}/batch``): the submit body,
    plus its own idempotency key."""

    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="As the Idempotency-Key header of a single submit: a repeat answers the "
        "first job.",
    )


@dataclass(frozen=True)
class AdapterUse:
    """One LoRA adapter of a batch: which one, how strongly, and where its file comes from (the
    registry's source; each worker resolves it to a local file)."""

    id: str
    scale: float
    source: str


def adapter_set_key(uses) -> str:
    """A stable name for a set of adapters (routing affinity): their ids, sorted."""
    return "+".join(sorted(u.id for u in uses))


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
    task: Task = "text-to-image"
    strength: float | None = None  # image-to-image / inpainting
    adapters: tuple[tuple[str, float], ...] = ()  # LoRA (id, scale), in request order
    num_frames: int | None = None  # video
    duration_s: float | None = None  # audio

    def __post_init__(self) -> None:  # JSON round trips turn tuples into lists
        object.__setattr__(self, "adapters", tuple((a, float(w)) for a, w in self.adapters))

    @property
    def batch_key(self) -> tuple:
        """The parameters requests must share to run in one pipeline call: one adapter set with
        the same scales, one task and strength (a pipeline call takes one of each)."""
        return (
            self.model_id,
            self.width,
            self.height,
            self.num_inference_steps,
            self.guidance_scale,
            self.scheduler,
            self.task,
            self.strength,
            self.adapters,
            self.num_frames,
            self.duration_s,
        )

    @property
    def pixels(self) -> float:
        """Pixels (or their equivalent) one output has: the size of the work per step."""
        if self.duration_s is not None:  # audio: ~ one 64x64 image per second of sound
            return 4096.0 * self.duration_s
        return self.width * self.height * (self.num_frames or 1)

    @property
    def adapter_set(self) -> str:
        """The adapters' ids, sorted: a worker holding them runs the batch without loading."""
        return "+".join(sorted(a for a, _ in self.adapters))


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
        params = asdict(self.params)
        params["loras"] = [{"id": a, "scale": w} for a, w in params.pop("adapters")]
        return {
            **params,
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


def resolve_task(entry: ModelEntry, req: GenerateRequest) -> tuple[Task, list[FieldError]]:
    """Which task a request asks for: a mask makes it inpainting, an image image-to-image."""
    task: Task = "inpainting" if req.mask_image else "image-to-image" if req.image else entry.task
    errors = []
    if req.mask_image and not req.image:
        errors.append(FieldError("image", "inpainting needs the image the mask applies to", None))
    tasks = FAMILIES[entry.family].tasks
    if task not in tasks:
        field = "mask_image" if task == "inpainting" else "image"
        errors.append(
            FieldError(field, f"model {entry.id!r} does not do {task}; it does {list(tasks)}", None)
        )
    return task, errors


def _size(
    req: GenerateRequest,
    p: ParameterBounds,
    image_size: tuple[int, int] | None,
    errors: list[FieldError],
) -> tuple[int, int]:
    """Width and height: the input image's when there is one (the request may not set them)."""
    if image_size is not None:
        for name, asked, got in (
            ("width", req.width, image_size[0]),
            ("height", req.height, image_size[1]),
        ):
            if asked is not None and asked != got:
                errors.append(
                    FieldError(name, f"is set by the input image ({got}); leave it out", got)
                )
    width = _int_in("width", image_size[0] if image_size else req.width, p.width, errors)
    height = _int_in("height", image_size[1] if image_size else req.height, p.height, errors)
    return width, height


def _strength(
    task: Task, req: GenerateRequest, p: ParameterBounds, errors: list[FieldError]
) -> float | None:
    """How much of the input image is re-noised; image-to-image and inpainting only."""
    if task in ("image-to-image", "inpainting"):
        return _float_in("strength", req.strength, p.strength, errors)
    if req.strength is not None:
        errors.append(FieldError("strength", "needs an input image", None))
    return None


def _adapters(
    entry: ModelEntry, spec: FamilySpec, req: GenerateRequest, errors: list[FieldError]
) -> list[tuple[str, float]]:
    """The LoRA adapters (id, scale) in request order, when the family takes them."""
    p = entry.parameters
    adapters: list[tuple[str, float]] = []
    if req.loras and not spec.takes_lora:
        errors.append(FieldError("loras", f"the {entry.family} family takes no LoRA adapters", 0))
    if len(req.loras) > p.max_loras:
        errors.append(
            FieldError("loras", f"at most {p.max_loras} adapters per request", p.max_loras)
        )
    seen: set[str] = set()
    for i, lora in enumerate(req.loras):
        if lora.id in seen:
            errors.append(FieldError(f"loras[{i}].id", f"{lora.id!r} is listed twice", None))
        seen.add(lora.id)
        scale = _float_in(f"loras[{i}].scale", lora.scale, p.lora_scale, errors)
        adapters.append((lora.id, float(scale)))
    return adapters


def _video(
    entry: ModelEntry, spec: FamilySpec, req: GenerateRequest, errors: list[FieldError]
) -> tuple[int, int]:
    """Frames per clip (in bounds, and on the family's ``step * k + 1`` rule) and fps."""
    p = entry.parameters
    num_frames = _int_in("num_frames", req.num_frames, p.num_frames, errors)
    step = spec.num_frames_step
    if step and (num_frames - 1) % step:
        low = (num_frames - 1) // step * step + 1
        errors.append(
            FieldError(
                "num_frames",
                f"must be {step}k + 1 for {entry.id} (e.g. {low} or {low + step})",
                step,
            )
        )
    return num_frames, _int_in("fps", req.fps, p.fps, errors)


def _audio_duration(req: GenerateRequest, p: ParameterBounds, errors: list[FieldError]) -> float:
    """Clip length in seconds; an audio request sets no width or height."""
    duration_s = _float_in("duration_s", req.duration_s, p.duration_s, errors)
    for name in ("width", "height"):
        if getattr(req, name) is not None:
            errors.append(FieldError(name, "is not used by text-to-audio", None))
    return duration_s


def _task_only_fields(task: Task, req: GenerateRequest, errors: list[FieldError]) -> None:
    for name, value, kind in (
        ("num_frames", req.num_frames, "text-to-video"),
        ("fps", req.fps, "text-to-video"),
        ("duration_s", req.duration_s, "text-to-audio"),
    ):
        if value is not None and task != kind:
            errors.append(FieldError(name, f"applies to {kind} only", None))


def _output(task: Task, req: GenerateRequest, errors: list[FieldError]) -> str:
    """The output format: one the task's media type allows (quality for jpeg/webp only)."""
    media_task = MEDIA_TASK.get(task, task)
    allowed = FORMATS_BY_TASK[media_task]
    output_format = (req.output_format or DEFAULT_FORMAT_BY_TASK[media_task]).lower()
    if output_format not in allowed:
        errors.append(
            FieldError(
                "output_format",
                f"{output_format!r} is not an output of {media_task}; allowed: "
                f"{', '.join(allowed)}",
                list(allowed),
            )
        )
    if req.output_quality is not None and output_format not in ("jpeg", "webp"):
        errors.append(FieldError("output_quality", "applies to jpeg and webp only", None))
    return output_format


def _prompts(req: GenerateRequest, p: ParameterBounds, errors: list[FieldError]) -> None:
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


def _scheduler(entry: ModelEntry, req: GenerateRequest, errors: list[FieldError]) -> str:
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
    return scheduler


def _seed(req: GenerateRequest, num_images: int, errors: list[FieldError]) -> int:
    """The request's seed, or a random one; every output's ``seed + i`` must fit."""
    seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1)
    if seed + num_images - 1 > MAX_SEED:
        errors.append(FieldError("seed", f"seed + num_images - 1 must be <= {MAX_SEED}", MAX_SEED))
    return seed


def _size_multiple(width: int, height: int, multiple: int, errors: list[FieldError]) -> None:
    for name, v in (("width", width), ("height", height)):
        if v and v % multiple:
            errors.append(FieldError(name, f"must be a multiple of {multiple}", multiple))


def _strength_runs_a_step(strength: float | None, steps: int, errors: list[FieldError]) -> None:
    if strength is not None and not errors and int(steps * strength) < 1:
        errors.append(
            FieldError(
                "strength",
                f"with num_inference_steps={steps} it must be >= {1 / steps:.3g} (strength x "
                "steps denoising steps run; at least one)",
                1 / steps,
            )
        )


def resolve_request(
    entry: ModelEntry,
    req: GenerateRequest,
    *,
    request_id: str,
    now: float = 0.0,
    image_size: tuple[int, int] | None = None,
) -> tuple[GenerationJob | None, list[FieldError]]:
    """Fill defaults from the catalog entry and check every bound; all errors at once.
    ``image_size`` is the decoded input image's (width, height): it sets the output size."""
    p = entry.parameters
    spec = FAMILIES[entry.family]
    task, errors = resolve_task(entry, req)
    width, height = _size(req, p, image_size, errors)
    strength = _strength(task, req, p, errors)
    adapters = _adapters(entry, spec, req, errors)
    num_frames = fps = None
    if task == "text-to-video":
        num_frames, fps = _video(entry, spec, req, errors)
    duration_s = None
    if task == "text-to-audio":
        duration_s = _audio_duration(req, p, errors)
        width = height = 0  # no pixels; the clip length is duration_s
    _task_only_fields(task, req, errors)
    output_format = _output(task, req, errors)
    _size_multiple(width, height, spec.size_multiple, errors)
    steps = _int_in("num_inference_steps", req.num_inference_steps, p.steps, errors)
    guidance = _float_in("guidance_scale", req.guidance_scale, p.guidance, errors)
    num_images = _int_in("num_images", req.num_images, p.num_images, errors)
    _prompts(req, p, errors)
    scheduler = _scheduler(entry, req, errors)
    seed = _seed(req, num_images, errors)
    _strength_runs_a_step(strength, steps, errors)
    if errors:
        return None, errors
    params = GenerationParams(
        entry.id,
        width,
        height,
        steps,
        float(guidance),
        scheduler,
        task=task,
        strength=None if strength is None else float(strength),
        adapters=tuple(adapters),
        num_frames=num_frames,
        duration_s=None if duration_s is None else float(duration_s),
    )
    output: dict[str, object] = {"format": output_format}
    output["quality"] = req.output_quality or DEFAULT_QUALITY
    if fps is not None:
        output["fps"] = fps
    extra: dict[str, object] = {"output": output}
    if req.preview:
        extra["preview"] = True  # not part of batch_key: jobs with and without share a call
    job = GenerationJob(
        request_id, params, req.prompt, req.negative_prompt or None, seed, num_images, now, extra
    )
    return job, []


def parameter_schema(entry: ModelEntry) -> dict:
    """What ``GET /v1/models`` shows of one model: defaults, bounds and choices per field."""
    p = entry.parameters
    spec = FAMILIES[entry.family]
    multiple = spec.size_multiple

    def rng(b: IntBounds | FloatBounds, **extra: object) -> dict:
        return {
            "type": "integer" if isinstance(b, IntBounds) else "number",
            "default": b.default,
            "minimum": b.min,
            "maximum": b.max,
            **extra,
        }

    out: dict = {
        "prompt": {"type": "string", "minLength": 1, "maxLength": p.max_prompt_chars},
        "negative_prompt": {"type": "string", "maxLength": p.max_prompt_chars},
    }
    if entry.task != "text-to-audio":
        out["width"] = rng(p.width, multipleOf=multiple)
        out["height"] = rng(p.height, multipleOf=multiple)
    out.update(
        {
            "num_inference_steps": rng(p.steps),
            "guidance_scale": rng(p.guidance),
            "num_images": rng(p.num_images),
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
            "scheduler": {
                "type": "string",
                "enum": entry.allowed_schedulers(),
                "default": entry.scheduler_default(),
            },
        }
    )
    if entry.task == "text-to-video":
        rule = f"{spec.num_frames_step}k + 1" if spec.num_frames_step else None
        out["num_frames"] = rng(p.num_frames, **({"rule": rule} if rule else {}))
        out["fps"] = rng(p.fps)
    if entry.task == "text-to-audio":
        out["duration_s"] = rng(p.duration_s)
    if "image-to-image" in spec.tasks:
        out["image"] = {"type": "string", "description": "image-to-image / inpainting input"}
        out["mask_image"] = {"type": "string", "description": "inpainting mask (white = repaint)"}
        out["strength"] = rng(p.strength)
    if spec.takes_lora:
        out["loras"] = {
            "type": "array",
            "maxItems": p.max_loras,
            "items": {"id": {"type": "string"}, "scale": rng(p.lora_scale)},
        }
    formats = FORMATS_BY_TASK[entry.task]
    out["output_format"] = {"type": "string", "enum": list(formats), "default": formats[0]}
    if entry.task == "text-to-image":
        out["output_quality"] = {"type": "integer", "minimum": 1, "maximum": 100}
    out["return_base64"] = {"type": "boolean", "default": False}
    if supports_preview(entry.family) and entry.task != "text-to-audio":
        out["preview"] = {"type": "boolean", "default": False}
    return out
