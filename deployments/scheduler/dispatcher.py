"""Dispatcher, pure: the scheduler's state per family and what runs next on every free slot.

Where it sits in a request's way: the scheduler deployment (``deployments/serve/scheduler.py``)
admits a job (reading the counts and ETAs here), writes it to the store and ``enqueue``s it;
whenever a worker slot may be free it asks ``dispatch`` what to launch, moves those jobs to
IN_PROGRESS in the store, reports ``started`` and calls the family worker; when the call ends it
reports ``finished``. The load-test simulator (``loadtests/sim/engine.py``) runs this same object
on its virtual clock. Every method takes ``now`` from its caller's clock; no Ray, no asyncio, no
store here.

Per family it owns a ``FairQueue`` per class, the ``ShareTracker`` that keeps the batch class's
share, the replica count, the slots and one ``RunningBatch`` per running pipeline call. A worker
replica has ``MAIN_SLOTS_PER_REPLICA`` main slots (any class: one call computing, one staged at
the worker's step gate, so the pipeline never idles while a result travels back and the next
batch travels out) and ``PREEMPT_SLOTS_PER_REPLICA`` preempt slots (interactive only: one
computing, one staged behind it), never more of them than main slots hold batch-class calls (an
interactive call runs there by pausing such a call at a step boundary). Serve sends a worker
replica at most ``SLOTS_PER_REPLICA`` calls at once.

A family whose worker runs the step engine (``workers.<family>.engine: step``) keeps its
running set full instead: calls join it at denoising-step boundaries, so a replica's main slots
hold up to ``step_rows_per_replica`` images (its set, bounded by the models' ``max_batch_size``
and the engine's own bound, ``worker/engine_policy.py``: ``set_bound``, plus as many staged to
join as members leave) in as many calls as that, and a batch-class head never waits for a
fuller batch (it joins the set that is running). Its preempt slots are as above (an interactive
call the set cannot take still pauses it at a step boundary). ``slots_per_replica`` is the
worker's ``max_ongoing_requests`` for either engine.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from genmedia.deployments.protocol import PriorityClass
from genmedia.deployments.scheduler.eta import ServiceTimeEstimator, eta_seconds, slot_free_in
from genmedia.deployments.scheduler.queues import (
    BATCH,
    CLASSES,
    INTERACTIVE,
    FairQueue,
    QueuedJob,
    ShareTracker,
    SlotKind,
    expired,
    next_batch,
)
from genmedia.deployments.worker.engine_policy import set_bound

MAIN_SLOTS_PER_REPLICA = 2
PREEMPT_SLOTS_PER_REPLICA = 2
SLOTS_PER_REPLICA = MAIN_SLOTS_PER_REPLICA + PREEMPT_SLOTS_PER_REPLICA  # a worker's max ongoing
STEP_STAGED_SETS = 1  # step engine: sets of images staged at a replica beyond its running one
ENGINES = ("request", "step")
SLOTS: tuple[SlotKind, ...] = ("main", "preempt")
_CLASS_OF: dict[str, PriorityClass] = {c.value: c for c in CLASSES}


def step_rows_per_replica(max_batch_size: int) -> int:
    """Images a step-engine replica's main slots hold at once (one call at least one image, so
    as many calls): its running set's bound plus ``STEP_STAGED_SETS`` sets waiting to join."""
    return (1 + STEP_STAGED_SETS) * set_bound(max_batch_size)


def slots_per_replica(engine: str, max_batch_size: int) -> int:
    """Calls a worker replica is sent at once (Serve's ``max_ongoing_requests``) for a family
    running ``engine`` whose largest model batch is ``max_batch_size`` images."""
    if engine == "step":
        return step_rows_per_replica(max_batch_size) + PREEMPT_SLOTS_PER_REPLICA
    if engine != "request":
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return SLOTS_PER_REPLICA


@dataclass(frozen=True)
class ModelLimits:
    """What dispatch needs to know of a catalog model."""

    family: str
    max_batch_size: int  # images per pipeline call
    batch_wait_s: float  # how long a batch-class head waits for a fuller batch


