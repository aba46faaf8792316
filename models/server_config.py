"""The server side of the catalog file: gateway, scheduler, storage, webhook and worker settings.

Read once at deploy time with the rest of the catalog (``models/catalog.py`` holds them in
``Catalog.server`` and ``Catalog.workers``); the app builder sizes the Ray Serve deployments
from them, the scheduler opens its job store and webhook policy, the gateway its output storage.
Config schemas only (pydantic, a description on every field): no Ray, no torch.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookPolicy(BaseModel):
    """Where webhooks may go and how hard delivery tries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_private: bool = Field(
        default=False,
        description="Allow URLs resolving to any non-public address (loopback, private, "
        "link-local, ...); development clusters only.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Exceptions to the public-address rule: exact host names (every address they "
        "resolve to is allowed) or IP addresses / CIDRs (e.g. '10.1.0.0/16', '127.0.0.1').",
    )
    timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        le=300.0,
        description="Total deadline of one attempt: host lookup, connect, sending the body and "
        "the answer's status line.",
    )
    resolve_timeout_s: float = Field(
        default=5.0,
        gt=0.0,
        le=60.0,
        description="Longest wait for the host lookup of a webhook URL, at submit (the request "
        "is refused with rule 'resolve') and before each attempt (retried).",
    )
    max_concurrent: int = Field(
        default=32, ge=1, le=1024, description="Deliveries in flight at once, all tenants."
    )
    max_concurrent_per_tenant: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Deliveries in flight at once for one tenant; its other due events wait "
        "in the outbox.",
    )
    progress_interval_s: float = Field(
        default=2.0,
        ge=0.5,
        le=3600.0,
        description="At most one 'job.progress' event per job in this many seconds (tenants "
        "whose webhook_events include 'progress').",
    )
    max_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts per event, the first one included."
    )
    backoff_base_s: float = Field(
        default=1.0,
        ge=0.0,
        le=3600.0,
        description="Wait before the 2nd attempt; doubles per attempt (base * 2^n).",
    )
    backoff_max_s: float = Field(
        default=60.0,
        ge=0.0,
        le=86_400.0,
        description="Longest wait between attempts; a receiver's Retry-After above it is ignored.",
    )
    jitter: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Random share taken off each backoff wait (wait in [(1-jitter)*d, d]) so "
        "retries of many events do not arrive together.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for entry in v:
            e = entry.strip().lower().rstrip(".")
            try:
                ipaddress.ip_network(e, strict=False)
            except ValueError:
                if not _HOSTNAME_RE.match(e):
                    raise ValueError(
                        f"{entry!r} is neither a host name nor an IP address / CIDR"
                    ) from None
            out.append(e)
        return out

    @model_validator(mode="after")
    def _backoff_ordered(self) -> WebhookPolicy:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s:g}) is below backoff_base_s "
                f"({self.backoff_base_s:g})"
            )
        return self

    def allowed_networks(self) -> list[IPNetwork]:
        nets: list[IPNetwork] = []
        for e in self.allowed_hosts:
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(e, strict=False))
        return nets


class WorkerSettings(_Strict):
    """How the Ray Serve deployment of one family's worker is sized."""

    num_cpus: float = Field(
        default=1.0,
        gt=0.0,
        le=256.0,
        description="Ray CPUs per replica; torch threads are sized from it (at least one).",
    )
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas kept.")
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas allowed.")
    max_loaded_models: int = Field(
        default=4, ge=1, le=64, description="Pipelines a replica keeps loaded (LRU beyond)."
    )
    engine: Literal["request", "step"] = Field(
        default="request",
        description="How a replica runs its calls: 'request' runs each call the scheduler sent "
        "as one pipeline call, one after another; 'step' keeps a running set that compatible "
        "calls join and leave at denoising-step boundaries, one model forward per step for "
        "all of them (sd15 text-to-image; other families and tasks run as 'request').",
    )

    @model_validator(mode="after")
    def _ordered(self) -> WorkerSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is greater than max_replicas "
                f"({self.max_replicas})"
            )
        return self


class LocalStorage(_Strict):
    """Outputs written to a directory on the gateway's node, served by GET /v1/files/{path}."""

    kind: Literal["local"] = Field(default="local", description="Storage kind.")
    dir: str = Field(
        default="~/.cache/genmedia/outputs",
        description="Directory for outputs and their JSON sidecars (relative: to the catalog).",
    )


class S3Storage(_Strict):
    """Outputs written to an S3 bucket through boto3 (any S3-compatible endpoint)."""

    kind: Literal["s3"] = Field(default="s3", description="Storage kind.")
    bucket: str = Field(min_length=3, description="Bucket name.")
    prefix: str = Field(default="outputs", description="Key prefix for every output.")
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint; default: AWS."
    )
    region: str | None = Field(default=None, description="Region name passed to boto3.")
    url_expiry_s: int = Field(
        default=3600, ge=60, le=604800, description="Lifetime of presigned output URLs."
    )


