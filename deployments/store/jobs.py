"""Job records and the store that keeps them: what makes an accepted job survive a crash.

The scheduler writes a job here before the gateway answers 202, moves it through its states with
compare-and-set transitions (a terminal state is final), stores the result before ``COMPLETED``,
and on restart rebuilds its queues from ``unfinished()``. The embedded store is one SQLite file
(single writer: the scheduler replica, on one node); ``JobStore`` is the interface a Redis or
Postgres store implements for a scheduler that may move between nodes. No Ray imports.

Webhook events are written to the outbox (``outbox.py``) in the same transaction as the job
change that causes them. A store that acquired the scheduler lease (``lease.py``) checks its
fencing token inside every write transaction (``_write``) and refuses writes once another
scheduler has taken the lease over (``FencedOut``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

from genmedia.deployments.protocol import (
    TERMINAL,
    AdapterRecord,
    JobStatus,
    RuntimeKey,
    UsageRow,
)
from genmedia.deployments.store import lease as leases
from genmedia.deployments.store import outbox as _outbox
from genmedia.deployments.store.lease import FencedOut, Lease, SQLiteLease
from genmedia.deployments.store.outbox import OutboxEvent, OutboxState, SQLiteOutbox

__all__ = [
    "TERMINAL",
    "FencedOut",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "KeyStore",
    "Lease",
    "OutboxEvent",
    "OutboxFn",
    "OutboxState",
    "SQLiteJobStore",
]


@dataclass
class JobRecord:
    """One job from submit to its terminal state."""

    id: str
    tenant: str
    model_id: str
    priority: str  # interactive | batch
    status: JobStatus
    job: dict  # the resolved GenerationJob (params, prompt, seed, ...)
    submitted_at: float
    weight: float = 1.0  # the tenant's fair-share weight when submitted
    deadline: float | None = None  # absolute time; EXPIRED if still queued then
    idempotency_key: str | None = None
    # SHA-256 of the canonical request body submitted with the idempotency key: a repeat of the
    # key with another body is refused (409), with the same body it answers this job
    body_sha256: str | None = None
    webhook_url: str | None = None
    # legacy: stores from before the outbox set it between the terminal state and the delivery;
    # read once at start (``migrate_pending_webhooks``), never set any more
    webhook_pending: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    result: dict | None = None
    error_type: str | None = None
    error_message: str | None = None
    usage: dict = field(default_factory=dict)  # images, steps, compute_s, ...

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_row(self) -> dict:
        row = asdict(self)
        row["status"] = str(self.status)
        row["job"] = json.dumps(self.job)
        row["result"] = json.dumps(self.result) if self.result is not None else None
        row["usage"] = json.dumps(self.usage)
        row["webhook_pending"] = int(self.webhook_pending)
        return row

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        d = dict(row)
        d["status"] = JobStatus(d["status"])
        d["job"] = json.loads(d["job"])
        d["result"] = json.loads(d["result"]) if d["result"] is not None else None
        d["usage"] = json.loads(d["usage"] or "{}")
        d["webhook_pending"] = bool(d["webhook_pending"])
        return cls(**d)


OutboxFn = Callable[[JobRecord], Iterable[OutboxEvent]]


class JobStore(Protocol):
    """Where jobs live. Implementations must make ``create`` and ``transition`` atomic.

    Writes of a store that holds the scheduler lease (``acquire_lease``) carry its fencing
    token: each write transaction checks it and raises ``FencedOut`` (changing nothing) once
    another holder has taken the lease over."""

    def create(self, rec: JobRecord) -> tuple[JobRecord, bool]:
        """Insert a job; with an idempotency key already used by the tenant, return that job
        and False instead."""
        ...

    def create_many(self, recs: list[JobRecord]) -> list[tuple[JobRecord, bool]]:
        """``create`` for several jobs in one transaction (group commit): all are durable when
        it returns, or none (it raises). A key used twice in ``recs`` creates the first."""
        ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def find(self, tenant: str, idempotency_key: str) -> JobRecord | None:
        """The tenant's job submitted with this idempotency key, if any."""
        ...

    def transition(
        self,
        job_id: str,
        allowed_from: frozenset[JobStatus] | set[JobStatus],
        to: JobStatus,
        **updates: object,
    ) -> JobRecord | None:
        """Move a job to ``to`` only if its status is in ``allowed_from``; None otherwise."""
        ...

    def transition_many(
        self,
        items: list[tuple[str, dict]],
        allowed_from,
        to,
        bump_attempts: bool = False,
        outbox: OutboxFn | None = None,
    ) -> list[JobRecord]:
        """Several transitions in one atomic write; returns the records that moved. With
        ``outbox``, the webhook events ``outbox(record)`` gives for each moved record are
        written in the same transaction (all or nothing)."""
        ...

    def update(self, job_id: str, **updates: object) -> None:
        """Change fields other than the status (progress bookkeeping)."""
        ...

    def unfinished(self) -> list[JobRecord]:
        """Jobs not yet in a terminal state, oldest first (for recovery)."""
        ...

    def webhooks_pending(self) -> list[JobRecord]:
        """Legacy: jobs a store from before the outbox still owes a webhook."""
        ...

    # -- webhook outbox (``outbox.py``) --------------------------------------------------------
    def add_webhooks(self, events: list[OutboxEvent]) -> None:
        """Write events not tied to a state change (progress) in one transaction."""
        ...

    def webhooks_due(
        self,
        now: float,
        limit: int,
        skip_ids: Iterable[str] = (),
        skip_tenants: Iterable[str] = (),
    ) -> list[OutboxEvent]:
        """Pending events due by ``now``, earliest first, without the skipped ids/tenants."""
        ...

    def webhook_attempted(
        self,
        delivery_id: str,
        now: float,
        *,
        delivered: bool,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> None:
        """Count an attempt: delivered, pending again at ``retry_at``, or failed (None)."""
        ...

    def webhooks_of(self, job_id: str) -> list[OutboxEvent]:
        """A job's events, oldest first."""
        ...

    def migrate_pending_webhooks(self, build: OutboxFn) -> int:
        """Legacy rows: write ``build(record)`` for every job flagged ``webhook_pending`` and
        clear the flag, in one transaction; how many jobs moved."""
        ...

    def prune_webhooks(self, finished_before: float, limit: int) -> int:
        """Delete delivered / failed events that ended before the cutoff."""
        ...

    # -- the scheduler lease (``lease.py``) ------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        """Take the lease (free, expired, or already ``holder``'s) and fence this store's
        writes with its token; None while another holder's lease is valid."""
        ...

    def renew_lease(self, lease: Lease, ttl_s: float, now: float) -> Lease:
        """Extend the held lease; FencedOut when it was taken over."""
        ...

    def release_lease(self, lease: Lease) -> None:
        """End the held lease now (a successor need not wait for it to expire)."""
        ...

    def lease(self, name: str) -> Lease | None:
        """The lease as stored (holder, token, expiry), held or not."""
        ...

    def put_adapter(self, record: AdapterRecord) -> None:
        """Keep (or replace) a LoRA adapter registered at run time."""
        ...

    def delete_adapter(self, adapter_id: str) -> bool: ...

    def adapters(self) -> dict[str, AdapterRecord]:
        """Adapters registered at run time, by id."""
        ...

    def usage(self, tenant: str) -> list[UsageRow]:
        """Per model: jobs, images, steps and compute seconds of the tenant's finished jobs."""
        ...


class KeyStore(Protocol):
    """API keys and quota overrides changed at run time (``SQLJobStore``; the embedded
    ``SQLiteJobStore`` does not keep them). Writes are fenced as every other write."""

    def add_api_key(self, key: RuntimeKey) -> bool:
        """Insert a key row; False (nothing written) when its id is already stored."""
        ...

    def revoke_api_key(self, key_id: str, at: float) -> bool:
        """Set ``revoked_at`` of a stored key (kept if already set); False when not stored."""
        ...

    def set_tenant_quotas(self, tenant: str, quotas: dict[str, int], at: float) -> None:
        """Replace the tenant's quota overrides (the whole mapping)."""
        ...

    def api_keys(self) -> list[RuntimeKey]:
        """Every key row, revoked ones too, by id."""
        ...

    def tenant_quotas(self) -> dict[str, dict[str, int]]:
        """Quota overrides by tenant."""
        ...


_COLUMNS = [f.name for f in fields(JobRecord)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    model_id TEXT NOT NULL,
    priority TEXT NOT NULL,
    status TEXT NOT NULL,
    job TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0,
    deadline REAL,
    idempotency_key TEXT,
    body_sha256 TEXT,
    webhook_url TEXT,
    webhook_pending INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error_type TEXT,
    error_message TEXT,
    usage TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (status) WHERE status IN ('IN_QUEUE', 'IN_PROGRESS');
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant, status);
CREATE TABLE IF NOT EXISTS usage_totals (
    tenant TEXT NOT NULL,
    model_id TEXT NOT NULL,
    status TEXT NOT NULL,
    jobs INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0,
    compute_s REAL NOT NULL DEFAULT 0.0,
    PRIMARY KEY (tenant, model_id, status)
);
CREATE TABLE IF NOT EXISTS adapters (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
"""

# columns added after the first edition's table: (name, SQL type), added by ``_add_columns``
_ADDED_COLUMNS = [("body_sha256", "TEXT")]

_FILL_TOTALS = """
INSERT INTO usage_totals (tenant, model_id, status, jobs, images, steps, compute_s)
SELECT tenant, model_id, status, COUNT(*),
       SUM(COALESCE(json_extract(usage, '$.images'), 0)),
       SUM(COALESCE(json_extract(usage, '$.steps'), 0)),
       SUM(COALESCE(json_extract(usage, '$.compute_s'), 0.0))
FROM jobs GROUP BY tenant, model_id, status
"""
_COUNT = """
INSERT INTO usage_totals (tenant, model_id, status, jobs, images, steps, compute_s)
VALUES (:tenant, :model_id, :status, :jobs, :images, :steps, :compute_s)
ON CONFLICT (tenant, model_id, status) DO UPDATE SET
    jobs = jobs + excluded.jobs, images = images + excluded.images,
    steps = steps + excluded.steps, compute_s = compute_s + excluded.compute_s
"""


class SQLiteJobStore(SQLiteOutbox, SQLiteLease):
    """The embedded job store: one SQLite file in WAL mode (outbox and lease methods in
    ``outbox.py`` and ``lease.py``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of any process (the scheduler's included);
        # only a power loss can drop the last commits. FULL would fsync every commit.
        self._db.execute("PRAGMA synchronous=NORMAL")
        fresh_totals = not self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage_totals'"
        ).fetchone()
        self._db.executescript(_SCHEMA)
        self._add_columns()
        self._db.executescript(_outbox.SCHEMA + leases.SCHEMA)
        if fresh_totals:  # a store from before the counters: count its jobs once
            self._db.execute(_FILL_TOTALS)
        self._fence: tuple[str, int] | None = None  # (lease name, token) once a lease is held

    def _add_columns(self) -> None:
        """Columns newer than a store's jobs table, added in place (nullable, no default)."""
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for name, sql_type in _ADDED_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed at the end, rolled back on an
        error; FencedOut (nothing written) when this store's lease was taken over."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._fence is not None:
                    leases.check(self._db, *self._fence)
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def create(self, rec: JobRecord) -> tuple[JobRecord, bool]:
        return self.create_many([rec])[0]

    def create_many(self, recs: list[JobRecord]) -> list[tuple[JobRecord, bool]]:
        cols = ", ".join(_COLUMNS)
        marks = ", ".join(f":{c}" for c in _COLUMNS)
        out: list[tuple[JobRecord, bool]] = []
        with self._write():
            for rec in recs:
                if rec.idempotency_key is not None:
                    existing = self._db.execute(
                        "SELECT * FROM jobs WHERE tenant = ? AND idempotency_key = ?",
                        (rec.tenant, rec.idempotency_key),
                    ).fetchone()
                    if existing is not None:
                        out.append((JobRecord.from_row(existing), False))
                        continue
                self._db.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", rec.to_row())
                self._count(rec.tenant, rec.model_id, str(rec.status), 1, rec.usage)
                out.append((rec, True))
        return out

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row else None

    def find(self, tenant: str, idempotency_key: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE tenant = ? AND idempotency_key = ?",
                (tenant, idempotency_key),
            ).fetchone()
        return JobRecord.from_row(row) if row else None

    def _encode(self, updates: dict) -> dict:
        out = {}
        for k, v in updates.items():
            if k not in _COLUMNS or k in ("id", "status"):
                raise ValueError(f"cannot update job field {k!r}")
            if k in ("job", "result", "usage"):
                v = json.dumps(v) if v is not None else None
            elif k == "webhook_pending":
                v = int(bool(v))
            out[k] = v
        return out

    def _count(self, tenant: str, model_id: str, status: str, jobs: int, usage: dict) -> None:
        """Keep the running usage totals (``usage``) in step, inside the caller's transaction."""
        self._db.execute(
            _COUNT,
            {
                "tenant": tenant,
                "model_id": model_id,
                "status": status,
                "jobs": jobs,
                "images": jobs * int(usage.get("images", 0)),
                "steps": jobs * int(usage.get("steps", 0)),
                "compute_s": jobs * float(usage.get("compute_s", 0.0)),
            },
        )

    def transition(self, job_id, allowed_from, to, **updates) -> JobRecord | None:
        moved = self.transition_many([(job_id, updates)], allowed_from, to)
        return moved[0] if moved else None

    def transition_many(
        self,
        items: list[tuple[str, dict]],
        allowed_from,
        to,
        bump_attempts: bool = False,
        outbox: OutboxFn | None = None,
    ) -> list[JobRecord]:
        """``transition`` for several jobs in one transaction (one commit for a whole batch);
        returns the records that moved. ``outbox``'s events for them commit with them."""
        allowed = {str(x) for x in allowed_from}
        moved: list[JobRecord] = []
        with self._write():
            for job_id, updates in items:
                rec = self._move(job_id, allowed, str(to), self._encode(updates), bump_attempts)
                if rec is not None:
                    moved.append(rec)
                    if outbox is not None:
                        _outbox.insert(self._db, list(outbox(rec)))
        return moved

    def _move(
        self, job_id: str, allowed: set[str], to: str, enc: dict, bump_attempts: bool
    ) -> JobRecord | None:
        old = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if old is None or old["status"] not in allowed:
            return None
        sets = ", ".join(
            ["status = :to"]
            + [f"{k} = :{k}" for k in enc]
            + (["attempts = attempts + 1"] if bump_attempts else [])
        )
        self._db.execute(f"UPDATE jobs SET {sets} WHERE id = :id", {"to": to, "id": job_id, **enc})
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        rec = JobRecord.from_row(row)
        before = json.loads(old["usage"] or "{}")
        self._count(rec.tenant, rec.model_id, old["status"], -1, before)
        self._count(rec.tenant, rec.model_id, to, 1, rec.usage)
        return rec

    def update(self, job_id: str, **updates: object) -> None:
        enc = self._encode(updates)
        if not enc:
            return
        sets = ", ".join(f"{k} = :{k}" for k in enc)
        with self._write():
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = :id", {**enc, "id": job_id})

    def unfinished(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN ('IN_QUEUE', 'IN_PROGRESS') "
                "ORDER BY submitted_at"
            ).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def webhooks_pending(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE webhook_pending = 1 ORDER BY finished_at"
            ).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def migrate_pending_webhooks(self, build: OutboxFn) -> int:
        with self._write():
            rows = self._db.execute("SELECT * FROM jobs WHERE webhook_pending = 1").fetchall()
            for row in rows:
                _outbox.insert(self._db, list(build(JobRecord.from_row(row))))
            self._db.execute("UPDATE jobs SET webhook_pending = 0 WHERE webhook_pending = 1")
        return len(rows)

    def put_adapter(self, record: AdapterRecord) -> None:
        with self._write():
            self._db.execute(
                "INSERT OR REPLACE INTO adapters (id, record) VALUES (?, ?)",
                (record.id, json.dumps(record.stored())),
            )

    def delete_adapter(self, adapter_id: str) -> bool:
        with self._write():
            return self._db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,)).rowcount > 0

    def adapters(self) -> dict[str, AdapterRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, record FROM adapters ORDER BY id").fetchall()
        return {r["id"]: AdapterRecord.from_stored(json.loads(r["record"])) for r in rows}

    def usage(self, tenant: str) -> list[UsageRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT model_id, status, jobs, images, steps, compute_s FROM usage_totals "
                "WHERE tenant = ? AND jobs > 0 ORDER BY model_id, status",
                (tenant,),
            ).fetchall()
        return [
            UsageRow(
                model_id=r["model_id"],
                status=JobStatus(r["status"]),
                jobs=r["jobs"],
                images=r["images"],
                steps=r["steps"],
                compute_s=r["compute_s"],
            )
            for r in rows
        ]

    # -- retention (called by store/retention.py; usage totals are never touched) -----------
    def _retention_index(self) -> None:
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) "
            "WHERE finished_at IS NOT NULL"
        )

    def expired_jobs(self, finished_before: float, limit: int) -> list[JobRecord]:
        """Terminal jobs that finished before the cutoff, oldest first; jobs whose webhook is
        still owed (a pending outbox event) are left for later."""
        with self._lock:
            self._retention_index()
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
                "AND status NOT IN ('IN_QUEUE', 'IN_PROGRESS') AND webhook_pending = 0 "
                "AND NOT EXISTS (SELECT 1 FROM webhook_outbox o "
                "WHERE o.job_id = jobs.id AND o.state = 'pending') "
                "ORDER BY finished_at LIMIT ?",
                (finished_before, limit),
            ).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def delete_jobs(self, job_ids: list[str]) -> int:
        """Delete finished job rows (one transaction); the usage totals keep counting them."""
        if not job_ids:
            return 0
        n = 0
        with self._write() as db:
            for job_id in job_ids:
                n += db.execute(
                    "DELETE FROM jobs WHERE id = ? AND status NOT IN ('IN_QUEUE', 'IN_PROGRESS')",
                    (job_id,),
                ).rowcount
        return n

    def outputs_to_expire(self, finished_before: float, limit: int) -> list[JobRecord]:
        """Completed jobs that finished before the cutoff whose outputs are not yet deleted."""
        with self._lock:
            self._retention_index()
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
                "AND status = 'COMPLETED' AND result IS NOT NULL "
                "AND json_extract(result, '$.outputs_deleted_at') IS NULL "
                "ORDER BY finished_at LIMIT ?",
                (finished_before, limit),
            ).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def mark_outputs_deleted(self, job_ids: list[str], at: float) -> None:
        """Record in each job's result when its outputs were deleted."""
        with self._write() as db:
            db.executemany(
                "UPDATE jobs SET result = json_set(result, '$.outputs_deleted_at', ?) "
                "WHERE id = ? AND result IS NOT NULL",
                [(at, job_id) for job_id in job_ids],
            )

    def expire_idempotency_keys(
        self, submitted_before: float, limit: int, dry_run: bool = False
    ) -> int:
        """Forget the idempotency keys of jobs submitted before the cutoff (at most ``limit``);
        the jobs stay. With ``dry_run`` only counts them."""
        select = (
            "SELECT id FROM jobs WHERE idempotency_key IS NOT NULL AND submitted_at < ? LIMIT ?"
        )
        if dry_run:
            with self._lock:
                return len(self._db.execute(select, (submitted_before, limit)).fetchall())
        with self._write() as db:
            return db.execute(
                f"UPDATE jobs SET idempotency_key = NULL WHERE id IN ({select})",
                (submitted_before, limit),
            ).rowcount

    def statuses(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """The status of each job that exists."""
        out: dict[str, JobStatus] = {}
        with self._lock:
            for job_id in job_ids:
                row = self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is not None:
                    out[job_id] = JobStatus(row["status"])
        return out
