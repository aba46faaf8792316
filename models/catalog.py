"""The model catalog: the file a platform operator writes to say what genmedia serves.

Read once at deploy time (``genmedia serve|deploy|catalog validate``); the app builder turns it
into one worker deployment per family, and the gateway validates every request against the
entry of the model it names. This module holds the model entries and the checks that need the
family specs (``registry.py``); the server-side settings live in ``server_config.py``. No Ray,
no torch here.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from genmedia.kernels.options import KernelOptions, check_options
from genmedia.models.config_issues import field_errors
from genmedia.models.registry import FAMILIES, lora_families
from genmedia.models.server_config import (
    LocalStorage,
    S3Storage,
    SchedulerSettings,
    ServerSettings,
    WebhookPolicy,
    WorkerSettings,
)

__all__ = [
    "DEFAULT_CATALOG",
    "LORA_FAMILIES",
    "Catalog",
    "CatalogError",
    "CatalogIssue",
    "ClassTargets",
    "FloatBounds",
    "IntBounds",
    "LocalStorage",
    "LoraEntry",
    "ModelEntry",
    "ModelScaling",
    "ParameterBounds",
    "S3Storage",
    "SchedulerSettings",
    "ServerSettings",
    "WebhookPolicy",
    "WorkerSettings",
    "load_catalog",
    "parse_catalog",
]

DEFAULT_CATALOG = "default.yaml"

ModelId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="Model id used in URLs: lowercase letters, digits, '.', '_' and '-'.",
    ),
]


LORA_FAMILIES = lora_families()  # families whose pipelines load LoRA adapters


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntBounds(_Strict):
    """An integer request parameter: its default and the inclusive range a request may ask."""

    default: int = Field(description="Value used when the request does not set the parameter.")
    min: int = Field(description="Smallest value a request may ask for (inclusive).")
    max: int = Field(description="Largest value a request may ask for (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> IntBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if not self.min <= self.default <= self.max:
            raise ValueError(f"default {self.default} is outside [{self.min}, {self.max}]")
        return self


class FloatBounds(_Strict):
    """A real-valued request parameter: its default and the inclusive range a request may ask."""

    default: float = Field(description="Value used when the request does not set the parameter.")
    min: float = Field(description="Smallest value a request may ask for (inclusive).")
    max: float = Field(description="Largest value a request may ask for (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> FloatBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if not self.min <= self.default <= self.max:
            raise ValueError(f"default {self.default} is outside [{self.min}, {self.max}]")
        return self


class ParameterBounds(_Strict):
    """Defaults and bounds of the generation parameters for one model."""

    width: IntBounds = Field(
        default=IntBounds(default=512, min=256, max=1024),
        description="Output width in pixels; every value must be a multiple of the family's size "
        "multiple (8 for UNet families, 16 for Flux).",
    )
    height: IntBounds = Field(
        default=IntBounds(default=512, min=256, max=1024),
        description="Output height in pixels; same multiple rule as width.",
    )
    steps: IntBounds = Field(
        default=IntBounds(default=25, min=1, max=100),
        description="Number of denoising steps (num_inference_steps).",
    )
    guidance: FloatBounds = Field(
        default=FloatBounds(default=7.0, min=0.0, max=20.0),
        description="Classifier-free guidance scale (distilled guidance for Flux).",
    )
    num_images: IntBounds = Field(
        default=IntBounds(default=1, min=1, max=4),
        description="Images generated per request; never more than max_batch_size.",
    )
    max_prompt_chars: int = Field(
        default=2000, ge=1, le=100_000, description="Longest prompt (and negative prompt) accepted."
    )
    num_frames: IntBounds = Field(
        default=IntBounds(default=17, min=1, max=81),
        description="Video: frames per clip (the family may add a rule, e.g. 4k + 1 for Wan).",
    )
    fps: IntBounds = Field(
        default=IntBounds(default=16, min=1, max=60),
        description="Video: frames per second of the encoded MP4.",
    )
    duration_s: FloatBounds = Field(
        default=FloatBounds(default=2.0, min=0.5, max=4.0),
        description="Audio: clip length in seconds (never more than the checkpoint's longest).",
    )
    strength: FloatBounds = Field(
        default=FloatBounds(default=0.8, min=0.01, max=1.0),
        description="Image-to-image and inpainting: how much of the input image is re-noised "
        "(1.0 ignores it; small values stay close to it).",
    )
    lora_scale: FloatBounds = Field(
        default=FloatBounds(default=1.0, min=-2.0, max=2.0),
        description="Scale of each LoRA adapter a request names.",
    )
    max_loras: int = Field(
        default=3, ge=0, le=16, description="Most LoRA adapters one request may combine."
    )


class ClassTargets(_Strict):
    """Latency targets per priority class: submit to result, in seconds. The autoscaler sizes a
    family's replicas so that queued work of each class finishes within its target."""

    interactive_s: float = Field(
        default=30.0, gt=0.0, le=86_400.0, description="Target for interactive-class requests."
    )
    batch_s: float = Field(
        default=3600.0, gt=0.0, le=604_800.0, description="Target for batch-class requests."
    )


