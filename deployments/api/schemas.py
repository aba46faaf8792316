"""Response bodies of the HTTP API, as pydantic models: what ``/docs`` shows for every answer.

Last step of a request's way out: the routers declare these as ``response_model`` and FastAPI
checks each answer of ``intake.GatewayService`` against them. The routers dump with
``exclude_unset``, so a key the service leaves out stays out and a ``null`` it sends stays
``null``. Every model allows extra keys: a stored record may carry more than is declared here and
the answer keeps it. Fields are declared in the order the service writes them, so the JSON keeps
its key order. Request bodies live with the models (``models/params.py``, ``models/catalog.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from genmedia.deployments.protocol import JobStatus, PriorityClass

# A JSON number kept as it was sent: an int stays an int (a plain ``float`` would answer 7.0
# where the service wrote 7).
Number = Annotated[int | float, WithJsonSchema({"type": "number"})]


class Body(BaseModel):
    """Base of every response body: extra keys pass through, ``model_`` names are allowed."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


# -- errors ------------------------------------------------------------------------------------


class ErrorField(Body):
    field: str = Field(
        description="The request part at fault: a body field (dotted path), a header, "
        "'model_id', 'request_id', 'path' or 'body'."
    )
    message: str = Field(description="What is wrong with it.")
    limit: Any = Field(
        description="The bound or rule it breaks (a number, a list of choices, a rule name), "
        "or null."
    )


class ErrorDetail(Body):
    type: str = Field(
        description="Machine-readable code in lower snake_case, e.g. 'invalid_request', "
        "'unauthorized', 'forbidden', 'model_not_found', 'not_found', 'rate_limited', "
        "'tenant_queue_full', 'unavailable'."
    )
    message: str = Field(description="A sentence for people.")
    fields: list[ErrorField] = Field(description="The fields at fault (may be empty).")


class ErrorBody(Body):
    """Every 4xx and 5xx answer of the API."""

    error: ErrorDetail


# -- health ------------------------------------------------------------------------------------


class Health(Body):
    status: Literal["ok"] = Field(description="Always 'ok' when the gateway answers.")


class FamilyReadiness(Body):
    """One family worker's readiness report (the keys it sends)."""

    replica: str | None = Field(None, description="The worker replica that answered.")
    loaded: list[str] | None = Field(None, description="Models loaded on it.")
    adapters: dict[str, list[str]] | None = Field(
        None, description="LoRA adapters loaded, per model."
    )
    running: int | None = Field(None, description="Pipeline calls running on it.")
    error: str | None = Field(None, description="Why it did not answer.")


class Readiness(Body):
    ready: bool = Field(description="True when every family worker has its models loaded.")
    families: dict[str, FamilyReadiness | str] = Field(
        description="Per family, its worker's report; when the scheduler cannot be reached, "
        "one 'scheduler' key with the error."
    )


# -- models ------------------------------------------------------------------------------------


class LoadSeconds(Body):
    measured: Number | None = Field(
        description="Seconds a worker replica took to load it (null until one has)."
    )
    catalog: Number = Field(description="The catalog's figure (scaling.load_s).")


class ModelInfo(Body):
    id: str = Field(description="Catalog id, used in the model URLs.")
    family: str = Field(description="Model family (sd15, sdxl, flux, ...).")
    family_title: str = Field(description="The family's readable name.")
    task: str = Field(description="text-to-image, text-to-video or text-to-audio.")
    description: str = Field(description="Free text from the catalog.")
    dtype: str = Field(description="Weights' dtype on the worker.")
    max_batch_size: int = Field(description="Outputs one pipeline call computes at most.")
    priority_class: PriorityClass = Field(description="The class its jobs default to.")
    parameters: dict[str, dict[str, Any]] = Field(
        description="Per request field, a JSON schema of what it accepts (type, default, "
        "bounds, choices)."
    )
    load_s: LoadSeconds | None = Field(
        None, description="Cold start: the measured load time and the catalog's guess."
    )


class ModelList(Body):
    models: list[ModelInfo] = Field(description="The models the caller may use.")


