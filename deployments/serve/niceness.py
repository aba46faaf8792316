"""The control plane's CPU priority: the gateway and scheduler replicas yield the CPU to family
workers that share their cores (``server.control_plane_niceness``).

Where it sits: called once in each control-plane replica's constructor. On Linux a niceness is a
property of each thread, and ``os.nice`` changes only the calling one: a Serve replica's busiest
threads (its request event loop, Ray's core-worker and gRPC threads) were started before the
constructor ran and kept niceness 0 (measured: the gateway's and the scheduler's main threads
used 20-23 % of a core each at niceness 0 while only a few idle threads had 10). So every
thread of the process is reniced; threads started later inherit it from their creator. Raising
a niceness needs no privilege. No Ray imports.
"""

from __future__ import annotations

import contextlib
import os

TASKS = "/proc/self/task"


def renice_threads(target: int) -> int:
    """Set every thread of this process below ``target`` niceness to it; how many changed."""
    changed = 0
    for name in os.listdir(TASKS):
        tid = int(name)
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            if os.getpriority(os.PRIO_PROCESS, tid) < target:
                os.setpriority(os.PRIO_PROCESS, tid, target)
                changed += 1
    return changed


def yield_cpu_to_workers(niceness: int) -> None:
    """Lower the CPU priority of every thread of this process by ``niceness``. Where the
    pipeline shares cores with the control plane (one machine, CPU inference), it then gets the
    CPU first and the control plane the rest."""
    if niceness <= 0:
        return
    if not os.path.isdir(TASKS):  # not Linux: niceness is the process's own
        with contextlib.suppress(OSError):
            os.nice(niceness)
        return
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + niceness)
    # again until nothing changes: a thread not yet reniced may start one during a pass
    while renice_threads(target):
        pass
