"""The scheduler lease: one scheduler writes the job store at a time, with a fencing token.

A scheduler replica acquires the lease at start (``LeaseKeeper.acquire``: free, expired or
already its own; a second replica waits and retries), renews it well within its TTL
(``LeaseKeeper.hold``) and releases it at shutdown. Each takeover increments the token. The
store that acquired a lease checks the token inside every write transaction (``check``): once
another holder has taken over, the old scheduler's writes raise ``FencedOut`` and change
nothing, so two schedulers never both move jobs (e.g. during a redeploy, or a replica that
stalled past its TTL). Times are unix seconds from the callers' clocks (one node for SQLite;
Postgres would use its own ``now()``). SQL for the SQLite store; no Ray imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger("ray.serve")  # the scheduler's log (no Ray import here)

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
"""


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


def read(db: sqlite3.Connection, name: str) -> Lease | None:
    row = db.execute(
        "SELECT name, holder, token, expires_at FROM leases WHERE name = ?", (name,)
    ).fetchone()
    return None if row is None else Lease(row[0], row[1], int(row[2]), float(row[3]))


def acquire(
    db: sqlite3.Connection, name: str, holder: str, ttl_s: float, now: float
) -> Lease | None:
    """Inside the caller's write transaction: take the lease when it is free, expired or
    ``holder``'s own (then the token stays); None while another holder's is still valid."""
    current = read(db, name)
    if current is None:
        token = 1
        db.execute(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES (?, ?, ?, ?)",
            (name, holder, token, now + ttl_s),
        )
    elif current.holder == holder or current.expires_at <= now:
        token = current.token if current.holder == holder else current.token + 1
        db.execute(
            "UPDATE leases SET holder = ?, token = ?, expires_at = ? WHERE name = ?",
            (holder, token, now + ttl_s, name),
        )
    else:
        return None
    return Lease(name, holder, token, now + ttl_s)


def renew(db: sqlite3.Connection, lease: Lease, ttl_s: float, now: float) -> Lease:
    """Inside the caller's write transaction: extend a held lease; FencedOut when its token is
    no longer current. A lease that expired without a takeover is still renewed."""
    moved = db.execute(
        "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND token = ?",
        (now + ttl_s, lease.name, lease.holder, lease.token),
    ).rowcount
    if not moved:
        raise FencedOut(lease.name, lease.token, read(db, lease.name))
    return Lease(lease.name, lease.holder, lease.token, now + ttl_s)


def release(db: sqlite3.Connection, lease: Lease) -> None:
    """Inside the caller's write transaction: end a held lease now (the token stays, so the
    next holder gets a newer one); nothing when it was already taken over."""
    db.execute(
        "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ? AND token = ?",
        (lease.name, lease.holder, lease.token),
    )


def check(db: sqlite3.Connection, name: str, token: int) -> None:
    """Inside a write transaction: FencedOut unless ``token`` is the lease's current token."""
    current = read(db, name)
    if current is None or current.token != token:
        raise FencedOut(name, token, current)


class SQLiteLease:
    """The lease methods of ``SQLiteJobStore`` (see ``JobStore``); mixed into it. A store that
    acquires a lease fences its own writes with the token (``_fence``, checked by ``_write``)."""

    _db: sqlite3.Connection
    _lock: threading.Lock
    _fence: tuple[str, int] | None

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # SQLiteJobStore's fenced write transaction

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                held = acquire(self._db, name, holder, ttl_s, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if held is not None:
                self._fence = (held.name, held.token)
        return held

    def renew_lease(self, lease: Lease, ttl_s: float, now: float) -> Lease:
        with self._write() as db:
            return renew(db, lease, ttl_s, now)

    def release_lease(self, lease: Lease) -> None:
        with contextlib.suppress(FencedOut), self._write() as db:  # taken over: nothing to do
            release(db, lease)

    def lease(self, name: str) -> Lease | None:
        with self._lock:
            return read(self._db, name)


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
