"""The scheduler lease: one scheduler writes the job store at a time, with a fencing token.

A scheduler replica acquires the lease at start (``LeaseKeeper.acquire``: free, expired or
already its own; a standby waits and retries), renews it well within its TTL
(``LeaseKeeper.hold``) and releases it at shutdown. Each takeover increments the token. The
store that acquired a lease checks the token inside every write transaction: once another
holder has taken over, the old scheduler's writes raise ``FencedOut`` and change nothing, so two
schedulers never both move jobs (e.g. during a redeploy, or a replica that stalled past its
TTL). The lease row lives in the job store (``sql/store.py``: the ``leases`` table); times are
unix seconds from the callers' clocks. No Ray imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger("ray.serve")  # the scheduler's log (no Ray import here)


@dataclass(frozen=True)
class Lease:
    """A lease as held: ``token`` grows by one at every change of holder."""

    name: str
    holder: str
    token: int
    expires_at: float


class FencedOut(RuntimeError):
    """A write (or renewal) refused: another holder took the lease over (a newer token)."""

    def __init__(self, name: str, token: int, current: Lease | None):
        now = f"{current.holder!r} holds token {current.token}" if current else "nobody holds it"
        super().__init__(
            f"lease {name!r}: token {token} is stale ({now}); this scheduler no longer owns the "
            "job store and must stop"
        )
        self.name = name
        self.token = token
        self.current = current


class LeaseStore(Protocol):
    """The lease part of ``JobStore``."""

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> Lease | None: ...

    def renew_lease(self, lease: Lease, ttl_s: float, now: float) -> Lease: ...

    def release_lease(self, lease: Lease) -> None: ...

    def lease(self, name: str) -> Lease | None: ...


class LeaseKeeper:
    """A scheduler's side of the lease: ``acquire`` waits (a standby, logging every
    ``log_every`` tries) until the lease is free or expired, ``hold`` renews it every
    ``renew_s`` until it is taken over (then ``on_lost``), ``release`` gives it up."""

    def __init__(
        self,
        store: LeaseStore,
        name: str,
        *,
        ttl_s: float,
        renew_s: float,
        on_lost: Callable[[FencedOut], None],
        clock: Callable[[], float] = time.time,
        log_every: int = 10,
    ):
        if renew_s >= ttl_s:
            raise ValueError(f"renew_s ({renew_s:g}) must be below ttl_s ({ttl_s:g})")
        self.store, self.name, self.ttl_s, self.renew_s = store, name, ttl_s, renew_s
        self.on_lost, self.clock, self.log_every = on_lost, clock, log_every
        self.holder = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.lease: Lease | None = None

    async def acquire(self) -> Lease:
        tries = 0
        while True:
            lease = self.store.acquire_lease(self.name, self.holder, self.ttl_s, self.clock())
            if lease is not None:
                if tries:
                    logger.info("took over lease %r (token %d)", self.name, lease.token)
                self.lease = lease
                return lease
            if tries % self.log_every == 0:
                held = self.store.lease(self.name)
                left = max(0.0, held.expires_at - self.clock()) if held else 0.0
                logger.warning(
                    "standby: %s holds lease %r (token %s, %.0f s left); trying again every %g s",
                    held.holder if held else "another holder",
                    self.name,
                    held.token if held else "?",
                    left,
                    self.renew_s,
                )
            tries += 1
            await asyncio.sleep(self.renew_s)

    async def hold(self) -> None:
        """Renew until taken over (``on_lost``, then return); a failed renewal is logged and
        tried again (the lease lasts ``ttl_s`` from the last one)."""
        failures = 0
        while True:
            await asyncio.sleep(self.renew_s)
            assert self.lease is not None, "acquire() first"
            try:
                self.lease = self.store.renew_lease(self.lease, self.ttl_s, self.clock())
                failures = 0
            except FencedOut as e:
                self.on_lost(e)
                return
            except Exception as e:
                failures += 1
                logger.warning(
                    "could not renew lease %r (%d time(s) in a row): %s", self.name, failures, e
                )

    def release(self) -> None:
        """Give the lease up now; never raises (shutdown path)."""
        if self.lease is not None:
            with contextlib.suppress(Exception):
                self.store.release_lease(self.lease)
