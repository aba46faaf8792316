"""The dispatcher without Ray (fake clock): dispatch order and slots, cancel, started/finished
bookkeeping, recovery, ETAs and the counts admission reads."""

from __future__ import annotations

import itertools

import pytest

from genmedia.deployments.protocol import PriorityClass
from genmedia.deployments.scheduler.dispatcher import (
    MAIN_SLOTS_PER_REPLICA,
    PREEMPT_SLOTS_PER_REPLICA,
    SLOTS_PER_REPLICA,
    Dispatcher,
    Launch,
    ModelLimits,
)
from genmedia.deployments.scheduler.queues import QueuedJob

_ids = itertools.count()
INTERACTIVE, BATCH = PriorityClass.INTERACTIVE, PriorityClass.BATCH


def dispatcher(
    replicas: int = 1, max_batch: int = 1, wait_s: float = 0.0, fifo: bool = False
) -> Dispatcher:
    models = {
        "m": ModelLimits("f", max_batch, wait_s),
        "g": ModelLimits("other", 4, 0.0),
        "m2": ModelLimits("f", max_batch, wait_s),  # a second model of family f
    }
    return Dispatcher(models, batch_min_share=0.2, fifo=fifo, replicas=replicas)


def job(
    d: Dispatcher,
    priority: str = "interactive",
    tenant: str = "a",
    key: str = "k",
    images: int = 1,
    cost: float = 1.0,
    arrived: float = 0.0,
    deadline: float | None = None,
    model: str = "m",
) -> QueuedJob:
    return QueuedJob(
        id=f"j{next(_ids)}",
        tenant=tenant,
        model_id=model,
        family="other" if model == "g" else "f",
        priority=d.queue_class(priority),
        key=(model, key),
        images=images,
        cost=cost,
        arrived=arrived,
        deadline=deadline,
    )


def tenant_queued(d: Dispatcher, tenant: str) -> int:
    return d.admission_counts(tenant, "m")[0]


def tenant_running(d: Dispatcher, tenant: str) -> int:
    return d.admission_counts(tenant, "m")[1]


def model_queued(d: Dispatcher, model: str) -> int:
    return d.admission_counts("a", model)[2]


def start_all(d: Dispatcher, launches: list[Launch] | tuple[Launch, ...], now: float) -> list[str]:
    ids = []
    for launch in launches:
        batch = d.started(launch, now, f"b{next(_ids)}")
        assert batch is not None
        ids.append(batch.id)
    return ids


def test_one_source_for_the_slot_constants():
    assert SLOTS_PER_REPLICA == MAIN_SLOTS_PER_REPLICA + PREEMPT_SLOTS_PER_REPLICA
    assert PriorityClass.INTERACTIVE.rank < PriorityClass.BATCH.rank


def test_interactive_goes_first_and_batch_keeps_its_share_of_the_main_slots():
    d = dispatcher(replicas=1)
    bulk = [job(d, "batch", key=f"b{i}") for i in range(2)]
    inter = [job(d, "interactive", key=f"i{i}") for i in range(3)]
    for j in bulk + inter:
        d.enqueue(j)
    out = d.dispatch(now=1.0)
    # two main slots per replica: interactive first, then batch (owed its minimum share); the
    # batch-class call on a main slot opens one preempt slot for the next interactive job
    assert [(x.slot, x.cls) for x in out.launches] == [
        ("main", INTERACTIVE),
        ("main", BATCH),
        ("preempt", INTERACTIVE),
    ]
    assert [x.jobs[0].id for x in out.launches] == [inter[0].id, bulk[0].id, inter[1].id]
    assert d.running_calls("f") == MAIN_SLOTS_PER_REPLICA + 1
    assert not d.dispatch(now=1.0).launches  # every slot held until it is finished
    assert d.queued_count == 2


def test_preempt_slots_open_only_while_main_slots_hold_batch_calls():
    d = dispatcher(replicas=1)
    for i in range(2):
        d.enqueue(job(d, "batch", key=f"b{i}"))
    first = d.dispatch(now=1.0)
    assert [(x.slot, x.cls) for x in first.launches] == [("main", BATCH), ("main", BATCH)]
    batch_ids = start_all(d, first.launches, 1.0)
    for i in range(3):
        d.enqueue(job(d, "interactive", key=f"i{i}"))
    second = d.dispatch(now=2.0)
    assert [(x.slot, x.cls) for x in second.launches] == [
        ("preempt", INTERACTIVE),
        ("preempt", INTERACTIVE),
    ]
    start_all(d, second.launches, 2.0)
    d.finished(batch_ids[0])  # a main slot frees and one batch-class call is left
    third = d.dispatch(now=3.0)
    assert [(x.slot, x.cls) for x in third.launches] == [("main", INTERACTIVE)]
    assert d.running_calls("f") == 4


