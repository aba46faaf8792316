"""Device seconds of a pipeline call (deployments/worker/device_time.py), on real threads."""

from __future__ import annotations

import threading
import time

import pytest

from genmedia.deployments.worker.device_time import DeviceClock, timed


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cpu_device_counts_the_threads_cpu_not_its_waits():
    clock = DeviceClock("cpu")
    spin(0.05)
    time.sleep(0.2)  # descheduled: as if a neighbour held the core
    spin(0.05)
    wall, device = clock.stop()
    assert wall >= 0.3
    assert 0.09 <= device <= 0.2


def test_pauses_and_excluded_work_leave_both_clocks():
    clock = DeviceClock("cpu")
    _, ex_wall, ex_cpu = timed(spin, 0.1)  # e.g. loading an adapter
    clock.exclude(ex_wall, ex_cpu)
    paused0 = time.perf_counter()
    time.sleep(0.3)  # waiting at the step gate
    paused = time.perf_counter() - paused0
    spin0 = time.perf_counter()
    spin(0.05)
    spin_wall = time.perf_counter() - spin0  # more than 0.05 s when the core is shared
    wall, device = clock.stop(paused)
    # Only the spin is left of the wall time, plus the bookkeeping between the clocks
    # (microseconds; more only if the thread is descheduled right there, never near the
    # 0.1 s of excluded work or the 0.3 s pause, which a wrong subtraction would leave in).
    assert spin_wall - 0.005 <= wall < spin_wall + 0.09
    assert device == pytest.approx(0.05, abs=0.02)
    assert ex_cpu == pytest.approx(0.1, abs=0.02)


def test_another_threads_cpu_is_not_this_calls():
    clock = DeviceClock("cpu")
    other = threading.Thread(target=spin, args=(0.2,))
    other.start()
    other.join()
    spin(0.02)
    _, device = clock.stop()
    assert device < 0.1


def test_gpu_device_time_is_the_wall_time():
    clock = DeviceClock("cuda")
    time.sleep(0.05)
    wall, device = clock.stop()
    assert device == wall >= 0.05


def test_threads_scale_the_cpu_time_but_never_past_the_wall_time():
    clock = DeviceClock("cpu", threads=4)
    spin(0.05)
    wall, device = clock.stop()
    # 4 x 0.05 CPU s, capped at the wall (which is above 0.2 s only on a shared core)
    assert device == pytest.approx(min(wall, 0.2), rel=0.05)
    assert device <= wall