class ModelScaling(_Strict):
    """What the autoscaler and the placement planner need to know of a model's costs."""

    seconds_per_unit: float = Field(
        default=0.1,
        gt=0.0,
        le=3600.0,
        description="Expected seconds of one work unit (one denoising step of one image at one "
        "megapixel) on the target GPU: the service-time estimate until the scheduler has "
        "measured calls, and the floor of the class-target check.",
    )
    load_s: float = Field(
        default=10.0,
        ge=0.0,
        le=3600.0,
        description="Cold start: seconds from a new worker replica being placed to this model "
        "being loaded and ready. A guess until a worker replica has loaded the model: the "
        "autoscaling policy then uses the load time the replica measured.",
    )
    scale_to_zero: bool = Field(
        default=False,
        description="Let this model's worker scale to zero when idle even though its cold start "
        "(load_s) is longer than its interactive target. Without it, a family with "
        "min_replicas 0 goes to zero only when every model's cold start fits its target.",
    )


class ModelEntry(_Strict):
    """One servable model."""

    id: ModelId
    family: str = Field(description=f"Model family; one of: {', '.join(sorted(FAMILIES))}.")
    task: Literal["text-to-image", "text-to-video", "text-to-audio"] = Field(
        default="text-to-image",
        description="What the model makes; image models also take image-to-image and inpainting "
        "requests when their family does.",
    )
    weights: str = Field(
        min_length=1,
        description="Where the diffusers checkpoint (safetensors only) lives: a local directory "
        "(absolute, or relative to the catalog file), 's3://bucket/prefix', or 'tiny://<family>' "
        "for the built-in random-weight test model.",
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="Weight and compute dtype on the worker."
    )
    description: str = Field(default="", description="Free text shown by GET /v1/models.")
    parameters: ParameterBounds = Field(
        default_factory=ParameterBounds, description="Request parameter defaults and bounds."
    )
    schedulers: list[str] | None = Field(
        default=None,
        description="Scheduler names a request may pick; default: every scheduler of the family.",
    )
    default_scheduler: str | None = Field(
        default=None, description="Scheduler used when the request names none."
    )
    max_batch_size: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most images one pipeline call may hold; only compatible requests (same "
        "size, steps, guidance, scheduler) share a call.",
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=10_000.0,
        description="How long an idle pipeline waits for a fuller batch before it starts.",
    )
    gpu_fraction: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="Share of one GPU this model needs; a family worker asks Ray for the sum over "
        "its models.",
    )
    memory_gb: float = Field(
        default=4.0, gt=0.0, le=1024.0, description="GPU memory footprint when loaded, in GiB."
    )
    priority_class: Literal["interactive", "batch"] = Field(
        default="interactive",
        description="'batch' makes requests that name no class batch-class on both APIs (long "
        "jobs: video, audio); 'interactive' leaves the default to the API (sync: interactive, "
        "queue: the tenant's default class).",
    )
    max_loaded_adapters: int = Field(
        default=8,
        ge=1,
        le=256,
        description="LoRA adapters a worker replica keeps loaded into this model (least recently "
        "used replaced beyond); switching between loaded adapters never reloads the base model.",
    )
    max_lora_rank: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Largest LoRA rank accepted for this model; every adapter slot is padded to it "
        "so a new adapter is hot-swapped into a slot instead of injecting new layers.",
    )
    acceleration: KernelOptions = Field(
        default_factory=KernelOptions,
        description="Attention backend, fused Triton ops (kernels: [...]), torch.compile, step "
        "caching and quantization installed into the pipeline at load time.",
    )
    slo: ClassTargets = Field(
        default_factory=ClassTargets,
        description="Latency targets per priority class (submit to result), in seconds.",
    )
    scaling: ModelScaling = Field(
        default_factory=ModelScaling,
        description="Service-time and cold-start estimates for the autoscaler; scale-to-zero "
        "opt-in.",
    )

    def min_service_s(self) -> float:
        """The shortest possible service time: the smallest request the bounds allow (fewest
        images and steps, smallest size) at the expected seconds per work unit."""
        p = self.parameters
        units = p.num_images.min * p.steps.min * p.width.min * p.height.min / 1e6
        return units * self.scaling.seconds_per_unit

    def allowed_schedulers(self) -> list[str]:
        spec = FAMILIES.get(self.family)
        return list(self.schedulers or (spec.schedulers if spec else ()))

    def scheduler_default(self) -> str:
        spec = FAMILIES[self.family]
        if self.default_scheduler:
            return self.default_scheduler
        allowed = self.allowed_schedulers()
        return spec.default_scheduler if spec.default_scheduler in allowed else allowed[0]