def test_a_batch_class_head_waits_for_a_fuller_batch_until_retry_at():
    d = dispatcher(max_batch=4, wait_s=0.5)
    d.enqueue(job(d, "batch", arrived=0.0))
    d.enqueue(job(d, "batch", arrived=0.1))
    waiting = d.dispatch(now=0.2)
    assert not waiting.launches and waiting.retry_at == pytest.approx(0.5)
    ready = d.dispatch(now=0.5)
    assert len(ready.launches) == 1 and len(ready.launches[0].jobs) == 2
    assert ready.retry_at is None


def test_fifo_puts_every_job_in_one_queue_in_arrival_order():
    d = dispatcher(fifo=True, wait_s=5.0)
    first, second = job(d, "batch", arrived=0.0), job(d, "interactive", arrived=1.0)
    assert second.priority == BATCH
    d.enqueue(first)
    d.enqueue(second)
    out = d.dispatch(now=1.0)  # fifo: no wait for a fuller batch
    assert [x.jobs[0].id for x in out.launches] == [first.id, second.id]


def test_families_are_dispatched_apart():
    d = dispatcher()
    other = job(d, model="g")
    d.enqueue(job(d))
    d.enqueue(other)
    only = d.dispatch(now=0.0, family="other")
    assert [x.family for x in only.launches] == ["other"] and d.queued_count == 1
    assert [x.family for x in d.dispatch(now=0.0).launches] == ["f"]


def test_cancel_takes_a_queued_job_off_its_queue():
    d = dispatcher()
    keep, gone = job(d, "batch", tenant="t"), job(d, "batch", tenant="t")
    d.enqueue(keep)
    d.enqueue(gone)
    assert d.remove(gone.id) is gone
    assert d.remove(gone.id) is None  # not queued any more
    assert not d.is_queued(gone.id) and tenant_queued(d, "t") == 1 and model_queued(d, "m") == 1
    assert [x.jobs for x in d.dispatch(now=0.0).launches] == [[keep]]


def test_started_and_finished_keep_the_running_record():
    d = dispatcher(max_batch=4)
    d.estimator.observe("m", cost=1.0, seconds=2.0)  # 2 s per unit
    jobs = [job(d, "batch", tenant=t, cost=1.5) for t in ("a", "a", "b")]
    for j in jobs:
        d.enqueue(j)
    (launch,) = d.dispatch(now=10.0).launches
    assert d.queued_count == 0 and tenant_queued(d, "a") == 0
    batch = d.started(launch, 10.0, "b1", {jobs[0].id, jobs[2].id})  # jobs[1] ended meanwhile
    assert batch is not None and batch.id == "b1" and batch.slot == "main"
    assert [j.id for j in batch.jobs] == [jobs[0].id, jobs[2].id]
    assert batch.cost == pytest.approx(3.0) and batch.expected_end == pytest.approx(16.0)
    assert d.batch_of(jobs[0].id) is batch and d.batch_of(jobs[1].id) is None
    assert (tenant_running(d, "a"), tenant_running(d, "b")) == (1, 1)
    assert d.running_job_count == 2 and d.running_jobs("f") == 2
    assert list(d.running_work()) == [("m", pytest.approx(3.0))]
    assert d.running_units["m"] == pytest.approx(3.0)
    assert d.finished("b1") is batch
    assert d.finished("b1") is None  # once
    assert d.running_calls("f") == 0 and tenant_running(d, "a") == 0
    assert d.batch_of(jobs[0].id) is None
    assert d.running_units["m"] == pytest.approx(0.0)


def test_a_launch_none_of_whose_jobs_started_frees_its_slot():
    d = dispatcher()
    for _ in range(3):
        d.enqueue(job(d))
    out = d.dispatch(now=0.0)
    assert len(out.launches) == 2
    assert d.started(out.launches[0], 0.0, "x", set()) is None
    d.release(out.launches[1])
    assert d.running_calls("f") == 0
    assert len(d.dispatch(now=0.0).launches) == 1  # the third job takes a freed slot


def test_queued_jobs_past_their_deadline_expire_at_the_next_dispatch():
    d = dispatcher(replicas=1)
    for key in ("a", "b"):  # fill both main slots
        d.enqueue(job(d, "batch", key=key))
    start_all(d, d.dispatch(now=0.0).launches, 0.0)
    late = job(d, "batch", key="c", deadline=5.0)
    later = job(d, "batch", key="d", deadline=9.0)
    d.enqueue(late)
    d.enqueue(later)
    assert not d.dispatch(now=4.0).expired
    out = d.dispatch(now=5.0)
    assert [j.id for j in out.expired] == [late.id]
    assert not d.is_queued(late.id) and d.is_queued(later.id) and tenant_queued(d, "a") == 1


