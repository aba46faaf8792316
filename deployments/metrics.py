"""Prometheus metrics, served as text at the gateway's ``GET /metrics``.

Two registries: the gateway's (submits and refusals, per replica) and the scheduler's (queue
depth, waits, compute, batch sizes, per-tenant usage; recorded once per job where the job ends).
The gateway's ``/metrics`` appends the scheduler's text to its own; it needs an admin tenant's
key unless ``server.metrics.public`` (``api/health.py``), and the per-tenant series carry tenant
ids only with ``server.metrics.tenant_labels`` (else one series under tenant ``-``). A family
worker replica keeps a third (``WorkerMetrics``: the load time it measured per model, and its
phases), served by its ``metrics_text``. Own registries, so tests and several apps in one
process do not collide. No Ray imports.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
ALL_TENANTS = "-"  # the tenant label of per-tenant series when tenant ids are not shown


class GatewayMetrics:
    """What a gateway replica sees: submits accepted and refused."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.submitted = Counter(
            "genmedia_submitted",
            "Jobs accepted by a gateway replica.",
            ["model", "priority"],
            registry=r,
        )
        self.rejected = Counter(
            "genmedia_rejected",
            "Submits refused (429: quotas, rate, queue bounds, deadline).",
            ["model", "reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TenantCounter:
    """A per-tenant counter: labelled with the tenant id, or with ``ALL_TENANTS`` for every
    tenant when tenant ids are not to be shown (``server.metrics.tenant_labels``)."""

    def __init__(self, counter: Counter, tenant_labels: bool) -> None:
        self.counter = counter
        self.tenant_labels = tenant_labels

    def labels(self, tenant: str, *rest: str) -> Counter:
        return self.counter.labels(tenant if self.tenant_labels else ALL_TENANTS, *rest)


class SchedulerMetrics:
    """What the scheduler sees: every job's end, queue depth, usage per tenant (summed under
    tenant ``-`` unless ``tenant_labels``)."""

    def __init__(self, tenant_labels: bool = False) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "genmedia_requests",
            "Jobs finished, by final status.",
            ["model", "priority", "status"],
            registry=r,
        )
        self.images = Counter("genmedia_images", "Images generated.", ["model"], registry=r)
        self.queue_seconds = Histogram(
            "genmedia_queue_seconds",
            "Time from submit to the start of the pipeline call.",
            ["model", "priority"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "genmedia_compute_seconds",
            "Duration of the pipeline call a job ran in.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "genmedia_request_seconds",
            "Submit to completion.",
            ["model", "priority"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "genmedia_batch_size",
            "Images per pipeline call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "genmedia_queue_depth",
            "Jobs waiting, per model and class.",
            ["model", "priority"],
            registry=r,
        )
        self.running = Gauge("genmedia_jobs_running", "Jobs in a pipeline call.", registry=r)
        self.gpu_share = Gauge(
            "genmedia_model_gpu_share",
            "GPUs reserved for a model: its gpu_fraction x its family worker's replicas.",
            ["model", "family"],
            registry=r,
        )
        keep = tenant_labels
        self.tenant_jobs = TenantCounter(
            Counter(
                "genmedia_tenant_jobs",
                "Finished jobs per tenant.",
                ["tenant", "model", "status"],
                registry=r,
            ),
            keep,
        )
        self.tenant_images = TenantCounter(
            Counter(
                "genmedia_tenant_images",
                "Images per tenant (of jobs cancelled while computed too).",
                ["tenant", "model"],
                registry=r,
            ),
            keep,
        )
        self.tenant_steps = TenantCounter(
            Counter(
                "genmedia_tenant_steps",
                "Denoising steps (x images) per tenant.",
                ["tenant", "model"],
                registry=r,
            ),
            keep,
        )
        self.tenant_compute = TenantCounter(
            Counter(
                "genmedia_tenant_compute_seconds",
                "Compute seconds per tenant (a batch's time split by images).",
                ["tenant", "model"],
                registry=r,
            ),
            keep,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WorkerMetrics:
    """What a family worker replica measures when it loads a model."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.load_seconds = Histogram(
            "genmedia_model_load_seconds",
            "Time a worker replica took to load a model (weights, pipeline, kernels).",
            ["model", "family"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.last_load_seconds = Gauge(
            "genmedia_model_last_load_seconds",
            "The latest measured load time of a model on this replica (what autoscaling uses).",
            ["model", "family"],
            registry=r,
        )
        self.load_phase_seconds = Gauge(
            "genmedia_model_load_phase_seconds",
            "Seconds of each phase of the latest load of a model (phases overlap).",
            ["model", "family", "phase"],
            registry=r,
        )
        self.load_bytes = Gauge(
            "genmedia_model_load_bytes",
            "Weight bytes read by the latest load of a model.",
            ["model", "family"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
