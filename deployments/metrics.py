"""Prometheus metrics of the gateway, served as text at ``GET /metrics``.

Recorded once per request at the end of its way (the gateway sees the worker's queue and compute
times in its result). Own registry, so tests and several apps in one process do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class GatewayMetrics:
    """Counters and histograms per model; ``render()`` gives the exposition text."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "genmedia_requests",
            "Generation requests finished, by outcome.",
            ["model", "status"],
            registry=r,
        )
        self.errors = Counter(
            "genmedia_request_errors",
            "Failed requests by error type.",
            ["model", "type"],
            registry=r,
        )
        self.images = Counter("genmedia_images", "Images generated.", ["model"], registry=r)
        self.queue_seconds = Histogram(
            "genmedia_queue_seconds",
            "Time from arrival at the gateway to the start of the pipeline call.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "genmedia_compute_seconds",
            "Duration of the pipeline call the request ran in.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "genmedia_request_seconds",
            "End-to-end time inside the gateway.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "genmedia_batch_size",
            "Images in the pipeline call a request ran in.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "genmedia_requests_in_flight", "Requests inside the gateway.", ["model"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
