"""Typed messages between the gateway, the scheduler and the family workers.

Every call that crosses a process (gateway → scheduler, scheduler → worker and back) carries one
of the types below; each concept has one name, defined here once. No Ray, no FastAPI: the
scheduler's pure policy, the simulator and the unit tests import this module as it is.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from genmedia.models.params import AdapterUse, GenerationJob, GenerationParams, adapter_set_key


class PriorityClass(StrEnum):
    """A job's class: ``interactive`` (latency) goes before ``batch`` (throughput)."""

    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """Lower runs first (the worker's step gate and the dispatcher order by it)."""
        return 0 if self is PriorityClass.INTERACTIVE else 1


PRIORITY_CLASSES: tuple[PriorityClass, ...] = (PriorityClass.INTERACTIVE, PriorityClass.BATCH)


class JobStatus(StrEnum):
    """Where a job is in its life; the last four are terminal."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)


class CancelOutcome(StrEnum):
    """What a cancel did: the gateway answers 200, 409 or 404 from it."""

    CANCELLED = "cancelled"
    ALREADY_FINISHED = "already_finished"
    NOT_FOUND = "not_found"


# -- gateway -> scheduler ---------------------------------------------------------------------


@dataclass
class Submission:
    """A validated request from the gateway, with what admission needs to know about it."""

    tenant: str  # id of the calling tenant (quotas, fair share, output keys)
    model_id: str  # catalog id of the model to run
    priority: PriorityClass  # the class the job queues in
    job: GenerationJob  # resolved parameters, prompt and seed; ``request_id`` already set
    deadline_s: float | None = None  # must have started within this many seconds, or refused
    idempotency_key: str | None = None  # a repeat with the same key answers the first job
    webhook_url: str | None = None  # called when the job ends (queue API only)
    # SHA-256 of the canonical request body, set with an idempotency key: a repeat of the key
    # with another body is refused (409 ``idempotency_key_reused``)
    body_sha256: str | None = None


@dataclass(frozen=True)
class Rejection:
    """Why a submit is refused; the gateway answers ``status`` with ``Retry-After``."""

    status: int  # HTTP status: 429 (quota, rate, queue bound, deadline) or 422 (bad adapter)
    type: str  # error code, e.g. ``tenant_queue_full``
    message: str  # the sentence the caller reads
    retry_after_s: float | None  # seconds before a retry can pass; None: no Retry-After
    field: str | None = None  # the request field at fault, when one is


@dataclass(frozen=True)
class StepProgress:
    """How far a running job is."""

    step: int  # denoising steps done
    total: int  # steps of the whole call


@dataclass(frozen=True)
class JobError:
    """Why a job ended without a result."""

    type: str  # error code, e.g. ``generation_failed``, ``worker_lost``, ``deadline_expired``
    message: str | None  # the sentence the caller reads


@dataclass(frozen=True)
class LogLine:
    """One line of a job's log (model or adapter load, queued, paused, started, finished)."""

    t: float  # unix time it happened
    message: str  # the sentence the caller reads (bounded, ``scheduler/joblogs.py``)


@dataclass(frozen=True)
class Preview:
    """A small approximate RGB preview of a running job's first output at one step."""

    step: int  # the step it shows
    png: bytes  # PNG bytes (RGB, at most ``models/previews.py``'s ``MAX_SIDE`` a side)
    width: int  # pixels
    height: int  # pixels

    def as_dict(self) -> dict[str, Any]:
        """The SSE shape: ``{"step", "png_base64", "width", "height"}``."""
        return {
            "step": self.step,
            "png_base64": base64.b64encode(self.png).decode("ascii"),
            "width": self.width,
            "height": self.height,
        }


@dataclass
class JobStatusView:
    """A job as the scheduler reports it (status, sync wait, progress stream, webhook). The
    optional fields are set only where they apply; ``as_dict`` leaves the others out."""

    request_id: str  # the job's id
    model: str  # catalog id of its model
    status: JobStatus  # where it is in its life
    priority: PriorityClass  # the class it was submitted in
    submitted_at: float  # unix time the scheduler accepted it
    tenant: str  # its tenant (the gateway and webhooks leave it out)
    queue_position: int | None = None  # IN_QUEUE: jobs ahead for the same workers (0 = next)
    eta_s: float | None = None  # IN_QUEUE: predicted seconds until it starts; None if unknown
    progress: StepProgress | None = None  # IN_PROGRESS: steps done
    finished_at: float | None = None  # terminal: unix time it ended
    result: dict[str, Any] | None = None  # COMPLETED: the stored result (outputs, timings, ...)
    error: JobError | None = None  # FAILED / EXPIRED: why
    keepalive: bool = False  # a progress stream's periodic repeat while nothing changed
    logs: list[LogLine] | None = None  # the job's log so far (bounded); shown when asked
    preview: Preview | None = None  # IN_PROGRESS, opted in: the latest preview (streams only)

    def as_dict(
        self, *, tenant: bool = True, result: bool = True, logs: bool = False
    ) -> dict[str, Any]:
        """The JSON shape (status API, SSE, webhooks); ``tenant`` / ``result`` keep those,
        ``logs`` adds the job's log lines; a preview is shown when the view carries one."""
        out: dict[str, Any] = {"type": "keepalive"} if self.keepalive else {}
        out.update(
            request_id=self.request_id,
            model=self.model,
            status=str(self.status),
            priority=str(self.priority),
            submitted_at=self.submitted_at,
        )
        if tenant:
            out["tenant"] = self.tenant
        if self.queue_position is not None:
            out["queue_position"] = self.queue_position
            out["eta_s"] = self.eta_s
        if self.progress is not None:
            out["progress"] = {"step": self.progress.step, "total": self.progress.total}
        if self.status in TERMINAL:
            out["finished_at"] = self.finished_at
        if result and self.status is JobStatus.COMPLETED:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = {"type": self.error.type, "message": self.error.message}
        if logs:
            out["logs"] = [{"t": line.t, "message": line.message} for line in self.logs or []]
        if self.preview is not None:
            out["preview"] = self.preview.as_dict()
        return out