# -- jobs --------------------------------------------------------------------------------------


class StepProgressBody(Body):
    step: int = Field(description="Denoising steps done.")
    total: int = Field(description="Steps of the whole call.")


class JobErrorBody(Body):
    type: str = Field(description="Why the job ended, e.g. 'generation_failed'.")
    message: str | None = Field(description="A sentence for people, or null.")


class JobStatusBody(Body):
    """A job's status (the queue API's submit, status and stream; the result of a job that
    ended without one). The optional keys appear only where they apply."""

    created: bool | None = Field(
        None,
        description="Submit only: false when the Idempotency-Key matched an earlier job, "
        "which this body describes.",
    )
    request_id: str = Field(description="The job's id.")
    model: str = Field(description="Catalog id of its model.")
    status: JobStatus
    priority: PriorityClass = Field(description="The class it queues in.")
    submitted_at: Number = Field(description="Unix time the scheduler accepted it.")
    queue_position: int | None = Field(
        None, description="IN_QUEUE: jobs ahead of it for the same workers (0 = next)."
    )
    eta_s: Number | None = Field(
        None, description="IN_QUEUE: predicted seconds until it starts; null when unknown."
    )
    progress: StepProgressBody | None = Field(None, description="IN_PROGRESS: steps done.")
    finished_at: Number | None = Field(None, description="Terminal states: unix time it ended.")
    error: JobErrorBody | None = Field(None, description="FAILED, EXPIRED: why.")
    status_url: str
    result_url: str
    response_url: str | None = Field(None, description="The same as result_url (fal's name).")
    cancel_url: str
    stream_url: str


HARD_MAX_BULK_ITEMS = 10_000  # parse-time bound; the catalog's server.max_bulk_items is lower


class BulkSubmitBody(Body):
    """Body of a bulk submit: the jobs, each validated on its own."""

    model_config = ConfigDict(extra="forbid")

    requests: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=HARD_MAX_BULK_ITEMS,
        description="The jobs: each the single submit's body (GenerateRequest) plus an optional "
        "'idempotency_key'; at most the catalog's server.max_bulk_items (default 1000).",
    )


class BulkItemAnswer(Body):
    """One job's answer, at its index in the request."""

    index: int = Field(description="Its place in 'requests'.")
    status: int = Field(description="202 when accepted, else the item's own 4xx/429 status.")
    job: JobStatusBody | None = Field(None, description="202: the job (as a single submit's).")
    error: ErrorDetail | None = Field(None, description="4xx/429: why it was refused.")
    retry_after_s: Number | None = Field(
        None, description="429: seconds before a retry of this item can pass."
    )


class BulkSubmitResult(Body):
    """A bulk submit's answer: one entry per job, in request order."""

    accepted: int = Field(description="Jobs accepted (202 items).")
    refused: int = Field(description="Jobs refused.")
    items: list[BulkItemAnswer]


class LoraUse(Body):
    id: str = Field(description="Adapter id.")
    scale: Number = Field(description="Its weight.")


class GenerationParameters(Body):
    """The parameters the job ran with (defaults filled in)."""

    model_id: str | None = None
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: Number | None = None
    scheduler: str | None = None
    task: str | None = None
    strength: Number | None = Field(None, description="image-to-image and inpainting.")
    num_frames: int | None = Field(None, description="Video.")
    duration_s: Number | None = Field(None, description="Audio.")
    loras: list[LoraUse] | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    num_images: int | None = None


class Timings(Body):
    """Where the job's time went, in seconds."""

    queue_s: Number = Field(description="Submitted until its pipeline call started.")
    load_s: Number | None = Field(None, description="Loading the model's pipeline.")
    adapter_load_s: Number | None = Field(None, description="Loading LoRA adapters.")
    wait_s: Number | None = Field(None, description="At the worker's step gate, before step 1.")
    paused_s: Number | None = Field(None, description="At the step gate between steps.")
    compute_s: Number = Field(description="Computing (pauses and loading left out).")
    device_s: Number | None = Field(None, description="Device time, at most compute_s.")
    store_s: Number | None = Field(None, description="Encoding and storing the outputs.")
    total_s: Number = Field(description="Submitted until stored.")


