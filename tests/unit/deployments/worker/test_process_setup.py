"""A pipeline's process setup (``worker/process_setup.py``): torch threads within the host's
cores the reserve leaves, pinned only when asked; run in child processes, so this one keeps its
own torch threads and affinity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from genmedia.deployments.worker.cpu_pinning import CLAIMS_ENV

PROBE = """
import os, sys
import torch
from genmedia.deployments.worker.process_setup import setup_process
threads = setup_process(float(sys.argv[1]), reserved=int(sys.argv[2]), pin=sys.argv[3] == "1")
print(threads, torch.get_num_threads(), len(os.sched_getaffinity(0)), sys.getswitchinterval())
"""


def _setup(tmp_path: Path, num_cpus: float, reserved: int, pin: bool) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(num_cpus), str(reserved), "1" if pin else "0"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, CLAIMS_ENV: str(tmp_path)},
    )
    return out.stdout.strip().splitlines()[-1].split()


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs thread affinity and two cores",
)
def test_threads_leave_the_reserve_and_pinning_follows_the_setting(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    # every core asked for: the reserve keeps one for the control plane
    assert _setup(tmp_path, cores, 1, pin=False)[:3] == [str(cores - 1), str(cores - 1), str(cores)]
    # no reserve: all of them, unpinned (a claim of every core is refused)
    assert _setup(tmp_path, cores, 0, pin=True)[:3] == [str(cores), str(cores), str(cores)]
    # one CPU, pinned: one thread on one core
    threads, torch_threads, affinity, interval = _setup(tmp_path, 1, 1, pin=True)
    assert (threads, torch_threads, affinity) == ("1", "1", "1")
    assert float(interval) == pytest.approx(0.02)
