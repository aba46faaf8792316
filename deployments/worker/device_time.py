"""Device seconds of one pipeline call: the time its device spent on it, not the wall time.

The worker (``deployments/worker/batch.py``) reports both for every call; the scheduler's estimator
keeps wall seconds per work unit for its ETAs and device seconds per unit for the autoscaler
(``autoscaling/signals.py``). They differ when replicas share one device: co-located calls
slow each other down, so wall time per unit rises with the replicas while the work offered
has not grown. Sized from wall time, a policy would add replicas that add no capacity, and
slow the others further.

- On a CPU device a call computes on its own thread (the worker runs torch with a fixed number
  of intra-op threads, one per Ray CPU), so the thread's CPU time is its device time. It leaves
  out the time the thread waited for a core (run queue) and at the step gate, which is most of
  the stretch when more threads are runnable than there are cores. It does not leave out
  slowdowns of a shared physical core (SMT siblings, a hypervisor's other guests, caches): on
  the 2-vCPU VM the benchmarks run on, a one-thread matmul loop takes 1.5-2.7x its solo CPU
  time (2.3-4.6x its wall time) beside one spinning process. So it is an upper bound of the
  solo cost, closer to it than the wall time. (With more than one torch thread the other
  threads' time is not counted: the estimate scales with ``threads``.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class DeviceClock:
    """Started on the thread that runs a call; ``exclude`` brackets work that is not the call's
    compute (adapter loading); ``stop`` gives wall and device seconds since the start."""

    device: str
    threads: int = 1
    wall0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.thread_time)
    excluded_wall: float = 0.0
    excluded_cpu: float = 0.0

    def exclude(self, wall_s: float, cpu_s: float) -> None:
        self.excluded_wall += wall_s
        self.excluded_cpu += cpu_s

    def stop(self, paused_wall_s: float = 0.0) -> tuple[float, float]:
        """(wall, device) seconds of compute: wall minus pauses and excluded work; device as
        the module says, never more than the wall seconds."""
        wall = max(0.0, time.perf_counter() - self.wall0 - paused_wall_s - self.excluded_wall)
        if self.device != "cpu":
            return wall, wall
        cpu = max(0.0, time.thread_time() - self.cpu0 - self.excluded_cpu) * self.threads
        return wall, min(wall, cpu)


def timed(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[T, float, float]:
    """``fn(*args, **kwargs)`` and the (wall, thread CPU) seconds it took on this thread."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall0, time.thread_time() - cpu0