class BatchInfo(Body):
    id: str = Field(description="The pipeline call's id.")
    images: int = Field(description="Outputs of the whole call.")
    requests: int = Field(description="Jobs that shared it.")


class Output(Body):
    """One output (image, video or audio clip)."""

    key: str = Field(description="Storage key.")
    seed: int = Field(description="This output's seed (the job's seed + its index).")
    width: int = Field(description="Pixels (0 for audio).")
    height: int = Field(description="Pixels (0 for audio).")
    content_type: str = Field(description="MIME type.")
    sha256: str = Field(description="Digest of the stored bytes.")
    num_frames: int | None = Field(None, description="Video.")
    fps: int | None = Field(None, description="Video.")
    duration_s: Number | None = Field(None, description="Video and audio.")
    sample_rate: int | None = Field(None, description="Audio.")
    channels: int | None = Field(None, description="Audio.")
    url: str = Field(description="Where to fetch it (GET /v1/files/... or a presigned URL).")
    path: str = Field(description="Its path under /v1/files/.")
    base64: str | None = Field(
        None, description="With return_base64: the file's bytes (null if it is gone)."
    )


class JobResult(Body):
    """A completed job: its outputs and how it ran."""

    id: str = Field(description="The job's id (same as request_id).")
    request_id: str
    model: str
    status: Literal["COMPLETED"]
    priority: PriorityClass | None
    seed: int = Field(description="The job's seed.")
    parameters: GenerationParameters
    timings: Timings
    batch: BatchInfo
    device: str | None = Field(None, description="cpu or cuda.")
    acceleration: dict[str, Any] | None = Field(
        None, description="Kernels and options active on the model."
    )
    loras: list[LoraUse] | None = Field(None, description="The LoRA set applied.")
    task: str | None = None
    outputs: list[Output] = Field(description="Every output, for every task.")
    images: list[Output] | None = Field(
        None, description="Image tasks: the outputs again, under their historical name."
    )


class CancelAccepted(Body):
    request_id: str
    status: Literal["CANCELLATION_REQUESTED"] = Field(
        description="A queued job leaves the queue; a running one stops at its next step."
    )


# -- files, adapters, usage --------------------------------------------------------------------


class Upload(Body):
    id: str = Field(description="Upload id: send it as 'image' or 'mask_image'.")
    path: str = Field(description="Its path under /v1/files/.")
    url: str
    content_type: str
    bytes: int = Field(description="Size of the file.")
    width: int
    height: int


class Adapter(Body):
    """A LoRA adapter of the registry."""

    id: str = Field(description="The id a request names in 'loras'.")
    base_model: str = Field(description="Catalog id of the model it was trained on.")
    source: str | None = Field(
        None,
        description="Where workers read it (s3://, tiny:// or a local path); admin tenants only.",
    )
    description: str
    origin: str = Field(
        description="'catalog', or 'api': registered at run time (only those can be deleted)."
    )
    status: str = Field(description="'pending' (not checked yet), 'ready' or 'failed'.")
    error: str | None = Field(None, description="failed: why.")
    registered_at: Number | None = Field(None, description="api: unix time of registration.")
    bytes: int | None = Field(None, description="ready: file size.")
    sha256: str | None = Field(None, description="ready: file digest.")
    rank: int | None = Field(None, description="ready: LoRA rank.")
    tensors: int | None = Field(None, description="ready: tensors in the file.")


class AdapterList(Body):
    loras: list[Adapter] = Field(description="Adapters of the models the caller may use.")


class AdapterDeleted(Body):
    id: str
    deleted: Literal[True]


class ModelUsage(Body):
    jobs: int
    images: int = Field(description="Outputs produced.")
    steps: int = Field(description="Outputs x denoising steps.")
    compute_s: Number = Field(description="Compute seconds charged.")
    by_status: dict[str, int] = Field(description="Jobs per status.")


class Usage(Body):
    tenant: str
    models: dict[str, ModelUsage] = Field(description="Per model id.")
