"""The step gate of a worker replica: one pipeline call computes at a time, by priority.

Each pipeline call runs in its own thread and holds the gate while it computes; between denoising
steps it calls ``checkpoint``: when a higher-priority call waits (an interactive batch behind a
batch-class one), the holder yields, the other runs, and the holder resumes at the same step.
Cancellation is checked at the same boundary. Lower number = higher priority. No Ray imports.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable


class Cancelled(Exception):
    """Raised inside a pipeline call at a step boundary when its jobs were cancelled."""


class StepGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: int | None = None  # ticket of the running call
        self._waiting: dict[int, tuple[int, int]] = {}  # ticket -> (priority, seq)
        self._seq = itertools.count()
        self.preemptions = 0
        self.busy_s = 0.0  # total time a call held the gate (the pipeline's busy time)
        self._held_since = 0.0

    def _best_waiter(self) -> int | None:
        if not self._waiting:
            return None
        return min(self._waiting, key=lambda t: self._waiting[t])

    def acquire(
        self,
        priority: int,
        cancel: threading.Event | None = None,
        rank: Callable[[], int] | None = None,
    ) -> int:
        """Wait for the gate; returns a ticket. Raises Cancelled if ``cancel`` is set first.
        ``rank``: the waiter's priority, read again whenever the gate is poked (``poke``):
        a step-engine set that an interactive job joins while it waits ranks as that job."""
        with self._cond:
            ticket = next(self._seq)
            self._waiting[ticket] = (min(priority, rank()) if rank else priority, ticket)
            try:
                while self._holder is not None or self._best_waiter() != ticket:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
                    self._cond.wait(timeout=0.05 if cancel is not None else None)
                    if rank is not None:
                        self._waiting[ticket] = (min(priority, rank()), ticket)
            finally:
                self._waiting.pop(ticket, None)
            self._holder = ticket
            self._held_since = time.perf_counter()
            return ticket

    def release(self, ticket: int) -> None:
        with self._cond:
            if self._holder == ticket:
                self._holder = None
                self.busy_s += time.perf_counter() - self._held_since
                self._cond.notify_all()

    def poke(self) -> None:
        """Wake the waiters, so those waiting with a ``rank`` read it again."""
        with self._cond:
            self._cond.notify_all()

    def checkpoint(
        self,
        ticket: int,
        priority: int,
        cancel: threading.Event | None = None,
        rank: Callable[[], int] | None = None,
    ) -> int:
        """Between steps: raise Cancelled if asked; yield to a higher-priority waiter.
        Returns the (possibly new) ticket the caller now holds (``rank``: as ``acquire``)."""
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        with self._cond:
            best = self._best_waiter()
            if best is None or self._waiting[best][0] >= priority:
                return ticket
            self.preemptions += 1
        self.release(ticket)
        return self.acquire(priority, cancel, rank)

    def count_preemption(self) -> None:
        """A preemption made outside the gate (the step engine parking a batch-class set)."""
        with self._cond:
            self.preemptions += 1

    @property
    def busy(self) -> bool:
        return self._holder is not None

    @property
    def waiters(self) -> int:
        """Calls waiting for the gate."""
        return len(self._waiting)
