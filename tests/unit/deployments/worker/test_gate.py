"""The worker's step gate: one call at a time, interactive preempts at a step boundary."""

from __future__ import annotations

import threading
import time

import pytest

from genmedia.deployments.worker.gate import Cancelled, StepGate


def test_higher_priority_preempts_at_the_next_checkpoint():
    gate = StepGate()
    log: list[str] = []
    started = threading.Event()  # the bulk call holds the gate and has done a step

    def bulk():
        t = gate.acquire(1)
        for step in range(500):  # until the interactive call has run (5 s at most)
            log.append(f"bulk{step}")
            started.set()
            time.sleep(0.01)
            t = gate.checkpoint(t, 1)
            if "inter" in log:
                log.append("bulk-after")
                break
        gate.release(t)

    def interactive():
        t = gate.acquire(0)
        log.append("inter")
        gate.release(t)

    a = threading.Thread(target=bulk)
    a.start()
    assert started.wait(10)
    b = threading.Thread(target=interactive)
    b.start()
    a.join()
    b.join()
    i = log.index("inter")
    assert 0 < i < len(log) - 1  # ran between bulk steps, not after the whole call
    assert log[-1] == "bulk-after" and gate.preemptions == 1


def test_equal_priority_does_not_preempt():
    gate = StepGate()
    t = gate.acquire(1)
    started = threading.Event()

    def other():
        started.set()
        t2 = gate.acquire(1)
        gate.release(t2)

    th = threading.Thread(target=other)
    th.start()
    started.wait()
    time.sleep(0.02)
    assert gate.checkpoint(t, 1) == t  # still ours
    gate.release(t)
    th.join()


def test_cancel_stops_at_checkpoint_and_while_waiting():
    gate = StepGate()
    cancel = threading.Event()
    t = gate.acquire(1, cancel)
    cancel.set()
    with pytest.raises(Cancelled):
        gate.checkpoint(t, 1, cancel)
    gate.release(t)
    holder = gate.acquire(1)
    waiting_cancel = threading.Event()
    errors = []

    def waiter():
        try:
            gate.acquire(0, waiting_cancel)
        except Cancelled:
            errors.append("cancelled")

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.05)
    waiting_cancel.set()
    th.join(1.0)
    assert errors == ["cancelled"]
    gate.release(holder)
    assert not gate.busy


def test_busy_time_counts_only_held_time():
    gate = StepGate()
    time.sleep(0.05)  # idle: not counted
    t = gate.acquire(1)
    time.sleep(0.05)
    gate.release(t)
    assert 0.05 <= gate.busy_s < 0.5
    gate.release(t)  # a second release of the same ticket adds nothing
    assert gate.busy_s < 0.5


def test_a_waiter_ranked_up_while_it_waits_goes_before_later_waiters_of_that_rank():
    """A step-engine set waiting at the batch rank that an interactive job joins ranks as
    that job once the gate is poked: it goes before an interactive call that came later."""
    gate = StepGate()
    holder = gate.acquire(0)
    rank = [1]
    order: list[str] = []

    def waiter(name: str, priority: int, ranked: bool) -> None:
        t = gate.acquire(priority, rank=(lambda: rank[0]) if ranked else None)
        order.append(name)
        gate.release(t)

    step_set = threading.Thread(target=waiter, args=("set", 1, True))
    step_set.start()
    while gate.waiters < 1:
        time.sleep(0.001)
    rank[0] = 0  # an interactive job became a member of the waiting set
    gate.poke()
    time.sleep(0.05)
    later = threading.Thread(target=waiter, args=("interactive", 0, False))
    later.start()
    while gate.waiters < 2:
        time.sleep(0.001)
    gate.release(holder)
    step_set.join(5)
    later.join(5)
    assert order == ["set", "interactive"]
    # without the rank it would have waited behind the interactive call
    gate2, order2 = StepGate(), []
    held = gate2.acquire(0)

    def plain(name: str, priority: int) -> None:
        t = gate2.acquire(priority)
        order2.append(name)
        gate2.release(t)

    threads = [threading.Thread(target=plain, args=a) for a in (("set", 1), ("interactive", 0))]
    for t in threads:
        t.start()
        while gate2.waiters < threads.index(t) + 1:
            time.sleep(0.001)
    gate2.release(held)
    for t in threads:
        t.join(5)
    assert order2 == ["interactive", "set"]