@dataclass
class SubmitAccepted:
    """A submit the scheduler stored (or found: the same idempotency key)."""

    created: bool  # False: a repeat of an earlier submit, ``job`` is that one
    job: JobStatusView  # the job as it is now


@dataclass(frozen=True)
class UsageRow:
    """A tenant's jobs of one model in one status, summed."""

    model_id: str  # catalog id
    status: JobStatus  # the jobs' status
    jobs: int  # how many
    images: int  # outputs produced
    steps: int  # outputs x denoising steps
    compute_s: float  # compute seconds charged


# -- LoRA adapters (admin calls, scheduler <-> worker check) ----------------------------------


@dataclass(frozen=True)
class AdapterError:
    """An adapter call refused; the gateway answers ``status`` naming ``field``."""

    status: int  # HTTP status: 404, 409, 422 or 503
    type: str  # error code, e.g. ``invalid_adapter``
    field: str  # the request field at fault
    message: str  # the sentence the caller reads


@dataclass(frozen=True)
class AdapterInfo:
    """What a worker found checking an adapter file against its base model."""

    path: str  # the local file on the worker that checked it (never shown to callers)
    bytes: int  # file size
    sha256: str  # file digest
    rank: int  # LoRA rank (largest ``lora_A`` row count)
    tensors: int  # tensors in the file


@dataclass(frozen=True)
class AdapterCheck:
    """A worker's answer to ``check_adapter``: ``info`` if the adapter fits, else ``error``."""

    info: AdapterInfo | None = None  # the adapter fits the loaded base model
    error: str | None = None  # why it does not (or could not be read)


@dataclass
class AdapterRecord:
    """A LoRA adapter in the scheduler's registry (the catalog's and those registered)."""

    id: str  # the id a request names in ``loras``
    base_model: str  # catalog id of the model it was trained on
    source: str  # where workers read it: ``s3://``, ``tiny://`` or an absolute local path
    description: str  # free text shown by GET /v1/loras
    origin: str  # ``catalog`` or ``api`` (registered at run time; only those can be deleted)
    status: str  # ``pending`` (not checked yet), ``ready`` or ``failed``
    error: str | None = None  # failed: why
    registered_at: float | None = None  # api: unix time of the registration
    info: AdapterInfo | None = None  # ready: what the check found

    def public(self, *, admin: bool = False) -> dict[str, Any]:
        """What callers see (the worker-local path stays inside); ``source`` and the check's
        error text (they may name buckets, paths, hosts) only for admin tenants."""
        out: dict[str, Any] = {
            "id": self.id,
            "base_model": self.base_model,
            "description": self.description,
            "origin": self.origin,
            "status": self.status,
        }
        if admin:
            out["source"] = self.source
        if self.error is not None:
            out["error"] = self.error if admin else "the adapter failed its check"
        if self.registered_at is not None:
            out["registered_at"] = self.registered_at
        if self.info is not None:
            out.update({k: v for k, v in asdict(self.info).items() if k != "path"})
        return out

    def stored(self) -> dict[str, Any]:
        """The JSON the job store keeps for an adapter registered at run time."""
        out = {k: v for k, v in self.public(admin=True).items() if k != "origin"}
        if self.info is not None:
            out["path"] = self.info.path
        return out

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> AdapterRecord:
        """A record the job store kept (``stored``), registered at run time."""
        info = None
        if "sha256" in d:
            info = AdapterInfo(d["path"], d["bytes"], d["sha256"], d["rank"], d["tensors"])
        return cls(
            id=d["id"],
            base_model=d["base_model"],
            source=d["source"],
            description=d["description"],
            origin="api",
            status=d["status"],
            registered_at=d["registered_at"],
            info=info,
        )


@dataclass(frozen=True)
class AdapterDeleted:
    """An adapter removed from the registry (and the store)."""

    id: str  # the adapter's id

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "deleted": True}


# -- scheduler -> worker and back -------------------------------------------------------------