def test_a_removed_or_dispatched_job_never_expires():
    d = dispatcher()
    gone = job(d, deadline=1.0)
    ran = job(d, deadline=1.0)
    d.enqueue(gone)
    d.remove(gone.id)
    d.enqueue(ran)
    start_all(d, d.dispatch(now=0.0).launches, 0.0)
    assert not d.dispatch(now=2.0).expired


def test_recover_requeues_jobs_from_records():
    d = dispatcher(max_batch=4)
    jobs = [job(d, "batch", arrived=float(i), tenant="t") for i in range(3)]
    assert d.recover(jobs) == 3
    assert tenant_queued(d, "t") == 3 and model_queued(d, "m") == 3
    assert d.admitted_units[("m", "batch")] == pytest.approx(3.0)
    assert [j.id for j in d.queued_jobs()] == [j.id for j in jobs]
    (launch,) = d.dispatch(now=100.0).launches
    assert [j.id for j in launch.jobs] == [j.id for j in jobs]


def test_position_eta_and_slot_free_in():
    d = dispatcher(replicas=1)
    d.estimator.observe("m", cost=1.0, seconds=4.0)  # 4 s per unit
    assert d.slot_free_in("f", "batch", now=0.0) == 0.0  # a slot is free
    for key in ("a", "b"):
        d.enqueue(job(d, "batch", key=key))
    launches = d.dispatch(now=0.0).launches
    d.started(launches[0], 0.0, "b1")
    d.started(launches[1], 1.0, "b2")
    assert d.slot_free_in("f", "batch", now=2.0) == pytest.approx(2.0)  # b1 ends at 4
    # interactive jobs may take a preempt slot: open (main slots hold batch calls), free now
    assert d.slot_free_in("f", "interactive", now=2.0) == 0.0
    queued = [job(d, "batch", key=f"q{i}") for i in range(2)]
    for j in queued:
        d.enqueue(j)
    assert [d.position(j.id) for j in queued] == [0, 1]
    assert d.eta(queued[0].id, now=2.0) == pytest.approx(2.0)
    assert d.eta(queued[1].id, now=2.0) == pytest.approx(2.0 + 4.0 / 1)
    assert d.predicted_start("f", "batch", now=2.0) == pytest.approx(2.0 + 8.0)
    assert d.predicted_start("f", "interactive", now=2.0) == 0.0
    assert d.position("nope") is None and d.eta("nope", now=2.0) is None
    d.set_replicas("f", 2)  # two more main slots: free now
    assert d.capacity("f") == 2 and d.slot_free_in("f", "batch", now=2.0) == 0.0


def test_eta_is_unknown_without_an_estimate():
    d = dispatcher()
    for _ in range(3):
        d.enqueue(job(d, "batch", key=str(next(_ids))))
    start_all(d, d.dispatch(now=0.0).launches, 0.0)
    assert d.slot_free_in("f", "batch", now=1.0) is None
    assert d.predicted_start("f", "batch", now=1.0) is None


def test_admission_counts_follow_the_jobs():
    d = dispatcher(replicas=1)
    for tenant in ("a", "a", "b", "a"):
        d.enqueue(job(d, "batch", tenant=tenant, key=str(next(_ids))))
    d.enqueue(job(d, tenant="a", model="g"))
    assert (tenant_queued(d, "a"), tenant_queued(d, "b"), tenant_queued(d, "c")) == (4, 1, 0)
    assert (model_queued(d, "m"), model_queued(d, "g")) == (4, 1)
    out = d.dispatch(now=0.0)  # two main slots of family f, two of family other
    ids = start_all(d, out.launches, 0.0)
    assert tenant_queued(d, "a") + tenant_running(d, "a") == 4
    assert tenant_running(d, "a") + tenant_running(d, "b") == 3
    assert model_queued(d, "m") == 2 and model_queued(d, "g") == 0
    for batch_id in ids:
        d.finished(batch_id)
    assert tenant_running(d, "a") == tenant_running(d, "b") == 0
    assert sorted(c for (_, c, _) in d.queued_work()) == ["batch", "batch"]


def capped(limits: dict[str, int], replicas: int = 4, max_batch: int = 4) -> Dispatcher:
    models = {"m": ModelLimits("f", max_batch, 0.0)}
    return Dispatcher(models, batch_min_share=0.2, replicas=replicas, tenant_limits=limits)


