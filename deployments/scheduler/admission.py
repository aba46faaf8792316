"""Admission, pure: whether the scheduler accepts a submit (rate, queue bounds, deadline).

The scheduler calls ``admit`` before it writes a job to the store; a refusal is answered as a
4xx/429 with ``Retry-After``. The simulator calls the same function. A tenant's
``max_queued_jobs`` bounds its queue here; its ``max_concurrent_jobs`` bounds its RUNNING jobs
and is applied at dispatch (``queues.form_batch``): over it, jobs wait in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from genmedia.deployments.protocol import Rejection

__all__ = ["AdmissionInput", "Rejection", "admit"]


@dataclass(frozen=True)
class AdmissionInput:
    """A snapshot of what admission looks at for one submit."""

    tenant: str
    tenant_queued: int
    max_queued_jobs: int
    model_queued: int
    model_queue_limit: int
    rate_wait_s: float  # from the tenant's rate limiter: 0 when admitted
    predicted_start_s: float | None  # ETA of the new job, None when unknown
    deadline_in_s: float | None  # relative deadline asked for


def admit(a: AdmissionInput) -> Rejection | None:
    """None to accept; otherwise the first rule the submit breaks."""
    if a.rate_wait_s > 0:
        return Rejection(
            429, "rate_limited", f"tenant {a.tenant!r} is over its request rate", a.rate_wait_s
        )
    if a.tenant_queued >= a.max_queued_jobs:
        return Rejection(
            429,
            "tenant_queue_full",
            f"tenant {a.tenant!r} already has "
            f"{a.tenant_queued} queued jobs (max_queued_jobs "
            f"{a.max_queued_jobs})",
            1.0,
        )
    if a.model_queued >= a.model_queue_limit:
        return Rejection(
            429, "model_queue_full", f"the model's queue is full ({a.model_queue_limit} jobs)", 1.0
        )
    if (
        a.deadline_in_s is not None
        and a.predicted_start_s is not None
        and a.predicted_start_s > a.deadline_in_s
    ):
        return Rejection(
            429,
            "deadline_unmeetable",
            f"predicted start in {a.predicted_start_s:.1f}s misses the deadline "
            f"of {a.deadline_in_s:.1f}s",
            max(1.0, a.predicted_start_s - a.deadline_in_s),
            field="deadline",
        )
    return None
