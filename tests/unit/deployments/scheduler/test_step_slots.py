"""The dispatcher's slots for a family whose worker runs the step engine (``engines``): images
in flight per replica up to the set bound plus a staged set, calls of any size down to one
image, no wait for a fuller batch; a request-level family keeps its slots exactly."""

from __future__ import annotations

import itertools

import pytest

from genmedia.deployments.protocol import PriorityClass
from genmedia.deployments.scheduler.dispatcher import (
    MAIN_SLOTS_PER_REPLICA,
    PREEMPT_SLOTS_PER_REPLICA,
    SLOTS_PER_REPLICA,
    STEP_STAGED_SETS,
    Dispatcher,
    Launch,
    ModelLimits,
    slots_per_replica,
    step_rows_per_replica,
)
from genmedia.deployments.scheduler.queues import QueuedJob
from genmedia.deployments.worker.engine_policy import MAX_SET_ROWS, set_bound

_ids = itertools.count()
INTERACTIVE, BATCH = PriorityClass.INTERACTIVE, PriorityClass.BATCH


def dispatcher(
    engine: str = "step", replicas: int = 1, max_batch: int = 4, wait_s: float = 0.0
) -> Dispatcher:
    models = {"m": ModelLimits("f", max_batch, wait_s), "g": ModelLimits("other", 4, 0.0)}
    return Dispatcher(
        models, batch_min_share=0.2, replicas=replicas, engines={"f": engine, "other": "request"}
    )


def job(d: Dispatcher, priority: str = "batch", images: int = 1, arrived: float = 0.0,
        key: str = "k") -> QueuedJob:  # fmt: skip
    return QueuedJob(
        id=f"j{next(_ids)}",
        tenant="a",
        model_id="m",
        family="f",
        priority=d.queue_class(priority),
        key=("m", key),
        images=images,
        cost=float(images),
        arrived=arrived,
    )


def start(d: Dispatcher, launch: Launch, now: float = 0.0) -> str:
    batch = d.started(launch, now, f"b{next(_ids)}")
    assert batch is not None
    return batch.id


def images(launches: list[Launch] | tuple[Launch, ...]) -> list[int]:
    return [sum(j.images for j in x.jobs) for x in launches]


def test_slots_per_replica_by_engine() -> None:
    for n in (1, 4, 8, 1000):
        assert slots_per_replica("request", n) == SLOTS_PER_REPLICA
        rows = (1 + STEP_STAGED_SETS) * min(n, MAX_SET_ROWS)
        assert step_rows_per_replica(n) == rows
        assert slots_per_replica("step", n) == rows + PREEMPT_SLOTS_PER_REPLICA
    assert set_bound(8) == 8 and set_bound(10**6) == MAX_SET_ROWS
    with pytest.raises(ValueError, match="engine"):
        slots_per_replica("stepwise", 8)
    with pytest.raises(ValueError, match="max_batch_size"):
        set_bound(0)
    with pytest.raises(ValueError, match="engines"):
        dispatcher(engine="turbo")


def test_jobs_arriving_one_by_one_each_go_out_up_to_the_rows_of_a_replica() -> None:
    d = dispatcher(max_batch=4)
    assert d.engine("f") == "step" and d.engine("other") == "request"
    rows = step_rows_per_replica(4)
    launched: list[Launch] = []
    for t in range(rows + 3):  # one job at a time: each launches at once, alone
        d.enqueue(job(d, arrived=float(t)))
        launched += d.dispatch(now=float(t)).launches
    assert images(launched) == [1] * rows  # far beyond the request engine's two main calls
    assert d.running_calls("f") == rows > MAIN_SLOTS_PER_REPLICA
    assert d.queued_count == 3
    ids = [start(d, launch) for launch in launched]
    assert d.finished(ids[0]) is not None  # one member left the set: one image of room
    out = d.dispatch(now=100.0)
    assert images(out.launches) == [1] and d.queued_count == 2


def test_a_queue_fills_the_rows_in_batches_of_at_most_max_batch_size() -> None:
    d = dispatcher(max_batch=4, replicas=2)
    for _ in range(40):
        d.enqueue(job(d))
    out = d.dispatch(now=0.0)
    assert images(out.launches) == [4] * (2 * step_rows_per_replica(4) // 4)
    ids = [start(d, x) for x in out.launches]
    assert not d.dispatch(now=1.0).launches
    d.finished(ids[0])
    assert images(d.dispatch(now=1.0).launches) == [4]


def test_room_caps_a_call_and_a_full_replica_takes_nothing() -> None:
    d = dispatcher(max_batch=4)
    rows = step_rows_per_replica(4)
    for _ in range(rows - 1):
        d.enqueue(job(d))
    out = d.dispatch(now=0.0)
    assert sum(images(out.launches)) == rows - 1
    for _ in range(4):
        d.enqueue(job(d))
    out = d.dispatch(now=0.0)
    assert images(out.launches) == [1]  # one image of room left
    assert not d.dispatch(now=0.0).launches


def test_a_batch_class_head_does_not_wait_for_a_fuller_batch() -> None:
    step, request = dispatcher("step", wait_s=5.0), dispatcher("request", wait_s=5.0)
    for d in (step, request):
        d.enqueue(job(d, arrived=0.0))
    assert images(step.dispatch(now=0.0).launches) == [1]
    out = request.dispatch(now=0.0)
    assert not out.launches and out.retry_at == 5.0


def test_request_engine_keeps_its_two_main_calls_per_replica() -> None:
    d = dispatcher("request", max_batch=1)
    for t in range(6):
        d.enqueue(job(d, arrived=float(t)))
    out = d.dispatch(now=10.0)
    assert len(out.launches) == MAIN_SLOTS_PER_REPLICA
    assert d.engine("f") == "request"


def test_rows_come_back_on_release_partial_start_and_finish() -> None:
    d = dispatcher(max_batch=4)
    rows = step_rows_per_replica(4)
    for _ in range(rows):
        d.enqueue(job(d))
    first, second = d.dispatch(now=0.0).launches
    assert not d.dispatch(now=0.0).launches
    d.release(first)  # its jobs ended meanwhile: 4 images of room
    batch = d.started(second, 0.0, "b-part", job_ids=[second.jobs[0].id])  # 3 images ended
    assert batch is not None
    for _ in range(10):
        d.enqueue(job(d))
    refill = d.dispatch(now=0.0).launches
    assert sum(images(refill)) == 4 + 3
    d.finished("b-part")
    assert images(d.dispatch(now=0.0).launches) == [1]


def test_interactive_on_a_step_family_goes_first_and_preempt_slots_stay_as_they_were() -> None:
    d = dispatcher(max_batch=4)
    rows = step_rows_per_replica(4)
    for _ in range(rows):
        d.enqueue(job(d, "batch"))
    assert sum(images(d.dispatch(now=0.0).launches)) == rows  # main slots full of batch calls
    for _ in range(3):
        d.enqueue(job(d, "interactive", key="other-size"))
    out = d.dispatch(now=1.0)
    assert [(x.slot, x.cls) for x in out.launches] == [("preempt", INTERACTIVE)]
    assert images(out.launches) == [3]  # one interactive call of all three (max 4)
    assert d.running_calls("f") == rows // 4 + 1


def test_slot_free_in_counts_the_step_slots() -> None:
    d = dispatcher(max_batch=4)
    d.enqueue(job(d))
    start(d, d.dispatch(now=0.0).launches[0])
    assert d.slot_free_in("f", "batch", now=0.0) == 0.0  # many more calls fit
