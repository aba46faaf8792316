"""One active scheduler, standbys waiting: the lease side of ``serve/scheduler.py``'s
``Scheduler`` (a mixin) and the gate every scheduler call passes.

Between the gateway and the scheduler's state. A replica waits for the job store's lease in
the background (``_activate``), then starts; until then each call either waits for its takeover
or is refused with ``SchedulerNotActive`` so the gateway tries the active replica
(``serve/routing.py`` routes on ``record_routing_stats``). Once another replica's token fences
this one out, it stops and fails its health check, and Serve replaces it with a fresh standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable

from genmedia.deployments.protocol import SchedulerNotActive
from genmedia.deployments.store.jobs import FencedOut
from genmedia.deployments.store.lease import LeaseKeeper
from genmedia.deployments.store.sql.store import SQLJobStore
from genmedia.models.catalog import Catalog

logger = logging.getLogger("ray.serve")

LEASE_NAME = "scheduler"
LEASE_SEEN_S = 0.25  # a standby reads who holds the lease at most this often


def when_active(fn):
    """A scheduler call served by the active replica only (``Scheduler._until_active``)."""

    @functools.wraps(fn)
    async def call(self, *args, **kwargs):
        await self._until_active()
        return await fn(self, *args, **kwargs)

    return call


def when_active_stream(fn):
    """``when_active`` for a streaming call."""

    @functools.wraps(fn)
    async def call(self, *args, **kwargs):
        await self._until_active()
        async for item in fn(self, *args, **kwargs):
            yield item

    return call


class LeaseHolder:
    """The lease, activation and fencing of a scheduler replica."""

    catalog: Catalog
    store: SQLJobStore
    lease: LeaseKeeper
    clock: Callable[[], float]
    batches: dict
    _active: asyncio.Event
    _fenced: FencedOut | None
    _start_error: Exception | None
    _lease_seen: tuple[float, str | None]
    _tasks: set[asyncio.Task]
    _intake_task: asyncio.Task

    _start: Callable[[dict], None]  # provided by ``Scheduler``

    async def _activate(self, tenants: dict) -> None:
        """Wait for the lease (a standby waits here), then rebuild the queues from the store and
        start the loops. A failed start gives the lease up and fails the health check."""
        await self.lease.acquire()
        try:
            self._start(tenants)
        except Exception as e:
            logger.exception("scheduler could not start; giving the lease up")
            self._start_error = e
            self.lease.release()
            return
        self._active.set()
        held = self.lease.lease
        logger.info("scheduler active (lease token %s)", held.token if held else "?")

    async def _until_active(self) -> None:
        """Return once this replica serves. A standby raises ``SchedulerNotActive`` at once while
        another replica holds a live lease (the gateway tries again, routed to that one), and
        otherwise waits for its own takeover, at most ``lease_ttl_s`` plus the start."""
        if self._active.is_set():
            if self._fenced is not None:
                raise self._fenced
            return
        ttl = self.catalog.server.scheduler.lease_ttl_s
        deadline = time.monotonic() + 2 * ttl + 10.0
        while not self._active.is_set():
            holder = self._lease_holder()
            if holder is not None and holder != self.lease.holder:
                raise SchedulerNotActive(f"standby scheduler replica: {holder} is active")
            left = deadline - time.monotonic()
            if left <= 0 or self._start_error is not None:
                raise SchedulerNotActive("no scheduler replica has taken the job store over yet")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._active.wait(), min(left, ttl / 4))

    def _lease_holder(self) -> str | None:
        """Who holds a live lease now (read from the store at most every ``LEASE_SEEN_S``)."""
        now = time.monotonic()
        if now - self._lease_seen[0] > LEASE_SEEN_S:
            try:
                held = self.store.lease(LEASE_NAME)
            except Exception:
                held = None
            live = held is not None and held.expires_at > self.clock()
            self._lease_seen = (now, held.holder if live and held else None)
        return self._lease_seen[1]

    def record_routing_stats(self) -> dict[str, int]:
        """Serve's routing stats: whether this replica serves (``serve/routing.py``)."""
        return {"active": int(self._active.is_set() and self._fenced is None)}

    def _fenced_out(self, error: FencedOut) -> None:
        """Another scheduler owns the store now: stop dispatching, cancel the running calls and
        every loop (intake stays: its writes are refused, so submits fail at once). The health
        check then fails and Serve replaces this replica with a fresh standby."""
        if self._fenced is not None:
            return
        self._fenced = error
        logger.error("scheduler stops: %s", error)
        for _, stream in list(self.batches.values()):
            stream.cancel()
        me = asyncio.current_task()
        for task in list(self._tasks):
            if task is not me and task is not self._intake_task:
                task.cancel()

    def __del__(self) -> None:
        """Serve's graceful shutdown: give the lease up, so a successor need not wait for it to
        expire (its newer token still fences this replica's later writes)."""
        keeper = getattr(self, "lease", None)
        if keeper is not None:
            keeper.release()

    async def check_health(self) -> None:
        if self._start_error is not None:
            raise RuntimeError(f"scheduler could not start: {self._start_error}")
        if self._fenced is not None:
            raise RuntimeError(f"scheduler fenced out of the job store: {self._fenced}")
        if not any(not t.done() for t in self._tasks):
            raise RuntimeError("scheduler loops stopped")
