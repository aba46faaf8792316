"""Scheduling policy (pure, fake clock): queue order, fair share, batch forming, admission."""

from __future__ import annotations

from collections import Counter

import pytest

from genmedia.deployments.scheduler.admission import AdmissionInput, admit
from genmedia.deployments.scheduler.eta import ServiceTimeEstimator, eta_seconds, slot_free_in
from genmedia.deployments.scheduler.queues import (
    FairQueue,
    QueuedJob,
    ShareTracker,
    expired,
    form_batch,
    next_batch,
    position,
)

_ids = iter(range(10**9))


def job(
    tenant="a",
    key="k",
    images=1,
    cost=1.0,
    arrived=0.0,
    weight=1.0,
    prio="interactive",
    model="m",
    deadline=None,
):
    return QueuedJob(
        id=f"j{next(_ids)}",
        tenant=tenant,
        model_id=model,
        family="f",
        priority=prio,
        key=(model, key),
        images=images,
        cost=cost,
        arrived=arrived,
        weight=weight,
        deadline=deadline,
    )


def cap(n):
    return lambda _model: n


def drain(q: FairQueue, n: int) -> list[QueuedJob]:
    out = []
    for _ in range(n):
        batch = form_batch(q.jobs, cap(1))
        q.take(batch)
        out += batch
    return out


def test_fifo_within_a_tenant():
    q = FairQueue()
    jobs = [job(arrived=t) for t in range(5)]
    for j in jobs:
        q.push(j)
    assert [j.id for j in drain(q, 5)] == [j.id for j in jobs]


def test_equal_weights_interleave_a_flood_and_a_trickle():
    q = FairQueue()
    for t in range(20):
        q.push(job(tenant="flood", arrived=t * 0.01))
    for t in range(3):
        q.push(job(tenant="trickle", arrived=1 + t))
    order = [j.tenant for j in drain(q, 6)]
    assert order.count("trickle") == 3  # not stuck behind the flood's 20 jobs


def test_weights_give_proportional_shares():
    q = FairQueue()
    for t in range(300):
        q.push(job(tenant="heavy", weight=3.0, arrived=t))
        q.push(job(tenant="light", weight=1.0, arrived=t))
    served = Counter(j.tenant for j in drain(q, 200))
    assert served["heavy"] / served["light"] == pytest.approx(3.0, rel=0.1)


def test_cost_counts_not_just_jobs():
    q = FairQueue()
    for t in range(100):
        q.push(job(tenant="big", cost=4.0, arrived=t))
        q.push(job(tenant="small", cost=1.0, arrived=t))
    served = Counter(j.tenant for j in drain(q, 50))
    assert served["small"] == pytest.approx(4 * served["big"], rel=0.15)


def test_returning_tenant_is_not_penalised_for_idle_time():
    q = FairQueue()
    q.push(job(tenant="a"))
    drain(q, 1)
    for t in range(5):
        q.push(job(tenant="b", arrived=10 + t))
    q.push(job(tenant="a", arrived=20))
    order = [j.tenant for j in drain(q, 3)]
    assert "a" in order


def test_form_batch_only_compatible_up_to_capacity():
    jobs = [
        job(key="x"),
        job(key="y"),
        job(key="x", images=2),
        job(key="x", images=3),
        job(key="x"),
    ]
    batch = form_batch(jobs, cap(4))
    assert [j.key[1] for j in batch] == ["x", "x", "x"]
    assert sum(j.images for j in batch) == 4
    assert form_batch([job(images=9)], cap(4))[0].images == 9  # head goes alone
    assert form_batch([], cap(4)) == []


def queues(inter=(), bulk=()):
    qs = {"interactive": FairQueue(), "batch": FairQueue()}
    for j in inter:
        qs["interactive"].push(j)
    for j in bulk:
        qs["batch"].push(j)
    return qs


def decide(qs, slot="main", now=0.0, shares=None, wait=0.5, min_share=0.2, max_images=8):
    return next_batch(
        qs,
        slot,
        max_images=cap(max_images),
        batch_wait_s=lambda _m: wait,
        shares=shares or ShareTracker(),
        batch_min_share=min_share,
        now=now,
    )


def test_interactive_goes_first_and_dispatches_at_once():
    qs = queues(inter=[job(arrived=1.0)], bulk=[job(prio="batch", arrived=0.0)] * 1)
    d = decide(qs, now=5.0)
    assert d.cls == "interactive" and len(d.batch) == 1


def test_preempt_slot_is_interactive_only():
    qs = queues(bulk=[job(prio="batch")])
    assert decide(qs, slot="preempt", now=10.0).batch == []
    qs = queues(inter=[job()], bulk=[job(prio="batch")])
    assert decide(qs, slot="preempt", now=10.0).cls == "interactive"


def test_batch_waits_a_bounded_time_for_a_fuller_batch():
    qs = queues(bulk=[job(prio="batch", arrived=0.0)])
    d = decide(qs, now=0.1, wait=0.5)
    assert d.batch == [] and d.retry_at == pytest.approx(0.5)
    assert decide(qs, now=0.5, wait=0.5).cls == "batch"
    full = queues(bulk=[job(prio="batch", arrived=0.0) for _ in range(8)])
    assert len(decide(full, now=0.0, wait=0.5).batch) == 8  # full: no wait


def test_batch_keeps_its_minimum_share_under_an_interactive_flood():
    shares = ShareTracker(half_life_s=60)
    qs = queues(
        inter=[job(arrived=t) for t in range(500)],
        bulk=[job(prio="batch", arrived=0.0) for _ in range(500)],
    )
    served = Counter()
    now = 100.0
    for _ in range(200):
        d = decide(qs, now=now, shares=shares, min_share=0.2, max_images=1)
        qs[d.cls].take(d.batch)
        shares.record(d.cls, sum(j.cost for j in d.batch), now)
        served[d.cls] += 1
        now += 0.1
    assert 0.15 <= served["batch"] / 200 <= 0.3
    assert served["interactive"] > served["batch"]


