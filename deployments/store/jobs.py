"""Job records and the store that keeps them: what makes an accepted job survive a crash.

The scheduler writes a job here before the gateway answers 202, moves it through its states with
compare-and-set transitions (a terminal state is final), stores the result before ``COMPLETED``,
and on restart rebuilds its queues from ``unfinished()``. The embedded store is one SQLite file
(single writer: the scheduler replica, on one node); ``JobStore`` is the interface a Redis or
Postgres store implements for a scheduler that may move between nodes. No Ray imports.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

from genmedia.deployments.protocol import TERMINAL, AdapterRecord, JobStatus, UsageRow

__all__ = ["TERMINAL", "JobRecord", "JobStatus", "JobStore", "SQLiteJobStore"]


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
    webhook_url: str | None = None
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


class JobStore(Protocol):
    """Where jobs live. Implementations must make ``create`` and ``transition`` atomic."""

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
        self, items: list[tuple[str, dict]], allowed_from, to, bump_attempts: bool = False
    ) -> list[JobRecord]:
        """Several transitions in one atomic write; returns the records that moved."""
        ...

    def update(self, job_id: str, **updates: object) -> None:
        """Change fields other than the status (webhook flag, progress bookkeeping)."""
        ...

    def unfinished(self) -> list[JobRecord]:
        """Jobs not yet in a terminal state, oldest first (for recovery)."""
        ...

    def webhooks_pending(self) -> list[JobRecord]: ...

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


class SQLiteJobStore:
    """The embedded job store: one SQLite file in WAL mode."""

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
        if fresh_totals:  # a store from before the counters: count its jobs once
            self._db.execute(_FILL_TOTALS)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, rec: JobRecord) -> tuple[JobRecord, bool]:
        return self.create_many([rec])[0]

    def create_many(self, recs: list[JobRecord]) -> list[tuple[JobRecord, bool]]:
        cols = ", ".join(_COLUMNS)
        marks = ", ".join(f":{c}" for c in _COLUMNS)
        out: list[tuple[JobRecord, bool]] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
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
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
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
        self, items: list[tuple[str, dict]], allowed_from, to, bump_attempts: bool = False
    ) -> list[JobRecord]:
        """``transition`` for several jobs in one transaction (one commit for a whole batch);
        returns the records that moved."""
        allowed = {str(x) for x in allowed_from}
        moved: list[JobRecord] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for job_id, updates in items:
                    rec = self._move(job_id, allowed, str(to), self._encode(updates), bump_attempts)
                    if rec is not None:
                        moved.append(rec)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
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
        with self._lock:
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

    def put_adapter(self, record: AdapterRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO adapters (id, record) VALUES (?, ?)",
                (record.id, json.dumps(record.stored())),
            )

    def delete_adapter(self, adapter_id: str) -> bool:
        with self._lock:
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