_SHA256_PIN = re.compile(r"^sha256=[0-9a-f]{64}$")


def _url_source(scheme: str, rest: str) -> str:
    """An http(s) adapter source in its plain form: a host, no user info, and only a
    ``#sha256=<64 hex>`` fragment (the address checks happen when it is fetched)."""
    parts = urlsplit(f"{scheme}://{rest}")
    if not parts.hostname:
        raise ValueError("source URL has no host")
    if "@" in parts.netloc:
        raise ValueError("source URL must not carry user info (user:password@)")
    if parts.fragment and not _SHA256_PIN.match(parts.fragment):
        raise ValueError(
            "source URL fragment must be '#sha256=<64 lowercase hex digits>' (the content's "
            "digest) or nothing"
        )
    return urlunsplit(parts._replace(scheme=scheme))


class LoraEntry(_Strict):
    """A LoRA adapter the catalog serves (more can be registered at run time)."""

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="Adapter id a request names in 'loras': lowercase letters, digits, '.', '_', "
        "'-'.",
    )
    base_model: str = Field(description="Id of the catalog model the adapter was trained on.")
    source: str = Field(
        min_length=1,
        max_length=4096,
        description="A .safetensors file: a local path (absolute, or relative to the catalog "
        "file), 's3://bucket/key.safetensors', 'https://host/path' (or 'http://' to a host in "
        "server.inputs.allowed_http_hosts; fetched once, checked as safetensors and kept in "
        "the server's storage by content hash; a '#sha256=<hex>' suffix pins the content), "
        "or 'tiny://<family>/<name>' for a built-in random test adapter.",
    )
    description: str = Field(default="", description="Free text shown by GET /v1/loras.")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        v = v.strip()
        scheme, sep, rest = v.partition("://")
        if not sep or "/" in scheme or "\\" in scheme:
            return v  # a local path
        scheme = scheme.lower()
        if scheme not in ("http", "https", "s3", "file", "tiny"):
            raise ValueError(
                f"source scheme {scheme!r}:// is not accepted; use a local path, s3://, "
                "https:// (http:// to allowed hosts) or tiny://"
            )
        if scheme in ("http", "https"):
            return _url_source(scheme, rest)
        return v