def test_expired_and_position():
    qs = queues(inter=[job(deadline=5.0), job()], bulk=[job(prio="batch", deadline=3.0)])
    ids = [j.id for j in qs["interactive"].jobs] + [j.id for j in qs["batch"].jobs]
    assert position(qs, ids[1]) == 1 and position(qs, ids[2]) == 2
    gone = expired(qs.values(), now=4.0)
    assert [j.id for j in gone] == [ids[2]]
    assert position(qs, ids[2]) is None


def test_eta_from_observed_service_times():
    est = ServiceTimeEstimator(alpha=1.0)
    ahead = [job(cost=2.0), job(cost=2.0)]
    assert eta_seconds(ahead, est, capacity=1) is None  # nothing observed yet
    est.observe("m", cost=4.0, seconds=2.0)  # 0.5 s per unit
    assert eta_seconds(ahead, est, capacity=1) == pytest.approx(2.0)
    assert eta_seconds(ahead, est, capacity=2) == pytest.approx(1.0)
    assert eta_seconds(ahead, est, capacity=1, slot_free_in_s=3.0) == pytest.approx(5.0)
    assert eta_seconds([], est, capacity=1, slot_free_in_s=None) is None


def test_estimator_keeps_device_seconds_apart_from_wall_seconds():
    est = ServiceTimeEstimator(alpha=0.5)
    est.observe("m", cost=2.0, seconds=1.0, device_seconds=0.5)  # slowed by a neighbour
    assert est.per_cost["m"] == pytest.approx(0.5)  # ETAs see what calls take
    assert est.device_per_cost["m"] == pytest.approx(0.25)  # the autoscaler what they cost
    est.observe("m", cost=2.0, seconds=1.0, device_seconds=1.0)
    assert est.device_per_cost["m"] == pytest.approx(0.375)
    est.observe("g", cost=1.0, seconds=2.0)  # not measured (a GPU): the wall seconds
    assert est.device_per_cost["g"] == pytest.approx(2.0)
    est.observe("g", cost=1.0, seconds=2.0, device_seconds=5.0)  # never above the wall time
    assert est.device_per_cost["g"] == pytest.approx(2.0)
    est.observe("x", cost=0.0, seconds=1.0, device_seconds=1.0)  # nothing to learn from
    assert "x" not in est.per_cost and "x" not in est.device_per_cost


def test_slot_free_in():
    assert slot_free_in([], capacity=1, now=0.0) == 0.0
    assert slot_free_in([5.0], capacity=2, now=0.0) == 0.0  # a slot is free
    assert slot_free_in([5.0, 3.0], capacity=2, now=1.0) == pytest.approx(2.0)
    assert slot_free_in([None, 4.0], capacity=2, now=1.0) == pytest.approx(3.0)
    assert slot_free_in([None], capacity=1, now=0.0) is None
    assert slot_free_in([0.5], capacity=1, now=1.0) == 0.0  # overdue


def _adm(**over):
    base = dict(
        tenant="t",
        tenant_queued=0,
        max_queued_jobs=10,
        model_queued=0,
        model_queue_limit=100,
        rate_wait_s=0.0,
        predicted_start_s=None,
        deadline_in_s=None,
    )
    base.update(over)
    return admit(AdmissionInput(**base))


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"rate_wait_s": 2.0}, "rate_limited"),
        ({"tenant_queued": 10}, "tenant_queue_full"),
        ({"model_queued": 100}, "model_queue_full"),
        ({"predicted_start_s": 30.0, "deadline_in_s": 10.0}, "deadline_unmeetable"),
    ],
)
def test_admission_refusals(over, reason):
    r = _adm(**over)
    assert r is not None and r.status == 429 and r.type == reason and r.retry_after_s > 0


def test_admission_accepts_and_unknown_eta_does_not_refuse():
    assert _adm() is None
    assert _adm(deadline_in_s=1.0) is None
    assert _adm(predicted_start_s=0.5, deadline_in_s=1.0) is None


def test_fifo_baseline_ignores_tenants_and_weights():
    q = FairQueue(fifo=True)
    for t in range(10):
        q.push(job(tenant="flood", arrived=t, weight=0.1))
    q.push(job(tenant="late", arrived=10, weight=100.0))
    assert [j.tenant for j in drain(q, 11)][-1] == "late"


def test_prefix_units_follow_every_push_removal_and_take():
    """The queue's per-model prefix sums, brought up to date from the first changed place,
    equal sums recomputed from scratch after random appends, inserts, removals and takes."""
    import random

    rng = random.Random(3)
    q = FairQueue()
    for step in range(400):
        op = rng.random()
        if op < 0.6 or not q.jobs:
            q.push(
                job(
                    tenant=rng.choice("abc"),
                    cost=rng.choice([0.5, 1.0, 2.5]),
                    arrived=step,
                    model=rng.choice(["m", "m", "n"]),
                )
            )
        elif op < 0.75:
            gone = rng.choice(q.jobs)
            assert q.remove(gone.id, gone) is gone
        else:
            q.take(q.jobs[: rng.randint(1, 3)])
        if rng.random() < 0.5:  # asked after some changes only: several changes pile up
            continue
        prefix = q.prefix_units()
        for model in {j.model_id for j in q.jobs}:
            want, total = [0.0], 0.0
            for j in q.jobs:
                total += j.cost if j.model_id == model else 0.0
                want.append(total)
            assert prefix[model] == pytest.approx(want)
