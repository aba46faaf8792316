"""Typed answers of the gateway as the client returns them: statuses, results, outputs,
uploads, stream events and bulk submits.

Last step of an answer's way into the caller's code: the JSON bodies of ``deployments/api``
(``schemas.py``) parsed into pydantic models. Every model ignores nothing and requires little:
keys the server adds later stay readable as extra attributes (``model_extra``) and never break
parsing, so an older client keeps working against a newer gateway.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from genmedia.client.errors import GenmediaError

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "EXPIRED"})


class Model(BaseModel):
    """Base: extra keys are kept (``model_extra``), ``model_`` field names allowed."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), populate_by_name=True)


class Progress(Model):
    step: int
    total: int

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


class JobError(Model):
    type: str
    message: str | None = None


class LogEntry(Model):
    t: float | None = None
    message: str = ""


class Preview(Model):
    """A small approximate RGB picture of the current step (a fixed latent projection)."""

    step: int | None = None
    png_base64: str
    width: int | None = None
    height: int | None = None

    def png(self) -> bytes:
        return base64.b64decode(self.png_base64)


class Status(Model):
    """A job's status: the submit's answer, the status route's, and every stream event's."""

    request_id: str
    model: str | None = None
    status: str
    priority: str | None = None
    created: bool | None = None
    submitted_at: float | None = None
    queue_position: int | None = None
    eta_s: float | None = None
    progress: Progress | None = None
    finished_at: float | None = None
    error: JobError | None = None
    logs: list[LogEntry] | None = None
    preview: Preview | None = None
    status_url: str | None = None
    result_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None
    stream_url: str | None = None

    @property
    def done(self) -> bool:
        """True once the job is COMPLETED, FAILED, CANCELLED or EXPIRED."""
        return self.status in TERMINAL


class Output(Model):
    """One output (image, video or audio clip) and where to fetch it."""

    url: str
    path: str | None = None
    key: str | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    sha256: str | None = None
    num_frames: int | None = None
    fps: int | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    base64: str | None = None

    @property
    def filename(self) -> str:
        """``<request dir>-<name>`` of its path (``.../<request_id>/0.png`` → ``<id>-0.png``)."""
        parts = [p for p in (self.path or self.url.split("?", 1)[0]).split("/") if p]
        return "-".join(parts[-2:]) if len(parts) >= 2 else (parts[-1] if parts else "output")


class Timings(Model):
    """Where the job's time went, in seconds (see the API's ``Timings``)."""

    queue_s: float | None = None
    load_s: float | None = None
    adapter_load_s: float | None = None
    wait_s: float | None = None
    paused_s: float | None = None
    compute_s: float | None = None
    device_s: float | None = None
    store_s: float | None = None
    total_s: float | None = None


class Result(Model):
    """A completed job: its outputs and how it ran."""

    request_id: str
    id: str | None = None
    model: str | None = None
    status: str = "COMPLETED"
    priority: str | None = None
    seed: int | None = None
    task: str | None = None
    parameters: dict[str, Any] = {}
    timings: Timings | None = None
    batch: dict[str, Any] | None = None
    device: str | None = None
    acceleration: dict[str, Any] | None = None
    loras: list[dict[str, Any]] | None = None
    outputs: list[Output] = []

    @property
    def images(self) -> list[Output]:
        return self.outputs


class Upload(Model):
    """An uploaded input image: send ``id`` as ``image`` or ``mask_image``."""

    id: str
    url: str | None = None
    path: str | None = None
    content_type: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None


class ModelInfo(Model):
    id: str
    family: str | None = None
    task: str | None = None
    description: str | None = None
    priority_class: str | None = None
    max_batch_size: int | None = None
    parameters: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class JobHandle:
    """A submitted job: its id, URLs and the submit's answer (``initial``). Every client
    method that takes a request id also takes a handle."""

    request_id: str
    initial: Status

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobHandle:
        status = Status.model_validate(body)
        return cls(request_id=status.request_id, initial=status)

    @property
    def created(self) -> bool | None:
        """False when the idempotency key matched an earlier job, which this handle is."""
        return self.initial.created

    @property
    def status_url(self) -> str | None:
        return self.initial.status_url

    @property
    def result_url(self) -> str | None:
        return self.initial.response_url or self.initial.result_url

    @property
    def cancel_url(self) -> str | None:
        return self.initial.cancel_url

    @property
    def stream_url(self) -> str | None:
        return self.initial.stream_url


RequestRef = str | JobHandle


def request_id_of(ref: RequestRef) -> str:
    return ref.request_id if isinstance(ref, JobHandle) else ref


@dataclass(frozen=True)
class StreamEvent:
    """One event of a job's SSE stream; ``status`` is the job's status at that moment."""

    status: Status

    @property
    def progress(self) -> Progress | None:
        return self.status.progress

    @property
    def preview(self) -> Preview | None:
        return self.status.preview


@dataclass(frozen=True)
class StatusEvent(StreamEvent):
    """The status changed or a step finished."""


@dataclass(frozen=True)
class KeepaliveEvent(StreamEvent):
    """Nothing changed for a while; the stream is alive."""


@dataclass(frozen=True)
class BulkItem:
    """One item of a bulk submit: accepted (``handle``) or refused (``error``, an exception
    instance of the item's status, not raised)."""

    index: int
    status: int
    handle: JobHandle | None = None
    error: GenmediaError | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.handle is not None


@dataclass(frozen=True)
class BulkSubmission:
    """The answer of ``submit_many``: per item, in the order the arguments were given."""

    items: list[BulkItem] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(1 for i in self.items if i.ok)

    @property
    def refused(self) -> int:
        return len(self.items) - self.accepted

    @property
    def handles(self) -> list[JobHandle]:
        return [i.handle for i in self.items if i.handle is not None]