def _capped(max_images: Callable[[str], int], room: int) -> Callable[[str], int]:
    return lambda model_id: min(max_images(model_id), room)


def _step_rows(family: str, models: Mapping[str, ModelLimits]) -> int:
    """A step-engine family's images per replica: from its largest model batch."""
    sizes = [lim.max_batch_size for lim in models.values() if lim.family == family]
    return step_rows_per_replica(max(sizes, default=1))


@dataclass(slots=True)
class Launch:
    """A batch taken off its queue for a free slot; the slot is held from here on."""

    family: str
    slot: SlotKind
    cls: PriorityClass
    jobs: list[QueuedJob]
    cost: float  # work units of the jobs


@dataclass(slots=True)
class RunningBatch:
    """One running pipeline call: the slot it holds, its jobs, its work, its expected end."""

    id: str
    family: str
    slot: SlotKind
    cls: PriorityClass
    model_id: str
    jobs: list[QueuedJob]
    cost: float  # work units
    expected_end: float | None  # start + the service-time estimate then (None: no estimate)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs three times as much to build
class Dispatch:
    """One dispatch round."""

    expired: Sequence[QueuedJob]  # deadline passed while queued; already off the queues
    launches: Sequence[Launch]  # in the order they were formed
    retry_at: float | None  # a waiting batch-class head becomes ready then


_IDLE = Dispatch((), (), None)  # shared: callers only read a round


def _seconds_before(
    prefix: dict[str, list[float]], i: int, est: ServiceTimeEstimator
) -> float | None:
    """Seconds of the work queued before place ``i`` (``-1``: the whole queue), from the
    queue's per-model prefix sums of work units (``FairQueue.prefix_units``, kept up to date by
    the queue: status polls never scan) times each model's current estimate, applied here so a
    new estimate (every finished call) costs nothing; None when a model with work there has no
    estimate yet."""
    total = 0.0
    for model_id, units in prefix.items():
        before = units[i]
        if before > 0.0:
            rate = est.per_cost.get(model_id)
            if rate is None:
                return None
            total += rate * before
    return total


class _Family:
    """One family's queues, shares, replicas, slots and running batches."""

    __slots__ = (
        "deadlines",
        "held",
        "held_rows",
        "main_batch_calls",
        "name",
        "queues",
        "replicas",
        "running",
        "running_jobs",
        "shares",
        "step_rows",
    )

    def __init__(self, name: str, fifo: bool, replicas: int, step_rows: int = 0) -> None:
        self.name = name
        # step engine: images the main slots of one replica hold (0: request-level engine)
        self.step_rows = step_rows
        self.held_rows = 0  # step engine: images of the calls on main slots
        self.queues = {c: FairQueue(fifo=fifo) for c in CLASSES}
        self.shares = ShareTracker()
        self.replicas = replicas
        self.held: dict[SlotKind, int] = {"main": 0, "preempt": 0}  # launched, not finished
        self.main_batch_calls = 0  # batch-class calls on main slots: preemptable
        self.running: dict[str, RunningBatch] = {}
        self.running_jobs = 0
        # (deadline, seq, job) of queued jobs with a deadline: when to look for expired ones
        self.deadlines: list[tuple[float, int, QueuedJob]] = []

    def slots(self, slot: SlotKind) -> int:
        cap = max(1, self.replicas)
        if slot == "main":
            return (self.step_rows or MAIN_SLOTS_PER_REPLICA) * cap
        return min(PREEMPT_SLOTS_PER_REPLICA * cap, self.main_batch_calls)


