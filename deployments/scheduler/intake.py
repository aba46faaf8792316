"""Intake lanes, pure: the order in which the scheduler admits the submits waiting for it.

Where it sits in a request's way: a gateway replica calls the scheduler's ``submit`` (or
``submit_many`` for a bulk submit); each submission waits here, in its class's lane, until the
scheduler's intake task takes the next group, admits it and commits it to the job store in one
transaction (group commit), and only then answers every submit of the group. Interactive
submits are taken before any batch-class one, so a burst of bulk submits slows bulk intake,
never interactive intake; a group holds at most ``max_group`` submits, so one commit stays
short and an interactive submit arriving meanwhile waits for one group at most.

``IntakeLanes`` is the pure order; ``Intake`` runs it on the scheduler's event loop against the
job store and the dispatcher. No Ray here: the scheduler deployment owns one ``Intake``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from genmedia.deployments.protocol import (
    PRIORITY_CLASSES,
    JobStatus,
    JobStatusView,
    PriorityClass,
    Rejection,
    Submission,
    SubmitAccepted,
    job_to_dict,
)
from genmedia.deployments.scheduler.adapters import AdapterRegistry
from genmedia.deployments.scheduler.admission import AdmissionInput, admit
from genmedia.deployments.scheduler.dispatcher import Dispatcher
from genmedia.deployments.scheduler.queues import QueuedJob
from genmedia.deployments.store.jobs import JobRecord, JobStore
from genmedia.deployments.tenants.ratelimit import RateLimiter
from genmedia.deployments.tenants.schema import Tenant

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
MAX_GROUP = 128  # submits per store transaction


class IntakeLanes(Generic[T]):
    """One FIFO lane per priority class; ``take`` drains them in class order."""

    def __init__(self, max_group: int = MAX_GROUP) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self.max_group = max_group
        # PRIORITY_CLASSES is in rank order: interactive first
        self._lanes: dict[PriorityClass, deque[T]] = {c: deque() for c in PRIORITY_CLASSES}

    def put(self, cls: PriorityClass, item: T) -> None:
        self._lanes[cls].append(item)

    def __len__(self) -> int:
        return sum(len(q) for q in self._lanes.values())

    def waiting(self, cls: PriorityClass) -> int:
        return len(self._lanes[cls])

    def take(self) -> list[T]:
        """The next group: every waiting interactive submit first (up to ``max_group``), then
        batch-class ones in arrival order to fill it."""
        group: list[T] = []
        for lane in self._lanes.values():
            while lane and len(group) < self.max_group:
                group.append(lane.popleft())
        return group


@dataclass(slots=True)
class Pending:
    """A submit waiting in its intake lane, with the future its caller awaits."""

    sub: Submission
    rate_wait: float  # the tenant's rate limiter at the call: > 0 refuses it
    answer: asyncio.Future[SubmitAccepted | Rejection]


class Intake:
    """Admits what waits in the lanes, a group per store transaction (see the module
    docstring). ``queued_job`` and ``view`` are the scheduler's: a stored record as a queue
    entry and as the status a caller sees."""

    def __init__(
        self,
        *,
        store: JobStore,
        dispatcher: Dispatcher,
        adapters: AdapterRegistry,
        tenants: Mapping[str, Tenant],
        rate: RateLimiter,
        model_queue_limit: int,
        family_of: Mapping[str, str],
        queued_job: Callable[[JobRecord, float], QueuedJob],
        view: Callable[[JobRecord], JobStatusView],
        dispatch_wakeup: asyncio.Event,
        clock: Callable[[], float] = time.time,
        max_group: int = MAX_GROUP,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.adapters = adapters
        self.tenants = tenants
        self.rate = rate
        self.model_queue_limit = model_queue_limit
        self.family_of = family_of
        self.queued_job = queued_job
        self.view = view
        self.dispatch_wakeup = dispatch_wakeup
        self.clock = clock
        self.lanes: IntakeLanes[Pending] = IntakeLanes(max_group)
        self._wakeup = asyncio.Event()

    async def submit_many(
        self, subs: list[Submission], *, each: bool = False
    ) -> list[SubmitAccepted | Rejection]:
        """Queue submits in their lanes and wait for their answers, in order. A bulk submit
        (one tenant) counts once against the tenant's request rate; with ``each`` (single
        submits a gateway coalesced, of any tenants) every submit counts once."""
        if not subs:
            return []
        now = self.clock()
        rate_wait = 0.0 if each else self.rate.try_acquire(subs[0].tenant, now)
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[SubmitAccepted | Rejection]] = []
        for sub in subs:
            fut: asyncio.Future[SubmitAccepted | Rejection] = loop.create_future()
            wait = self.rate.try_acquire(sub.tenant, now) if each else rate_wait
            self.lanes.put(sub.priority, Pending(sub, wait, fut))
            waits.append(fut)
        self._wakeup.set()
        return list(await asyncio.gather(*waits))

    async def run(self) -> None:
        """Take the next group off the lanes, admit it, commit it, answer it; between groups
        yield to the event loop so new submits get into their lanes."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.lanes:
                group = self.lanes.take()
                try:
                    answers = self.admit_group(group)
                except Exception as e:
                    logger.exception("scheduler could not admit %d submit(s)", len(group))
                    for p in group:
                        if not p.answer.done():
                            p.answer.set_exception(e)
                else:
                    for p, a in zip(group, answers, strict=True):
                        if not p.answer.done():  # the caller may have gone
                            p.answer.set_result(a)
                await asyncio.sleep(0)

    def admit_group(self, group: list[Pending]) -> list[SubmitAccepted | Rejection]:
        """Admission for each submit in order (counting the group's earlier ones), one store
        transaction for all admitted, then their queue entries."""
        now = self.clock()
        answers: list[SubmitAccepted | Rejection | None] = [None] * len(group)
        recs: list[JobRecord] = []
        at: list[int] = []
        added: Counter[str] = Counter()  # queued by this group, per tenant and per model
        for i, p in enumerate(group):
            sub = p.sub
            if sub.idempotency_key:
                existing = self.store.find(sub.tenant, sub.idempotency_key)
                if existing is not None:
                    answers[i] = self._repeat(sub, existing)
                    continue
            refused = self._admission(sub, p.rate_wait, now, added)
            if refused is not None:
                answers[i] = refused
                continue
            recs.append(self._record_of(sub, now))
            at.append(i)
            added["t:" + sub.tenant] += 1
            added["m:" + sub.model_id] += 1
        stored = self.store.create_many(recs) if recs else []
        for rec, created in stored:
            if created:
                self.dispatcher.enqueue(self.queued_job(rec, rec.weight))
        if stored:
            self.dispatch_wakeup.set()
        for i, (rec, created) in zip(at, stored, strict=True):
            if created:
                answers[i] = SubmitAccepted(created=True, job=self.view(rec))
            else:  # the key came twice in this group: the first one's job
                answers[i] = self._repeat(group[i].sub, rec)
        return [a for a in answers if a is not None]

    def _repeat(self, sub: Submission, existing: JobRecord) -> SubmitAccepted | Rejection:
        """A submit whose idempotency key the tenant used before: that job when the bodies
        match (or one of them has no recorded hash), else 409 (Stripe's rule)."""
        if sub.body_sha256 and existing.body_sha256 and sub.body_sha256 != existing.body_sha256:
            return Rejection(
                status=409,
                type="idempotency_key_reused",
                message=f"Idempotency-Key {sub.idempotency_key!r} was used with a different "
                f"request body (job {existing.id}); use a new key for a new request",
                retry_after_s=None,
                field="Idempotency-Key",
            )
        return SubmitAccepted(created=False, job=self.view(existing))

    def _admission(
        self, sub: Submission, rate_wait: float, now: float, added: Counter[str]
    ) -> Rejection | None:
        bad_adapter = self.adapters.rejection(sub.model_id, sub.job.params.adapters)
        if bad_adapter is not None:
            return bad_adapter
        queued, _, model_queued = self.dispatcher.admission_counts(sub.tenant, sub.model_id)
        predicted = None
        if sub.deadline_s is not None:  # the ETA matters only against a deadline
            family = self.family_of[sub.model_id]
            predicted = self.dispatcher.predicted_start(family, sub.priority, now)
        return admit(
            AdmissionInput(
                tenant=sub.tenant,
                tenant_queued=queued + added["t:" + sub.tenant],
                max_queued_jobs=self.tenants[sub.tenant].quotas.max_queued_jobs,
                model_queued=model_queued + added["m:" + sub.model_id],
                model_queue_limit=self.model_queue_limit,
                rate_wait_s=rate_wait,
                predicted_start_s=predicted,
                deadline_in_s=sub.deadline_s,
            )
        )

    def _record_of(self, sub: Submission, now: float) -> JobRecord:
        rec = JobRecord(
            id=uuid.uuid4().hex,
            tenant=sub.tenant,
            model_id=sub.model_id,
            priority=sub.priority,
            status=JobStatus.IN_QUEUE,
            job=job_to_dict(sub.job),
            submitted_at=now,
            deadline=now + sub.deadline_s if sub.deadline_s else None,
            idempotency_key=sub.idempotency_key,
            body_sha256=sub.body_sha256,
            webhook_url=sub.webhook_url,
            weight=self.tenants[sub.tenant].weight,
        )
        rec.job["request_id"] = rec.id
        return rec
