"""Scheduling policy, pure: queue order, batch forming, class shares, admission, ETA.

The scheduler deployment (``scheduler.py``) owns the state below and calls these functions with
``now`` from its clock; unit tests and the load-test simulator call the same code with a fake one.

- Two classes: ``interactive`` (latency) before ``batch`` (throughput), except that batch keeps a
  bounded share of the work dispatched on main slots, so it never starves.
- Inside a class, start-time fair queuing across tenants: a job's tag is
  ``max(V, tenant's last finish) + cost / weight``; the smallest tag goes first.
- Batches hold only compatible jobs (same ``batch_key``), up to the model's ``max_batch_size``
  images; interactive dispatches at once with what is waiting, batch waits up to
  ``batch_wait_s`` for a fuller batch.
- Slots: each worker replica has ``main`` slots (any class) and ``preempt`` slots (interactive
  only; the worker pauses a running batch-class call at a step boundary to run it).
No Ray imports.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

PriorityClass = Literal["interactive", "batch"]
CLASSES: tuple[PriorityClass, ...] = ("interactive", "batch")
SlotKind = Literal["main", "preempt"]
_seq = itertools.count()


@dataclass
class QueuedJob:
    """What the policy needs to know of a queued job."""

    id: str
    tenant: str
    model_id: str
    family: str
    priority: PriorityClass
    key: tuple  # batch_key: equal keys may share a pipeline call
    images: int
    cost: float  # work units (images x steps x megapixels)
    arrived: float
    weight: float = 1.0
    deadline: float | None = None
    start_tag: float = 0.0
    finish_tag: float = 0.0
    seq: int = field(default_factory=lambda: next(_seq))

    def order(self) -> tuple:
        return (self.finish_tag, self.arrived, self.seq)


def job_cost(images: int, steps: int, width: int, height: int) -> float:
    """Work units of a job: images x steps x megapixels."""
    return images * max(1, steps) * (width * height) / 1e6


class FairQueue:
    """One class's queue for one family: start-time fair queuing across tenants."""

    def __init__(self, fifo: bool = False) -> None:
        self.jobs: list[QueuedJob] = []  # sorted by order()
        self.virtual_time = 0.0
        self.fifo = fifo  # arrival order, no fairness (the benchmarks' baseline)
        self._last_finish: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.jobs)

    def push(self, job: QueuedJob) -> None:
        if self.fifo:
            job.start_tag = job.finish_tag = job.arrived
            bisect.insort(self.jobs, job, key=QueuedJob.order)
            return
        start = max(self.virtual_time, self._last_finish.get(job.tenant, 0.0))
        job.start_tag = start
        job.finish_tag = start + job.cost / max(job.weight, 1e-9)
        self._last_finish[job.tenant] = job.finish_tag
        bisect.insort(self.jobs, job, key=QueuedJob.order)

    def remove(self, job_id: str) -> QueuedJob | None:
        for i, j in enumerate(self.jobs):
            if j.id == job_id:
                return self.jobs.pop(i)
        return None

    def take(self, batch: list[QueuedJob]) -> None:
        """Dequeue a dispatched batch; virtual time advances to the head's start tag."""
        ids = {j.id for j in batch}
        # A batch is the head and compatible jobs close behind it: find them from the front and
        # delete in place, instead of rebuilding a long queue on every dispatch.
        found: list[int] = []
        for i, j in enumerate(self.jobs):
            if j.id in ids:
                found.append(i)
                if len(found) == len(ids):
                    break
        for i in reversed(found):
            del self.jobs[i]
        if batch:
            self.virtual_time = max(self.virtual_time, min(j.start_tag for j in batch))
        if not self.jobs:  # idle: forget history so a returning tenant is not penalised
            self._last_finish.clear()


def form_batch(jobs: list[QueuedJob], max_images: Callable[[str], int]) -> list[QueuedJob]:
    """The head job and the compatible jobs after it (queue order) up to the head's model's
    ``max_batch_size`` images. The head always goes, even alone over the limit."""
    if not jobs:
        return []
    head = jobs[0]
    cap = max_images(head.model_id)
    batch, total = [head], head.images
    for j in jobs[1:]:
        if total >= cap:
            break
        if j.key == head.key and total + j.images <= cap:
            batch.append(j)
            total += j.images
    return batch


class ShareTracker:
    """Exponentially decayed work dispatched per class on main slots (half-life in seconds)."""

    def __init__(self, half_life_s: float = 30.0):
        self.half_life_s = half_life_s
        self.work = {c: 0.0 for c in CLASSES}
        self.updated = 0.0

    def _decay(self, now: float) -> None:
        dt = max(0.0, now - self.updated)
        if dt:
            f = 0.5 ** (dt / self.half_life_s)
            for c in self.work:
                self.work[c] *= f
            self.updated = now

    def record(self, cls: PriorityClass, cost: float, now: float) -> None:
        self._decay(now)
        self.work[cls] += cost

    def share(self, cls: PriorityClass, now: float) -> float:
        self._decay(now)
        total = sum(self.work.values())
        return self.work[cls] / total if total > 0 else 0.0

    def owed(self, cls: PriorityClass, min_share: float, now: float) -> bool:
        """Whether ``cls`` got less than ``min_share`` of the recent work (never on no work)."""
        self._decay(now)
        return self.work[cls] < min_share * sum(self.work.values())


@dataclass(frozen=True)
class Decision:
    """The next batch to dispatch, or when to look again."""

    batch: list[QueuedJob]
    cls: PriorityClass | None
    retry_at: float | None = None  # a batch-class head becomes ready then