def test_max_concurrent_jobs_caps_running_jobs_and_the_rest_wait_in_the_queue():
    d = capped({"a": 2})  # tenant a runs at most 2 jobs; b has no limit
    a_jobs = [job(d, "batch", tenant="a", key=str(i)) for i in range(5)]
    for j in a_jobs:
        d.enqueue(j)
    d.enqueue(job(d, "batch", tenant="b", key="b"))
    ids = start_all(d, d.dispatch(now=0.0).launches, 0.0)
    running = [j.tenant for b in ids for j in d._running[b].jobs]
    assert sorted(running) == ["a", "a", "b"]
    assert tenant_queued(d, "a") == 3 and tenant_running(d, "a") == 2
    assert d.dispatch(now=0.1).launches == ()  # free slots, but a is at its cap
    d.finished(ids[0])
    again = d.dispatch(now=0.2).launches
    assert [j.id for launch in again for j in launch.jobs] == [a_jobs[2].id]  # fair order kept


def test_a_capped_tenant_fills_a_batch_only_up_to_its_room():
    d = capped({"a": 3}, replicas=1, max_batch=8)
    for _ in range(6):
        d.enqueue(job(d, "batch", tenant="a", key="same"))
    d.enqueue(job(d, "batch", tenant="b", key="same"))
    first = d.dispatch(now=0.0).launches[0]
    assert sorted(j.tenant for j in first.jobs) == ["a", "a", "a", "b"]  # not a fourth a


def test_a_launch_that_does_not_start_gives_the_tenant_its_room_back():
    d = capped({"a": 1}, replicas=1)
    d.enqueue(job(d, "batch", tenant="a", key="x"))
    d.enqueue(job(d, "batch", tenant="a", key="y"))
    launch = d.dispatch(now=0.0).launches[0]
    assert tenant_running(d, "a") == 1  # held from the launch on
    assert d.started(launch, 0.0, "b0", job_ids=set()) is None  # its job was cancelled
    assert tenant_running(d, "a") == 0
    assert len(d.dispatch(now=0.1).launches) == 1


def brute_eta(d: Dispatcher, j: QueuedJob, now: float) -> float | None:
    qs = d.queues(j.family)
    ahead = list(qs[INTERACTIVE].jobs)
    if j.priority == BATCH:
        ahead += qs[BATCH].jobs
    ahead = ahead[: ahead.index(j)]
    free = d.slot_free_in(j.family, j.priority, now)
    if free is None:
        return None
    total = 0.0
    for a in ahead:
        s = d.estimator.seconds(a.model_id, a.cost)
        if s is None:
            return None
        total += s
    return free + total / d.capacity(j.family)


def test_positions_and_etas_from_the_cache_match_a_scan_after_every_change():
    """Two models of one family; the second has no estimate until step 150 (ETAs behind its
    jobs are None until then); new estimates are applied without a rebuild."""
    import random

    rng = random.Random(7)
    d = dispatcher(replicas=2)
    d.estimator.observe("m", cost=1.0, seconds=2.0)
    nones = 0
    queued: list[QueuedJob] = []
    for step in range(300):
        op = rng.random()
        if op < 0.55 or not queued:
            j = job(
                d,
                rng.choice(["batch", "interactive"]),
                tenant=rng.choice("abc"),
                key=str(step),
                cost=rng.choice([0.5, 1.0, 3.0]),
                arrived=step * 0.01,
                model=rng.choice(["m", "m", "m2"]),
            )
            d.enqueue(j)
            queued.append(j)
        elif op < 0.7:
            gone = queued.pop(rng.randrange(len(queued)))
            assert d.remove(gone.id) is gone
        elif op < 0.85:
            for launch in d.dispatch(now=step * 0.01).launches:
                for j in launch.jobs:
                    queued.remove(j)
                batch = d.started(launch, step * 0.01, f"b{step}")
                assert batch is not None
                if rng.random() < 0.7:
                    d.finished(batch.id)
        else:
            model = "m" if step < 150 else rng.choice(["m", "m2"])
            d.estimator.observe(model, cost=1.0, seconds=rng.uniform(1.0, 3.0))
        now = step * 0.01
        for j in rng.sample(queued, min(5, len(queued))):
            qs = d.queues(j.family)
            order = list(qs[INTERACTIVE].jobs) + list(qs[BATCH].jobs)
            assert d.position(j.id) == order.index(j)
            expected = brute_eta(d, j, now)
            nones += expected is None
            assert d.eta(j.id, now) == pytest.approx(expected)
    assert nones > 0  # the case of a job ahead without an estimate was met
