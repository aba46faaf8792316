"""Intake without Ray: the lanes' order, group admission against a real SQLite job store and the
real dispatcher (durable before answered, one transaction per group, quotas counted inside a
group, duplicate idempotency keys), and that a bulk burst never delays an interactive submit."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from genmedia.deployments.protocol import (
    JobStatusView,
    PriorityClass,
    Rejection,
    Submission,
    SubmitAccepted,
    job_from_dict,
)
from genmedia.deployments.scheduler.adapters import AdapterRegistry
from genmedia.deployments.scheduler.dispatcher import Dispatcher, ModelLimits
from genmedia.deployments.scheduler.intake import Intake, IntakeLanes
from genmedia.deployments.scheduler.queues import QueuedJob
from genmedia.deployments.store.jobs import JobRecord
from genmedia.deployments.store.sql.store import SQLJobStore
from genmedia.deployments.tenants.ratelimit import RateLimiter
from genmedia.deployments.tenants.schema import Tenant
from genmedia.models.catalog import load_catalog
from genmedia.models.params import GenerateRequest, resolve_request
from tests.unit.deployments.store.stores import sqlite_store

INTERACTIVE, BATCH = PriorityClass.INTERACTIVE, PriorityClass.BATCH
_n = itertools.count()


def test_lanes_take_interactive_first_then_fill_with_batch_in_arrival_order():
    lanes: IntakeLanes[str] = IntakeLanes(max_group=4)
    for i in range(5):
        lanes.put(BATCH, f"b{i}")
    lanes.put(INTERACTIVE, "i0")
    lanes.put(INTERACTIVE, "i1")
    assert lanes.take() == ["i0", "i1", "b0", "b1"]
    lanes.put(INTERACTIVE, "i2")
    assert lanes.take() == ["i2", "b2", "b3", "b4"]
    assert lanes.take() == [] and len(lanes) == 0


def test_a_group_never_exceeds_its_bound_even_of_interactive_work():
    lanes: IntakeLanes[int] = IntakeLanes(max_group=3)
    for i in range(7):
        lanes.put(INTERACTIVE, i)
    assert [len(lanes.take()) for _ in range(3)] == [3, 3, 1]
    with pytest.raises(ValueError):
        IntakeLanes(max_group=0)


class CountingStore(SQLJobStore):
    """The real SQLite store, counting its group commits."""

    commits: list[int]

    def create_many(self, recs):
        self.commits.append(len(recs))
        return super().create_many(recs)


def tenant(tid: str, **quotas) -> Tenant:
    return Tenant.model_validate({"id": tid, "quotas": quotas})


@pytest.fixture
def setup(tmp_path):
    catalog = load_catalog()
    store = sqlite_store(tmp_path / "jobs.sqlite", CountingStore)
    store.commits = []
    models = {m.id: ModelLimits(m.family, m.max_batch_size, 0.0) for m in catalog.models}
    dispatcher = Dispatcher(models, batch_min_share=0.2)
    tenants = {"a": tenant("a", max_queued_jobs=3), "b": tenant("b")}
    family_of = {m.id: m.family for m in catalog.models}

    def queued_job(rec: JobRecord, weight: float) -> QueuedJob:
        job = job_from_dict(rec.job)
        return QueuedJob(
            id=rec.id,
            tenant=rec.tenant,
            model_id=rec.model_id,
            family=family_of[rec.model_id],
            priority=PriorityClass(rec.priority),
            key=job.batch_key,
            images=job.num_images,
            cost=1.0,
            arrived=rec.submitted_at,
            weight=weight,
        )

    def view(rec: JobRecord) -> JobStatusView:
        return JobStatusView(
            rec.id, rec.model_id, rec.status, PriorityClass(rec.priority), 0.0, rec.tenant
        )

    intake = Intake(
        store=store,
        dispatcher=dispatcher,
        adapters=AdapterRegistry(catalog, store, check=None),  # type: ignore[arg-type]
        tenants=tenants,
        rate=RateLimiter({"a": 1000, "b": 2}),
        model_queue_limit=1000,
        family_of=family_of,
        queued_job=queued_job,
        view=view,
        dispatch_wakeup=asyncio.Event(),
        clock=lambda: 1000.0,
    )
    return intake, store, dispatcher, catalog


def sub(catalog, tid="a", cls=BATCH, key=None, model="sd15-tiny") -> Submission:
    entry = catalog.model(model)
    job, errors = resolve_request(
        entry, GenerateRequest(prompt="x", seed=1), request_id=f"r{next(_n)}"
    )
    assert not errors and job is not None
    return Submission(tid, model, cls, job, idempotency_key=key)


def test_a_group_is_admitted_in_one_transaction_and_durable_when_answered(setup):
    intake, store, dispatcher, catalog = setup
    pending = [sub(catalog, "b") for _ in range(5)]

    async def go():
        task = asyncio.create_task(intake.run())
        try:
            return await intake.submit_many(pending)
        finally:
            task.cancel()

    answers = asyncio.run(go())
    assert store.commits == [5]
    assert all(isinstance(a, SubmitAccepted) and a.created for a in answers)
    for a in answers:
        assert isinstance(a, SubmitAccepted)
        assert store.get(a.job.request_id) is not None  # in the store when answered
        assert dispatcher.is_queued(a.job.request_id)


def test_quotas_count_the_groups_earlier_submits_and_duplicate_keys_answer_the_first(setup):
    intake, _, dispatcher, catalog = setup
    group = [sub(catalog, "a", key="k1"), sub(catalog, "a", key="k1")]
    group += [sub(catalog, "a") for _ in range(3)]
    answers = asyncio.run(_one_group(intake, group))
    first, dup = answers[0], answers[1]
    assert isinstance(first, SubmitAccepted) and first.created
    assert isinstance(dup, SubmitAccepted) and not dup.created
    assert dup.job.request_id == first.job.request_id
    kinds = [a.type if isinstance(a, Rejection) else "ok" for a in answers[2:]]
    # max_queued_jobs 3: k1 counted twice by admission, so one more fits, then the queue is full
    assert kinds == ["ok", "tenant_queue_full", "tenant_queue_full"]
    assert dispatcher.admission_counts("a", "sd15-tiny")[0] == 2


async def _one_group(intake: Intake, subs: list[Submission]):
    task = asyncio.create_task(intake.run())
    try:
        return await intake.submit_many(subs)
    finally:
        task.cancel()


def test_a_call_counts_once_against_the_rate_and_a_refused_call_refuses_every_item(setup):
    intake, _, _, catalog = setup  # tenant b: 2 calls a minute

    async def go():
        task = asyncio.create_task(intake.run())
        try:
            bulk = await intake.submit_many([sub(catalog, "b") for _ in range(10)])
            single = await intake.submit_many([sub(catalog, "b")])
            refused = await intake.submit_many([sub(catalog, "b") for _ in range(3)])
            return bulk, single, refused
        finally:
            task.cancel()

    bulk, single, refused = asyncio.run(go())
    assert all(isinstance(a, SubmitAccepted) for a in bulk + single)
    assert [a.type for a in refused if isinstance(a, Rejection)] == ["rate_limited"] * 3


def test_an_interactive_submit_is_answered_before_a_waiting_bulk_burst(setup):
    intake, store, _, catalog = setup
    intake.lanes.max_group = 16
    order: list[str] = []

    async def go():
        burst = [sub(catalog, "b") for _ in range(200)]
        bulk = asyncio.create_task(intake.submit_many(burst))
        await asyncio.sleep(0)  # the burst is in its lane first
        inter = asyncio.create_task(intake.submit_many([sub(catalog, "b", INTERACTIVE)]))
        bulk.add_done_callback(lambda _: order.append("bulk"))
        inter.add_done_callback(lambda _: order.append("interactive"))
        await asyncio.sleep(0)
        task = asyncio.create_task(intake.run())
        try:
            await asyncio.gather(bulk, inter)
        finally:
            task.cancel()

    asyncio.run(go())
    assert order == ["interactive", "bulk"]
    assert store.commits[0] == 16 and sum(store.commits) == 201  # the first group took it