def next_batch(
    queues: dict[PriorityClass, FairQueue],
    slot: SlotKind,
    *,
    max_images: Callable[[str], int],
    batch_wait_s: Callable[[str], float],
    shares: ShareTracker,
    batch_min_share: float,
    now: float,
) -> Decision:
    """What a free slot of ``slot`` kind should run next (pure apart from reading the state)."""
    inter = queues.get("interactive")
    bulk = queues.get("batch")
    inter_batch = form_batch(inter.jobs, max_images) if inter is not None else []
    if slot == "preempt":
        return Decision(inter_batch, "interactive" if inter_batch else None)
    bulk_batch: list[QueuedJob] = []
    retry_at = None
    if bulk is not None and len(bulk):
        candidate = form_batch(bulk.jobs, max_images)
        head = candidate[0]
        full = sum(j.images for j in candidate) >= max_images(head.model_id)
        ready_at = head.arrived + batch_wait_s(head.model_id)
        if full or now >= ready_at:
            bulk_batch = candidate
        else:
            retry_at = ready_at
    if inter_batch and bulk_batch:
        if shares.owed("batch", batch_min_share, now):
            return Decision(bulk_batch, "batch")
        return Decision(inter_batch, "interactive")
    if inter_batch:
        return Decision(inter_batch, "interactive", retry_at)
    if bulk_batch:
        return Decision(bulk_batch, "batch")
    return Decision([], None, retry_at)


def expired(queues: Iterable[FairQueue], now: float) -> list[QueuedJob]:
    """Remove and return the queued jobs whose deadline has passed."""
    out = []
    for q in queues:
        gone = [j for j in q.jobs if j.deadline is not None and j.deadline <= now]
        for j in gone:
            q.remove(j.id)
        out += gone
    return out


def position(queues: dict[PriorityClass, FairQueue], job_id: str) -> int | None:
    """Jobs ahead of this one for the same workers (0 = next)."""
    inter = queues.get("interactive")
    bulk = queues.get("batch")
    inter_jobs = inter.jobs if inter else []
    for i, j in enumerate(inter_jobs):
        if j.id == job_id:
            return i
    for i, j in enumerate(bulk.jobs if bulk else []):
        if j.id == job_id:
            return len(inter_jobs) + i
    return None


class ServiceTimeEstimator:
    """Per-model seconds per work unit, EWMAs of observed pipeline calls: wall seconds (what a
    call takes, for ETAs) and device seconds (what it costs its device, for the autoscaler;
    ``deployments/device_time.py``)."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.per_cost: dict[str, float] = {}  # wall seconds per work unit
        self.device_per_cost: dict[str, float] = {}  # device seconds per work unit
        self.per_call: dict[str, float] = {}  # fixed seconds per call

    def observe(
        self, model_id: str, cost: float, seconds: float, device_seconds: float | None = None
    ) -> None:
        """One call of ``cost`` units took ``seconds``, of which its device spent
        ``device_seconds`` (None: not measured, taken as ``seconds``)."""
        if cost <= 0 or seconds <= 0:
            return
        self._update(self.per_cost, model_id, seconds / cost)
        if device_seconds is None or device_seconds <= 0:
            device_seconds = seconds
        self._update(self.device_per_cost, model_id, min(device_seconds, seconds) / cost)

    def _update(self, ewma: dict[str, float], model_id: str, rate: float) -> None:
        old = ewma.get(model_id)
        ewma[model_id] = rate if old is None else old + self.alpha * (rate - old)

    def seconds(self, model_id: str, cost: float) -> float | None:
        rate = self.per_cost.get(model_id)
        return None if rate is None else rate * cost


def eta_seconds(
    ahead: list[QueuedJob],
    est: ServiceTimeEstimator,
    capacity: int,
    slot_free_in_s: float | None = 0.0,
) -> float | None:
    """Predicted wait until a job starts: until a slot frees (``slot_free_in_s``, 0 when one is
    free now), plus the work queued ahead of it over the family's capacity. None when a needed
    estimate is missing."""
    if slot_free_in_s is None:
        return None
    total = 0.0
    for j in ahead:
        s = est.seconds(j.model_id, j.cost)
        if s is None:
            return None
        total += s
    return slot_free_in_s + total / max(1, capacity)


def slot_free_in(ends: list[float | None], capacity: int, now: float) -> float | None:
    """Seconds until one of ``capacity`` slots frees, given the expected end of each running
    call (None: no estimate). 0 when a slot is free now."""
    if len(ends) < capacity:
        return 0.0
    known = [e for e in ends if e is not None]
    if not known:
        return None
    return max(0.0, min(known) - now)


@dataclass(frozen=True)
class Rejection:
    """Why a submit is refused; answered as ``status`` with ``Retry-After``."""

    status: int
    type: str
    message: str
    retry_after_s: float
    field: str | None = None


@dataclass(frozen=True)
class AdmissionInput:
    """A snapshot of what admission looks at for one submit."""

    tenant: str
    tenant_queued: int
    tenant_active: int  # queued + running
    max_queued_jobs: int
    max_concurrent_jobs: int
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
    if a.tenant_active >= a.max_concurrent_jobs:
        return Rejection(
            429,
            "tenant_concurrency",
            f"tenant {a.tenant!r} already has "
            f"{a.tenant_active} jobs in flight (max_concurrent_jobs "
            f"{a.max_concurrent_jobs})",
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