class Dispatcher:
    """See the module docstring. ``models`` maps each model id to its limits; ``families`` (by
    default the models' families) get queues; ``fifo`` puts every job in the batch class's queue
    in arrival order, with no wait for a fuller batch (the benchmarks' baseline); ``engines``
    maps a family to its worker's engine (``request``, the default, or ``step``)."""

    def __init__(
        self,
        models: Mapping[str, ModelLimits],
        *,
        batch_min_share: float,
        fifo: bool = False,
        families: Iterable[str] | None = None,
        replicas: int = 1,
        estimator: ServiceTimeEstimator | None = None,
        tenant_limits: Mapping[str, int] | None = None,
        engines: Mapping[str, str] | None = None,
    ) -> None:
        self.batch_min_share = batch_min_share
        self.fifo = fifo
        self.estimator = estimator or ServiceTimeEstimator()
        self._max_images = {m: lim.max_batch_size for m, lim in models.items()}.__getitem__
        for f, e in (engines or {}).items():
            if e not in ENGINES:
                raise ValueError(f"engines[{f!r}] must be one of {ENGINES}, got {e!r}")
        step = {f for f, e in (engines or {}).items() if e == "step"}
        wait = {
            m: 0.0 if fifo or lim.family in step else max(lim.batch_wait_s, 0.0)
            for m, lim in models.items()
        }
        self._batch_wait = wait.__getitem__
        if families is None:
            families = dict.fromkeys(lim.family for lim in models.values())
        self._families = {
            f: _Family(f, fifo, replicas, _step_rows(f, models) if f in step else 0)
            for f in families
        }
        self._queued: dict[str, QueuedJob] = {}
        self._running: dict[str, RunningBatch] = {}
        self._tenant_queued: dict[str, int] = {}
        self._tenant_running: dict[str, int] = {}  # jobs in launched or running batches
        # max_concurrent_jobs per tenant (absent: no limit); None: no tenant has one
        self._tenant_limits = dict(tenant_limits) if tenant_limits else None
        self._model_queued: dict[str, int] = {}
        # work units enqueued per (model, class) since the start: the autoscaler's arrival rates
        self.admitted_units: dict[tuple[str, str], float] = {}
        self.running_units: dict[str, float] = {}  # work units of each model's running batches

    def engine(self, family: str) -> str:
        """The engine the family's worker runs: ``request`` or ``step``."""
        return "step" if self._families[family].step_rows else "request"

    # -- queues ------------------------------------------------------------------------------
    def queue_class(self, priority: str) -> PriorityClass:
        """The queue a job of ``priority`` waits in (fifo: one queue for all)."""
        return BATCH if self.fifo else _CLASS_OF[priority]

    def enqueue(self, job: QueuedJob) -> None:
        fam = self._families[job.family]
        fam.queues[job.priority].push(job)
        self._queued[job.id] = job
        self._tenant_queued[job.tenant] = self._tenant_queued.get(job.tenant, 0) + 1
        self._model_queued[job.model_id] = self._model_queued.get(job.model_id, 0) + 1
        key = (job.model_id, job.priority)
        self.admitted_units[key] = self.admitted_units.get(key, 0.0) + job.cost
        if job.deadline is not None:
            heapq.heappush(fam.deadlines, (job.deadline, job.seq, job))

    def recover(self, jobs: Iterable[QueuedJob]) -> int:
        """Queue again the unfinished jobs the store held at a restart; how many."""
        n = 0
        for job in jobs:
            self.enqueue(job)
            n += 1
        return n

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a queued job off its queue (a cancel); None when it is not queued."""
        job = self._queued.get(job_id)
        if job is None:
            return None
        self._families[job.family].queues[job.priority].remove(job_id, job)
        self._dequeued(job)
        return job

    def _dequeued(self, job: QueuedJob) -> None:
        del self._queued[job.id]
        self._tenant_queued[job.tenant] -= 1
        self._model_queued[job.model_id] -= 1

    # -- dispatch ----------------------------------------------------------------------------
    def dispatch(self, now: float, family: str | None = None) -> Dispatch:
        """Expire queued jobs past their deadline, then fill every free slot (main slots first)
        with the batch ``next_batch`` picks, in every family or in ``family``. Each launch
        holds its slot: report ``started`` for it (with the jobs that did start)."""
        if family is not None:  # the simulator's call, on its hot path
            return self._round(self._families[family], now)
        gone: list[QueuedJob] = []
        launches: list[Launch] = []
        retry_at: float | None = None
        for fam in self._families.values():
            r = self._round(fam, now)
            gone += r.expired
            launches += r.launches
            if r.retry_at is not None and (retry_at is None or r.retry_at < retry_at):
                retry_at = r.retry_at
        if not launches and not gone and retry_at is None:
            return _IDLE
        return Dispatch(gone, launches, retry_at)

    def _round(self, fam: _Family, now: float) -> Dispatch:
        """One family's dispatch round."""
        gone: Sequence[QueuedJob] = ()
        if fam.deadlines and fam.deadlines[0][0] <= now:
            gone = self._expire(fam, now)
        qs, held = fam.queues, fam.held
        if not qs[INTERACTIVE].jobs and not qs[BATCH].jobs:
            return Dispatch(gone, (), None) if gone else _IDLE
        launches: list[Launch] = []
        retry_at: float | None = None
        cap = max(1, fam.replicas)
        for slot in SLOTS:
            if slot == "main":
                limit = (fam.step_rows or MAIN_SLOTS_PER_REPLICA) * cap
            elif not qs[INTERACTIVE].jobs:
                break  # a preempt slot runs interactive work only
            else:  # after the main slots: their batch-class calls open the preempt slots
                limit = min(PREEMPT_SLOTS_PER_REPLICA * cap, fam.main_batch_calls)
            while held[slot] < limit:
                max_images = self._max_images
                if fam.step_rows and slot == "main":  # the images the replicas' sets can take
                    room = fam.step_rows * cap - fam.held_rows
                    if room <= 0:
                        break
                    max_images = _capped(self._max_images, room)
                d = next_batch(
                    qs,
                    slot,
                    max_images=max_images,
                    batch_wait_s=self._batch_wait,
                    shares=fam.shares,
                    batch_min_share=self.batch_min_share,
                    now=now,
                    room=self._room if self._tenant_limits is not None else None,
                )
                if d.retry_at is not None and (retry_at is None or d.retry_at < retry_at):
                    retry_at = d.retry_at
                if d.cls is None:
                    break
                launches.append(self._take(fam, slot, d.cls, d.batch, now))
        if not launches and not gone and retry_at is None:
            return _IDLE
        return Dispatch(gone, launches, retry_at)

    def _expire(self, fam: _Family, now: float) -> list[QueuedJob]:
        heap, due = fam.deadlines, False
        while heap and heap[0][0] <= now:
            job = heapq.heappop(heap)[2]
            due = due or self._queued.get(job.id) is job  # else dispatched or removed since
        if not due:
            return []
        gone = expired(fam.queues.values(), now)
        for job in gone:
            self._dequeued(job)
        return gone

    def _take(
        self, fam: _Family, slot: SlotKind, cls: PriorityClass, batch: list[QueuedJob], now: float
    ) -> Launch:
        fam.queues[cls].take(batch)
        cost = sum(j.cost for j in batch)
        if slot == "main":
            fam.shares.record(cls, cost, now)
            if cls == BATCH:
                fam.main_batch_calls += 1
            if fam.step_rows:
                fam.held_rows += sum(j.images for j in batch)
        queued, tenant_queued, model_queued = self._queued, self._tenant_queued, self._model_queued
        running = self._tenant_running
        for j in batch:  # self._dequeued, inline: the simulator's hot path
            del queued[j.id]
            tenant_queued[j.tenant] -= 1
            model_queued[j.model_id] -= 1
            running[j.tenant] = running.get(j.tenant, 0) + 1
        fam.held[slot] += 1
        return Launch(fam.name, slot, cls, batch, cost)

    def started(
        self, launch: Launch, now: float, batch_id: str, job_ids: Collection[str] | None = None
    ) -> RunningBatch | None:
        """A launch's call starts with ``job_ids`` (None: all its jobs; the others ended
        meanwhile). With none left its slot is free again and the answer is None."""
        fam = self._families[launch.family]
        jobs, cost = launch.jobs, launch.cost
        if job_ids is not None and len(job_ids) < len(jobs):
            gone = [j for j in jobs if j.id not in job_ids]
            self._unhold(gone)
            self._unhold_rows(fam, launch.slot, gone)
            jobs = [j for j in jobs if j.id in job_ids]
            if not jobs:
                self._release(fam, launch.slot, launch.cls)
                return None
            cost = sum(j.cost for j in jobs)
        model_id = jobs[0].model_id
        expected = self.estimator.seconds(model_id, cost)
        end = None if expected is None else now + expected
        batch = RunningBatch(batch_id, fam.name, launch.slot, launch.cls, model_id, jobs, cost, end)
        self._running[batch_id] = fam.running[batch_id] = batch
        fam.running_jobs += len(jobs)
        self.running_units[model_id] = self.running_units.get(model_id, 0.0) + cost
        return batch

    def release(self, launch: Launch) -> None:
        """A launch that will not run (its jobs ended meanwhile, or starting it failed): its
        slot is free again. Its jobs stay off the queues."""
        fam = self._families[launch.family]
        self._unhold(launch.jobs)
        self._unhold_rows(fam, launch.slot, launch.jobs)
        self._release(fam, launch.slot, launch.cls)

    def _unhold(self, jobs: Iterable[QueuedJob]) -> None:
        for j in jobs:
            self._tenant_running[j.tenant] -= 1

    @staticmethod
    def _unhold_rows(fam: _Family, slot: SlotKind, jobs: Iterable[QueuedJob]) -> None:
        if fam.step_rows and slot == "main":
            fam.held_rows -= sum(j.images for j in jobs)

    def _room(self, tenant: str) -> int:
        """How many more jobs ``tenant`` may run now (its ``max_concurrent_jobs`` less the jobs
        it has in launched or running batches)."""
        assert self._tenant_limits is not None
        limit = self._tenant_limits.get(tenant)
        if limit is None:
            return 1 << 30
        return limit - self._tenant_running.get(tenant, 0)

    def finished(self, batch_id: str) -> RunningBatch | None:
        """A running call ended (any way): its slot is free. None when it is not running."""
        batch = self._running.pop(batch_id, None)
        if batch is None:
            return None
        fam = self._families[batch.family]
        del fam.running[batch_id]
        fam.held[batch.slot] -= 1
        if batch.slot == "main" and batch.cls == BATCH:
            fam.main_batch_calls -= 1
        fam.running_jobs -= len(batch.jobs)
        self.running_units[batch.model_id] -= batch.cost
        self._unhold(batch.jobs)
        self._unhold_rows(fam, batch.slot, batch.jobs)
        return batch

    def _release(self, fam: _Family, slot: SlotKind, cls: PriorityClass) -> None:
        fam.held[slot] -= 1
        if slot == "main" and cls == BATCH:
            fam.main_batch_calls -= 1

    # -- replicas, ETAs ----------------------------------------------------------------------
    def replicas(self, family: str) -> int:
        return self._families[family].replicas

    def set_replicas(self, family: str, n: int) -> None:
        """Replicas of the family's worker taking work (capacity counts at least one)."""
        self._families[family].replicas = n

    def capacity(self, family: str) -> int:
        return max(1, self._families[family].replicas)

    def ahead_of(self, family: str, cls: str) -> list[QueuedJob]:
        """The queued jobs a new job of queue class ``cls`` would wait behind at most."""
        qs = self._families[family].queues
        if cls == INTERACTIVE:
            return list(qs[INTERACTIVE].jobs)
        return qs[INTERACTIVE].jobs + qs[BATCH].jobs

    def slot_free_in(self, family: str, priority: str, now: float) -> float | None:
        """Seconds until a slot a job of ``priority`` may take frees (0: one is free now; None:
        no estimate). Interactive jobs may take preempt slots too."""
        fam = self._families[family]
        best: float | None = None
        for slot in SLOTS if priority == INTERACTIVE else ("main",):
            ends = [b.expected_end for b in fam.running.values() if b.slot == slot]
            free = slot_free_in(ends, fam.slots(slot), now)
            if free is not None and (best is None or free < best):
                best = free
        return best

    def predicted_start(self, family: str, priority: str, now: float) -> float | None:
        """When a new job of ``priority`` would start (admission's deadline check)."""
        return eta_seconds(
            self.ahead_of(family, self.queue_class(priority)),
            self.estimator,
            self.capacity(family),
            self.slot_free_in(family, priority, now),
        )

    def position(self, job_id: str) -> int | None:
        """Jobs ahead of a queued job for the same workers (0 = next); None when not queued.
        A bisection on the job's order: status polls never scan the queue."""
        job = self._queued.get(job_id)
        if job is None:
            return None
        qs = self._families[job.family].queues
        i = qs[job.priority].index(job)
        if i is None:
            return None
        return i if job.priority == INTERACTIVE else len(qs[INTERACTIVE]) + i

    def eta(self, job_id: str, now: float) -> float | None:
        """Predicted seconds until a queued job starts (None: not queued or no estimate): the
        work ahead of it from the prefix sums each queue keeps (``_seconds_before``), not a scan."""
        job = self._queued.get(job_id)
        if job is None:
            return None
        fam = self._families[job.family]
        i = fam.queues[job.priority].index(job)
        if i is None:
            return None
        free = self.slot_free_in(job.family, job.priority, now)
        if free is None:
            return None
        qs, est = fam.queues, self.estimator
        work = _seconds_before(qs[job.priority].prefix_units(), i, est)
        if work is None:
            return None  # a job ahead has no estimate yet
        if job.priority == BATCH:
            inter = _seconds_before(qs[INTERACTIVE].prefix_units(), -1, est)
            if inter is None:
                return None  # an interactive job ahead has no estimate yet
            work += inter
        return free + work / self.capacity(job.family)

    # -- counts for admission, metrics and the autoscaler ------------------------------------
    def admission_counts(self, tenant: str, model_id: str) -> tuple[int, int, int]:
        """What admission counts for a submit: the tenant's queued jobs, its jobs in running
        batches, and the model's queued jobs."""
        return (
            self._tenant_queued.get(tenant, 0),
            self._tenant_running.get(tenant, 0),
            self._model_queued.get(model_id, 0),
        )

    def is_queued(self, job_id: str) -> bool:
        return job_id in self._queued

    def batch_of(self, job_id: str) -> RunningBatch | None:
        """The running batch a job is in (a scan: running batches are few, and the simulator
        never asks)."""
        for batch in self._running.values():
            if any(j.id == job_id for j in batch.jobs):
                return batch
        return None

    @property
    def queued_count(self) -> int:
        return len(self._queued)

    @property
    def running_job_count(self) -> int:
        return sum(fam.running_jobs for fam in self._families.values())

    def queues(self, family: str) -> Mapping[PriorityClass, FairQueue]:
        return self._families[family].queues

    def running_calls(self, family: str) -> int:
        """Slots held by the family's launched calls (main and preempt)."""
        held = self._families[family].held
        return held["main"] + held["preempt"]

    def running_jobs(self, family: str) -> int:
        return self._families[family].running_jobs

    def queued_jobs(self) -> Iterator[QueuedJob]:
        """Every queued job, in the order they were queued."""
        return iter(self._queued.values())

    def queued_work(self) -> Iterator[tuple[str, PriorityClass, float]]:
        """(model, class, work units) of every queued job: the autoscaler's backlog."""
        return ((j.model_id, j.priority, j.cost) for j in self._queued.values())

    def running_work(self) -> Iterator[tuple[str, float]]:
        """(model, work units) of every running batch: the autoscaler's in-flight work."""
        return ((b.model_id, b.cost) for b in self._running.values())
