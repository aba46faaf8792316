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
    _, ex_wall, ex_cpu = timed(spin, 0.05)  # e.g. loading an adapter
    clock.exclude(ex_wall, ex_cpu)
    paused0 = time.perf_counter()
    time.sleep(0.1)  # waiting at the step gate
    paused = time.perf_counter() - paused0
    spin(0.05)
    wall, device = clock.stop(paused)
    assert wall == pytest.approx(0.05, abs=0.04)
    assert device == pytest.approx(0.05, abs=0.02)
    assert ex_cpu == pytest.approx(0.05, abs=0.02)


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
    assert device == pytest.approx(wall, rel=0.05)  # 4 x 0.05 CPU s capped at the wall