class Catalog(_Strict):
    """A catalog file: server settings, per-family worker settings and the models."""

    version: Literal[1] = Field(default=1, description="Catalog format version.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="Gateway settings.")
    workers: dict[str, WorkerSettings] = Field(
        default_factory=dict, description="Worker settings per family (defaults when absent)."
    )
    models: list[ModelEntry] = Field(min_length=1, description="The models served.")
    loras: list[LoraEntry] = Field(
        default_factory=list, description="LoRA adapters served from start-up."
    )
    source: str | None = Field(
        default=None, exclude=True, description="File the catalog was read from (set on load)."
    )

    def model(self, model_id: str) -> ModelEntry | None:
        return next((m for m in self.models if m.id == model_id), None)

    def families(self) -> dict[str, list[ModelEntry]]:
        out: dict[str, list[ModelEntry]] = defaultdict(list)
        for m in self.models:
            out[m.family].append(m)
        return dict(out)

    def worker(self, family: str) -> WorkerSettings:
        return self.workers.get(family, WorkerSettings())

    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        """A local path from the catalog: ~ and $VARS expanded, relative to the catalog file."""
        p = Path(os.path.expandvars(os.path.expanduser(value)))
        return p if p.is_absolute() else (self.base_dir() / p).resolve()


@dataclass(frozen=True)
class CatalogIssue:
    """One problem found in a catalog file, located by file, model id and field."""

    file: str
    model_id: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"model {self.model_id!r}" if self.model_id else "catalog"
        return f"{self.file}: {where}: {self.field}: {self.message}"


class CatalogError(Exception):
    """Every issue found in a catalog file."""

    def __init__(self, issues: list[CatalogIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def _entry_issues(entry: ModelEntry, file: str) -> list[CatalogIssue]:
    """Cross-field checks that need the family spec."""
    issues: list[CatalogIssue] = []

    def add(field: str, message: str) -> None:
        issues.append(CatalogIssue(file, entry.id, field, message))

    spec = FAMILIES.get(entry.family)
    if spec is None:
        add("family", f"unknown family {entry.family!r}; known: {', '.join(sorted(FAMILIES))}")
        return issues
    if entry.task not in spec.tasks:
        add("task", f"family {spec.name} does not do {entry.task!r}; it does {list(spec.tasks)}")
    step = spec.num_frames_step
    if step and (entry.parameters.num_frames.default - 1) % step:
        add("parameters.num_frames.default", f"must be {step}k + 1 for the {spec.name} family")
    for name in entry.schedulers or ():
        if name not in spec.schedulers:
            add(
                "schedulers",
                f"unknown scheduler {name!r} for {spec.name}; known: {', '.join(spec.schedulers)}",
            )
    if entry.schedulers is not None and not entry.schedulers:
        add("schedulers", "must list at least one scheduler (or be left out)")
    if entry.default_scheduler and entry.default_scheduler not in entry.allowed_schedulers():
        add(
            "default_scheduler",
            f"{entry.default_scheduler!r} is not among the allowed "
            f"schedulers {entry.allowed_schedulers()}",
        )
    for dim in ("width", "height"):
        b: IntBounds = getattr(entry.parameters, dim)
        for key in ("default", "min", "max"):
            v = getattr(b, key)
            if v % spec.size_multiple or v <= 0:
                add(
                    f"parameters.{dim}.{key}",
                    f"{v} is not a positive multiple of {spec.size_multiple} ({spec.name})",
                )
    for field, message in check_options(entry.family, entry.acceleration, None, entry.dtype):
        add(f"acceleration.{field}", message)
    shortest = entry.min_service_s()
    for cls in ("interactive", "batch"):
        target = getattr(entry.slo, f"{cls}_s")
        if target <= shortest:
            add(
                f"slo.{cls}_s",
                f"target {target:g} s is shorter than the shortest possible service time "
                f"{shortest:.3g} s (scaling.seconds_per_unit {entry.scaling.seconds_per_unit:g} x "
                "the smallest request the parameter bounds allow)",
            )
    if entry.parameters.num_images.max > entry.max_batch_size:
        add(
            "parameters.num_images.max",
            f"{entry.parameters.num_images.max} exceeds max_batch_size {entry.max_batch_size}",
        )
    return issues


def _inverted_replica_issues(
    workers: object, by_family: dict[str, list[ModelEntry]], file: str
) -> list[CatalogIssue]:
    """Inverted replica bounds, reported on every model the family's worker serves."""
    issues: list[CatalogIssue] = []
    for family, raw in (workers if isinstance(workers, dict) else {}).items():
        if not isinstance(raw, dict):
            continue
        lo, hi = raw.get("min_replicas", 1), raw.get("max_replicas", 1)
        if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
            for m in by_family.get(family, []):
                issues.append(
                    CatalogIssue(
                        file,
                        m.id,
                        f"workers.{family}.min_replicas",
                        f"{lo} is greater than workers.{family}.max_replicas {hi} (the {family} "
                        "worker serves this model)",
                    )
                )
    return issues


def _model_entries(raw_models: object, file: str) -> tuple[list[ModelEntry], list[CatalogIssue]]:
    """The valid model entries, and the issues of every entry (named by id, else by position)."""
    entries: list[ModelEntry] = []
    issues: list[CatalogIssue] = []
    if not isinstance(raw_models, list):
        return entries, issues
    for i, raw in enumerate(raw_models):
        mid = raw.get("id") if isinstance(raw, dict) else None
        mid = mid if isinstance(mid, str) else f"#{i}"
        try:
            entry = ModelEntry.model_validate(raw)
        except ValidationError as e:
            issues += [CatalogIssue(file, mid, f, m) for f, m in field_errors(e)]
            continue
        issues += _entry_issues(entry, file)
        entries.append(entry)
    return entries, issues


def _whole_catalog(data: dict, file: str) -> tuple[Catalog | None, list[CatalogIssue]]:
    """The catalog as a whole, and its issues outside the models (reported per model)."""
    try:
        return Catalog.model_validate({**data, "source": file}), []
    except ValidationError as e:
        return None, [
            CatalogIssue(file, None, field, message)
            for field, message in field_errors(e)
            if not (field.startswith("models.") and field != "models")
        ]


def _shared_gpu_issues(
    entries: list[ModelEntry], by_family: dict[str, list[ModelEntry]], file: str
) -> list[CatalogIssue]:
    """Duplicate model ids, and families whose models need more than one GPU together."""
    issues: list[CatalogIssue] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            issues.append(CatalogIssue(file, entry.id, "id", "duplicate model id"))
        seen.add(entry.id)
    for family, members in by_family.items():
        total = sum(m.gpu_fraction for m in members)
        if total > 1.0 + 1e-9:
            for m in members:
                issues.append(
                    CatalogIssue(
                        file,
                        m.id,
                        "gpu_fraction",
                        f"the {family} worker holds {', '.join(x.id for x in members)}: their "
                        f"gpu_fraction sums to {total:g} > 1 (one worker replica sits on one GPU)",
                    )
                )
    return issues


def _lora_issues(
    catalog: Catalog | None, entries: list[ModelEntry], file: str
) -> list[CatalogIssue]:
    """Adapters naming a missing model or a family without LoRA, non-safetensors sources and
    duplicate adapter ids."""
    if catalog is None:
        return []
    issues: list[CatalogIssue] = []
    by_id = {e.id: e for e in entries}
    for lora in catalog.loras:
        where = f"loras.{lora.id}"
        base = by_id.get(lora.base_model)
        if base is None:
            issues.append(CatalogIssue(file, None, f"{where}.base_model", "no such model"))
        elif base.family not in LORA_FAMILIES:
            message = f"the {base.family} family takes no LoRA adapters"
            issues.append(CatalogIssue(file, None, f"{where}.base_model", message))
        if not (lora.source.endswith(".safetensors") or lora.source.startswith("tiny://")):
            issues.append(
                CatalogIssue(file, None, f"{where}.source", "must be a .safetensors file")
            )
    if len({x.id for x in catalog.loras}) != len(catalog.loras):
        issues.append(CatalogIssue(file, None, "loras", "duplicate adapter id"))
    return issues


def _worker_family_issues(
    workers: Any, by_family: dict[str, list[ModelEntry]], file: str
) -> list[CatalogIssue]:
    """Worker settings for an unknown family or for a family with no model."""
    issues: list[CatalogIssue] = []
    for family in workers or {}:
        if family not in FAMILIES:
            message = f"unknown family; known: {', '.join(sorted(FAMILIES))}"
        elif family not in by_family:
            message = "settings for a family with no model in the catalog"
        else:
            continue
        issues.append(CatalogIssue(file, None, f"workers.{family}", message))
    return issues


def parse_catalog(data: object, file: str = "<catalog>") -> Catalog:
    """Validate catalog data; raise CatalogError listing every issue found."""
    if not isinstance(data, dict):
        raise CatalogError([CatalogIssue(file, None, "(root)", "must be a mapping")])
    entries, issues = _model_entries(data.get("models"), file)
    catalog, catalog_issues = _whole_catalog(data, file)
    issues += catalog_issues
    by_family: dict[str, list[ModelEntry]] = defaultdict(list)
    for entry in entries:
        by_family[entry.family].append(entry)
    issues += _shared_gpu_issues(entries, by_family, file)
    issues += _lora_issues(catalog, entries, file)
    issues += _inverted_replica_issues(data.get("workers"), by_family, file)
    issues += _worker_family_issues(data.get("workers"), by_family, file)
    if issues or catalog is None:
        raise CatalogError(issues)
    return catalog


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file; None reads the embedded default catalog."""
    if path is None:
        ref = resources.files("genmedia.models") / "catalogs" / DEFAULT_CATALOG
        file = str(ref)
        text = ref.read_text()
    else:
        file = str(Path(path).resolve())
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise CatalogError(
                [CatalogIssue(str(path), None, "(file)", e.strerror or str(e))]
            ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        raise CatalogError([CatalogIssue(file, None, where, f"invalid YAML: {e}")]) from None
    return parse_catalog(data, file)