class SchedulerSettings(_Strict):
    """The scheduler: where jobs are kept and how classes share the workers."""

    job_store: str = Field(
        default="~/.cache/genmedia/jobs.sqlite",
        description="SQLite file of the job store (relative: to the catalog file). It lives on "
        "the scheduler's node; a multi-node cluster pins the scheduler there or mounts a volume.",
    )
    batch_min_share: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Share of the work on main worker slots kept for the batch class while "
        "interactive work waits, so batch never starves.",
    )
    model_queue_limit: int = Field(
        default=10_000, ge=1, le=10_000_000, description="Most jobs queued per model (429 beyond)."
    )
    policy: Literal["priority", "fifo"] = Field(
        default="priority",
        description="'priority': classes, tenant fair share, preemption at step boundaries. "
        "'fifo': one queue in arrival order, no classes, no fairness, no preemption (the "
        "baseline the benchmarks compare against).",
    )


class RetentionSettings(_Strict):
    """How long each class of data is kept; the scheduler's sweeper deletes what is older
    (``deployments/store/retention.py``), ``genmedia store gc`` does the same by hand, and an
    S3 bucket's lifecycle rules (``genmedia render s3-lifecycle``) back it up."""

    jobs_hours: float = Field(
        default=720.0,
        gt=0.0,
        le=87_600.0,
        description="Finished jobs (their rows, outputs and input files) are deleted this long "
        "after they finished (720 = 30 days). Usage totals are kept.",
    )
    outputs_hours: float = Field(
        default=720.0,
        gt=0.0,
        le=87_600.0,
        description="Outputs of a completed job are deleted this long after it finished; the "
        "job's record stays (its result says when they were deleted) until jobs_hours.",
    )
    uploads_hours: float = Field(
        default=24.0,
        gt=0.0,
        le=87_600.0,
        description="Files uploaded with POST /v1/files, and the inline input images of "
        "finished jobs, are deleted this long after they were stored.",
    )
    idempotency_keys_hours: float = Field(
        default=24.0,
        gt=0.0,
        le=87_600.0,
        description="An Idempotency-Key is forgotten this long after its submit (the job "
        "stays); the same key then creates a new job.",
    )
    sweep_interval_s: float = Field(
        default=300.0,
        ge=1.0,
        le=86_400.0,
        description="Seconds between two sweeps (sooner while a sweep hit max_per_sweep).",
    )
    max_per_sweep: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Most jobs, files and keys of each class one sweep deletes (bounded work: "
        "the scheduler's loop stays responsive); the rest waits for the next sweep.",
    )


class ServerSettings(_Strict):
    """Gateway-wide settings."""

    scheduler: SchedulerSettings = Field(
        default_factory=SchedulerSettings, description="Job store and class shares."
    )
    webhooks: WebhookPolicy = Field(
        default_factory=WebhookPolicy, description="Where completion webhooks may go, retries."
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings,
        description="How long jobs, outputs, uploads and idempotency keys are kept.",
    )

    storage: LocalStorage | S3Storage = Field(
        default_factory=LocalStorage,
        discriminator="kind",
        description="Where outputs go: 'local' (default) or 's3'.",
    )
    max_body_bytes: int = Field(
        default=16 * 1_048_576,
        ge=1024,
        le=1_073_741_824,
        description="Largest request body accepted (inline base64 images and uploads "
        "included); larger ones get 413.",
    )
    max_inflight_per_key: int = Field(
        default=16,
        ge=1,
        le=100_000,
        description="Requests of one API key a gateway replica works on at once; more wait "
        "their turn there (a flood from one tenant does not hold up the others).",
    )
    max_streams: int = Field(
        default=900,
        ge=1,
        le=100_000,
        description="Progress streams (SSE) one gateway replica holds open at once; beyond it "
        "429 too_many_streams.",
    )
    max_streams_per_tenant: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Progress streams one tenant holds open at once on a gateway replica.",
    )
    stream_max_s: float = Field(
        default=3600.0,
        gt=0.0,
        le=86_400.0,
        description="Longest a progress stream stays open; the client reconnects to go on.",
    )
    max_bulk_items: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Most jobs one bulk submit (POST /v1/queue/models/{id}/batch) may carry.",
    )
    max_adapter_bytes: int = Field(
        default=512 * 1_048_576,
        ge=1024,
        le=16 * 1_073_741_824,
        description="Largest LoRA adapter file accepted.",
    )
    gateway_replicas: int = Field(default=1, ge=1, le=100, description="Gateway replicas.")
    gateway_num_cpus: float = Field(
        default=0.25, gt=0.0, le=64.0, description="Ray CPUs per gateway replica."
    )
    scheduler_num_cpus: float = Field(
        default=0.25, gt=0.0, le=64.0, description="Ray CPUs of the scheduler replica."
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0.0, le=86_400.0, description="Longest a sync request may take."
    )
