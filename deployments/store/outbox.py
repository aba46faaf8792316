"""The webhook outbox: events owed to receivers, written with the job change that caused them.

A job's terminal state (or its start, or a progress step, per the tenant's event filter) and its
webhook event are committed in ONE job-store transaction (``SQLiteJobStore.transition_many``
with ``outbox=``), so a crash after the commit still finds the event here. The scheduler's
delivery loop reads due rows (``due``), sends them (``webhooks/delivery.py``) and writes the
outcome back (``attempted``): delivered, failed for good, or pending again at the next backoff
time. The delivery id (``webhook-id``) is made with the row: the same on every retry and after a
restart. SQL for the SQLite store; a Postgres store keeps the same table. No Ray imports.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from genmedia.deployments.webhooks.signing import new_delivery_id


class OutboxState(StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    DELIVERED = "delivered"  # a 2xx answered it
    FAILED = "failed"  # refused for good, or out of attempts


@dataclass
class OutboxEvent:
    """One webhook event for one job, from its creation to delivered / failed."""

    job_id: str
    tenant: str
    url: str
    event_type: str  # job.completed, job.failed, ..., job.started, job.progress
    payload: dict  # the event body (JSON object)
    created_at: float
    id: str = field(default_factory=new_delivery_id)  # delivery id: stable across retries
    next_attempt_at: float = 0.0  # 0: due at once
    attempts: int = 0
    state: OutboxState = OutboxState.PENDING
    last_error: str | None = None
    finished_at: float | None = None  # when delivered or given up

    def body(self) -> bytes:
        """The bytes sent (and signed): compact JSON of the payload."""
        return json.dumps(self.payload, separators=(",", ":")).encode()


SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due
    ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_outbox_job ON webhook_outbox (job_id);
"""

_COLUMNS = (
    "id, job_id, tenant, url, event_type, payload, attempts, next_attempt_at, created_at, "
    "state, last_error, finished_at"
)


def _from_row(row: sqlite3.Row) -> OutboxEvent:
    return OutboxEvent(
        id=row["id"],
        job_id=row["job_id"],
        tenant=row["tenant"],
        url=row["url"],
        event_type=row["event_type"],
        payload=json.loads(row["payload"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        state=OutboxState(row["state"]),
        last_error=row["last_error"],
        finished_at=row["finished_at"],
    )


def insert(db: sqlite3.Connection, events: Iterable[OutboxEvent]) -> None:
    """Add events inside the caller's transaction."""
    db.executemany(
        f"INSERT INTO webhook_outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                e.id,
                e.job_id,
                e.tenant,
                e.url,
                e.event_type,
                json.dumps(e.payload, separators=(",", ":")),
                e.attempts,
                e.next_attempt_at,
                e.created_at,
                str(e.state),
                e.last_error,
                e.finished_at,
            )
            for e in events
        ],
    )


def due(
    db: sqlite3.Connection,
    now: float,
    limit: int,
    skip_ids: Iterable[str] = (),
    skip_tenants: Iterable[str] = (),
) -> list[OutboxEvent]:
    """Pending events due by ``now``, earliest first, leaving out ``skip_ids`` (in flight) and
    ``skip_tenants`` (at their cap)."""
    ids, tenants = list(skip_ids), list(skip_tenants)
    where = ["state = 'pending'", "next_attempt_at <= ?"]
    if ids:
        where.append(f"id NOT IN ({', '.join('?' * len(ids))})")
    if tenants:
        where.append(f"tenant NOT IN ({', '.join('?' * len(tenants))})")
    rows = db.execute(
        f"SELECT * FROM webhook_outbox WHERE {' AND '.join(where)} "
        "ORDER BY next_attempt_at, created_at LIMIT ?",
        (now, *ids, *tenants, limit),
    ).fetchall()
    return [_from_row(r) for r in rows]


def attempted(
    db: sqlite3.Connection,
    delivery_id: str,
    now: float,
    delivered: bool,
    error: str | None,
    retry_at: float | None,
) -> None:
    """Count one attempt: delivered; else pending again at ``retry_at``, or failed for good
    when it is None. Only a pending row changes (a second writer cannot undo an outcome)."""
    if delivered:
        state, finished = OutboxState.DELIVERED, now
    elif retry_at is None:
        state, finished = OutboxState.FAILED, now
    else:
        state, finished = OutboxState.PENDING, None
    db.execute(
        "UPDATE webhook_outbox SET attempts = attempts + 1, state = ?, last_error = ?, "
        "next_attempt_at = COALESCE(?, next_attempt_at), finished_at = ? "
        "WHERE id = ? AND state = 'pending'",
        (str(state), error, retry_at, finished, delivery_id),
    )


def of_job(db: sqlite3.Connection, job_id: str) -> list[OutboxEvent]:
    rows = db.execute(
        "SELECT * FROM webhook_outbox WHERE job_id = ? ORDER BY created_at, rowid", (job_id,)
    ).fetchall()
    return [_from_row(r) for r in rows]


def prune(db: sqlite3.Connection, finished_before: float, limit: int) -> int:
    """Delete delivered and failed events that ended before the cutoff (at most ``limit``)."""
    return db.execute(
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
        "WHERE state != 'pending' AND finished_at < ? LIMIT ?)",
        (finished_before, limit),
    ).rowcount


class SQLiteOutbox:
    """The outbox methods of ``SQLiteJobStore`` (see ``JobStore``); mixed into it."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # SQLiteJobStore's fenced write transaction

    def add_webhooks(self, events: list[OutboxEvent]) -> None:
        if events:
            with self._write() as db:
                insert(db, events)

    def webhooks_due(
        self,
        now: float,
        limit: int,
        skip_ids: Iterable[str] = (),
        skip_tenants: Iterable[str] = (),
    ) -> list[OutboxEvent]:
        with self._lock:
            return due(self._db, now, limit, skip_ids, skip_tenants)

    def webhook_attempted(
        self,
        delivery_id: str,
        now: float,
        *,
        delivered: bool,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> None:
        with self._write() as db:
            attempted(db, delivery_id, now, delivered, error, retry_at)

    def webhooks_of(self, job_id: str) -> list[OutboxEvent]:
        with self._lock:
            return of_job(self._db, job_id)

    def prune_webhooks(self, finished_before: float, limit: int) -> int:
        with self._write() as db:
            return prune(db, finished_before, limit)