@dataclass
class BatchRequest:
    """A batch the scheduler formed: compatible jobs of one model and class, one pipeline call."""

    batch_id: str  # the scheduler's id of this call (sidecars, contention spans)
    model_id: str  # catalog id of the model
    priority: PriorityClass  # the batch's class; its rank orders the worker's step gate
    jobs: list[GenerationJob]  # jobs with one ``batch_key``, in dispatch order
    tenants: dict[str, str]  # job id -> tenant (output keys start with it)
    adapters: list[AdapterUse] = field(default_factory=list)  # the LoRA set of the whole batch

    @property
    def multiplex_id(self) -> str:
        """Serve's multiplexed model id: the model, and its adapter set (routing affinity)."""
        if not self.adapters:
            return self.model_id
        return f"{self.model_id}@{adapter_set_key(self.adapters)}"


@dataclass(frozen=True)
class ProgressEvent:
    """A running batch's step, streamed by the worker before its result."""

    step: int  # denoising steps done
    total: int  # steps of the call
    log: str | None = None  # a line for every job's log (model or adapter loaded, paused)
    previews: dict[str, Preview] = field(default_factory=dict)  # job id -> preview (opted in)


@dataclass(frozen=True)
class StoredOutput:
    """One output (image, video or audio clip) the worker stored, as the result lists it."""

    key: str  # storage key; starts with the tenant id
    seed: int  # the output's seed (the job's seed + its index)
    width: int  # pixels (0 for audio)
    height: int  # pixels (0 for audio)
    content_type: str  # MIME type of the stored file
    sha256: str  # digest of the stored bytes
    num_frames: int | None = None  # video
    fps: int | None = None  # video
    duration_s: float | None = None  # video and audio
    sample_rate: int | None = None  # audio
    channels: int | None = None  # audio

    def as_record(self) -> dict[str, Any]:
        """The JSON the result lists (the fields that apply)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class JobOutputs:
    """One job's part of a batch result."""

    job_id: str  # the job's request id
    outputs: list[StoredOutput]  # what was stored, in output order
    compute_s: float  # its share of the call's compute seconds (by outputs)


@dataclass(frozen=True)
class WorkerTimings:
    """Where a batch call's time went on the worker, in seconds."""

    compute_s: float  # wall time computing (pauses and adapter loading left out)
    device_s: float  # device time (``worker/device_time.py``), at most ``compute_s``
    wait_s: float  # at the step gate before the first step
    paused_s: float  # at the step gate between steps (another call computed)
    store_s: float  # encoding and storing the outputs
    adapter_load_s: float  # loading LoRA adapters into the pipeline
    load_s: float = 0.0  # getting the model's pipeline (0 when it was loaded)


@dataclass(frozen=True)
class WorkerResult:
    """The end of a batch call: every job's stored outputs and how the call went."""

    batch_id: str  # the request's ``batch_id``
    jobs: list[JobOutputs]  # per job, in the request's order
    batch_images: int  # outputs of the whole call
    timings: WorkerTimings  # where the time went
    compute_span: tuple[float, float]  # unix times: took the gate, finished computing
    replica: str  # the worker replica that ran it
    device: str  # ``cpu`` or ``cuda``
    acceleration: dict[str, Any]  # kernels and options active on the model
    adapters: list[tuple[str, float]]  # the LoRA set applied: (id, scale)


# -- keys and quotas changed at run time (``tenants/runtime.py``) --------------------------------
@dataclass(frozen=True)
class RuntimeKey:
    """An API key row of the job store: a key added at run time, or the revocation of any key
    (one of the tenants file too: then ``hash`` is that key's and ``revoked_at`` is set)."""

    id: str  # the public key id (8 hex)
    tenant: str
    hash: str  # ``sha256:<hex>`` of the whole key; the plaintext is never stored
    created_at: float  # unix seconds
    revoked_at: float | None = None  # unix seconds; refused from then on
    description: str = ""


@dataclass(frozen=True)
class KeyTable:
    """Every run-time key and quota override, and the version a gateway compares."""

    version: int  # changes whenever the table changes (and when the scheduler restarts)
    keys: tuple[RuntimeKey, ...] = ()
    quotas: dict[str, dict[str, int]] = field(default_factory=dict)  # tenant -> field -> value


@dataclass(frozen=True)
class AdminError:
    """An admin call on keys or quotas refused; the gateway answers ``status`` naming ``field``."""

    status: int  # HTTP status: 404, 409, 422 or 503
    type: str  # error code, e.g. ``not_found``
    field: str  # the request field at fault
    message: str  # the sentence the caller reads


class SchedulerNotActive(RuntimeError):
    """A call reached a standby scheduler replica: another replica holds the job store's lease
    (or none has taken it over yet). Nothing was done; the gateway tries again."""


def job_to_dict(job: GenerationJob) -> dict[str, Any]:
    """A resolved job as the job store keeps it (JSON-ready)."""
    return {**asdict(job), "params": asdict(job.params)}


def job_from_dict(d: dict[str, Any]) -> GenerationJob:
    return GenerationJob(**{**d, "params": GenerationParams(**d["params"])})
