"""``SQLJobStore``: the job store on SQLAlchemy Core, for SQLite (the embedded default) and
PostgreSQL (a scheduler that may move between nodes, with a standby).

The scheduler writes a job here before the gateway answers 202 (``create_many``: a group commit),
moves it with compare-and-set transitions whose usage counters and webhook events commit in the
same transaction, and rebuilds its queues from ``unfinished()`` after a restart. It implements
``JobStore`` (``deployments/store/jobs.py``), plus what retention (``retention.py``) needs.
Every write transaction of a store that holds the scheduler lease checks its fencing token
(``_write``): on PostgreSQL the lease row is read ``FOR SHARE``, so a takeover (which updates
that row) waits for writes in flight and every later write sees the new token and raises
``FencedOut``. SQLite: one connection, ``BEGIN IMMEDIATE``, WAL. No Ray.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from genmedia.deployments.protocol import AdapterRecord, JobStatus, RuntimeKey, UsageRow
from genmedia.deployments.store.jobs import JobRecord, OutboxFn
from genmedia.deployments.store.lease import FencedOut, Lease
from genmedia.deployments.store.outbox import OutboxEvent, OutboxState
from genmedia.deployments.store.sql import tables as t

_FIELDS = [f.name for f in fields(JobRecord)]
_COLUMNS = [c for c in _FIELDS if c in t.jobs.c]  # fields of JobRecord the table keeps
_JOB_COLUMNS = frozenset(_COLUMNS)
_OPEN = list(t.OPEN)
_CHUNK = 500  # ids per IN (...) list


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    """``ids`` in lists of at most ``_CHUNK`` (one ``IN (...)`` each)."""
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


_seq = itertools.count()


_DOUBLES = {c.name for c in t.jobs.c if isinstance(c.type, sa.Double)}


def _record(row: sa.Row[Any]) -> JobRecord:
    m = row._mapping
    d = {c: m[c] for c in _COLUMNS}
    for c in _DOUBLES.intersection(d):  # SQLite hands back 1.0 stored as REAL as the int 1
        if d[c] is not None:
            d[c] = float(d[c])
    return JobRecord.from_row(d)


def _by_updates(wanted: dict[str, dict], movable: Collection[str]) -> list[tuple[dict, list[str]]]:
    """The ids of ``wanted`` (id -> encoded updates) that are ``movable``, grouped by their
    updates, so each group moves in one statement; updates that cannot be compared (not
    hashable) get a group of their own."""
    groups: dict[tuple[tuple[str, Any], ...], tuple[dict, list[str]]] = {}
    alone: list[tuple[dict, list[str]]] = []
    for job_id, enc in wanted.items():
        if job_id not in movable:
            continue
        key = tuple(sorted(enc.items()))
        try:
            groups.setdefault(key, (enc, []))[1].append(job_id)
        except TypeError:
            alone.append((enc, [job_id]))
    return [*groups.values(), *alone]


def _event(row: sa.Row[Any]) -> OutboxEvent:
    m = row._mapping
    return OutboxEvent(
        id=m["id"],
        job_id=m["job_id"],
        tenant=m["tenant"],
        url=m["url"],
        event_type=m["event_type"],
        payload=json.loads(m["payload"]),
        attempts=m["attempts"],
        next_attempt_at=float(m["next_attempt_at"]),
        created_at=float(m["created_at"]),
        state=OutboxState(m["state"]),
        last_error=m["last_error"],
        finished_at=None if m["finished_at"] is None else float(m["finished_at"]),
    )


def _next_seq() -> int:
    """Insertion order of outbox rows: wall-clock microseconds and a counter (fits a BIGINT),
    increasing across restarts and successive lease holders."""
    return time.time_ns() // 1000 * 1000 + next(_seq) % 1000


class SQLJobStore:
    """See the module docstring. ``engine`` is made by ``open_store`` (``open.py``), which also
    brings its schema to this code's revision."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.dialect = engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"job store: unsupported database {self.dialect!r}")
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        # SQLite: one connection, one writer at a time; PostgreSQL: a pool
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )
        self._conn = engine.connect() if self.dialect == "sqlite" else None
        self._fence: tuple[str, int] | None = None  # (lease name, token) once a lease is held
        self._add_usage = self._usage_upsert()
        # jobs by ids: one statement (expanding IN), so its compiled form is cached
        ids: sa.BindParameter[list[str]] = sa.bindparam("ids", expanding=True)
        self._select_in: sa.Executable = sa.select(t.jobs).where(t.jobs.c.id.in_(ids))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
        self.engine.dispose()

    # -- transactions ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _txn(self, write: bool, fenced: bool = True) -> Iterator[sa.Connection]:
        with self._lock:
            conn = self._conn if self._conn is not None else self.engine.connect()
            try:
                if write and self.dialect == "sqlite":
                    conn.info["begin"] = "BEGIN IMMEDIATE"  # read by open.py's begin hook
                with conn.begin():
                    if write and fenced and self._fence is not None:
                        self._check_fence(conn, *self._fence)
                    yield conn
            finally:
                if conn is not self._conn:
                    conn.close()

    def _write(self, fenced: bool = True) -> contextlib.AbstractContextManager[sa.Connection]:
        """One write transaction: committed at the end, rolled back on an error; FencedOut
        (nothing written) when this store's lease was taken over."""
        return self._txn(True, fenced)

    def _read(self) -> contextlib.AbstractContextManager[sa.Connection]:
        return self._txn(False)

    def _check_fence(self, conn: sa.Connection, name: str, token: int) -> None:
        current = self._lease_row(conn, name, lock="share")
        if current is None or current.token != token:
            raise FencedOut(name, token, current)

    # -- jobs --------------------------------------------------------------------------------
    def create(self, rec: JobRecord) -> tuple[JobRecord, bool]:
        return self.create_many([rec])[0]

    def create_many(self, recs: list[JobRecord]) -> list[tuple[JobRecord, bool]]:
        out: list[tuple[JobRecord, bool]] = []
        plain: list[dict] = []  # rows without a key: one multi-row insert
        counts: dict[tuple[str, str, str], list] = defaultdict(lambda: [0, {}, []])
        with self._write() as conn:
            for rec in recs:
                row = rec.to_row(_JOB_COLUMNS)
                if rec.idempotency_key is None:
                    plain.append(row)
                else:
                    stmt = self._insert(t.jobs).values(row)
                    stmt = stmt.on_conflict_do_nothing(
                        index_elements=[t.jobs.c.tenant, t.jobs.c.idempotency_key],
                        index_where=t.jobs.c.idempotency_key.is_not(None),
                    )
                    if conn.execute(stmt.returning(t.jobs.c.id)).first() is None:
                        existing = self._find(conn, rec.tenant, rec.idempotency_key)
                        if existing is None:  # the key's job vanished meanwhile: a bug
                            raise RuntimeError(f"idempotency key {rec.idempotency_key!r} lost")
                        out.append((existing, False))
                        continue
                self._tally(counts, rec.tenant, rec.model_id, str(rec.status), 1, rec.usage)
                out.append((rec, True))
            if plain:
                conn.execute(t.jobs.insert(), plain)
            self._count(conn, counts)
        return out

    def get(self, job_id: str) -> JobRecord | None:
        return self.get_many([job_id]).get(job_id)

    def get_many(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """The stored jobs among ``job_ids``, by id, in one read (a gateway's group of status
        polls: one ``IN (...)`` query instead of one per job)."""
        out: dict[str, JobRecord] = {}
        with self._read() as conn:
            for chunk in _chunks(list(dict.fromkeys(job_ids))):
                for row in conn.execute(self._select_in, {"ids": chunk}):
                    rec = _record(row)
                    out[rec.id] = rec
        return out

    def _find(self, conn: sa.Connection, tenant: str, key: str) -> JobRecord | None:
        q = sa.select(t.jobs).where(t.jobs.c.tenant == tenant, t.jobs.c.idempotency_key == key)
        row = conn.execute(q).first()
        return _record(row) if row else None

    def find(self, tenant: str, idempotency_key: str) -> JobRecord | None:
        with self._read() as conn:
            return self._find(conn, tenant, idempotency_key)

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

    @staticmethod
    def _tally(counts: dict, tenant: str, model_id: str, status: str, jobs: int, usage: dict):
        c = counts[(tenant, model_id, status)]
        c[0] += jobs
        c[1]["images"] = c[1].get("images", 0) + jobs * int(usage.get("images", 0))
        c[1]["steps"] = c[1].get("steps", 0) + jobs * int(usage.get("steps", 0))
        c[1]["compute_s"] = c[1].get("compute_s", 0.0) + jobs * float(usage.get("compute_s", 0))

    def _count(self, conn: sa.Connection, counts: dict) -> None:
        """Add the tallied changes to the usage totals, inside the caller's transaction: one
        prepared upsert, executed for every (tenant, model, status) that changed."""
        rows = [
            {
                "tenant": tenant,
                "model_id": model_id,
                "status": status,
                "jobs": jobs,
                "images": sums.get("images", 0),
                "steps": sums.get("steps", 0),
                "compute_s": sums.get("compute_s", 0.0),
            }
            for (tenant, model_id, status), (jobs, sums, _) in sorted(counts.items())
            if jobs or any(sums.values())
        ]
        if rows:
            conn.execute(self._add_usage, rows)

    def _usage_upsert(self) -> sa.Executable:
        """``INSERT ... ON CONFLICT DO UPDATE`` adding a row's counts to its usage totals, built
        once per store (building it per call cost more than running it)."""
        u = t.usage_totals
        stmt = self._insert(u)
        x = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=[u.c.tenant, u.c.model_id, u.c.status],
            set_={
                "jobs": u.c.jobs + x.jobs,
                "images": u.c.images + x.images,
                "steps": u.c.steps + x.steps,
                "compute_s": u.c.compute_s + x.compute_s,
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
        """Several compare-and-set transitions in one transaction; returns the records that
        moved, in ``items`` order (a job listed twice moves once, with its first updates).
        ``outbox``'s events for them and the usage counters commit with them. The rows are read
        (and locked) in one statement, and the jobs that share their updates (a dispatched
        batch) move in one ``UPDATE``."""
        allowed = sorted({str(x) for x in allowed_from})
        wanted: dict[str, dict] = {}
        for job_id, updates in items:
            wanted.setdefault(job_id, self._encode(updates))
        moved: list[JobRecord] = []
        counts: dict = defaultdict(lambda: [0, {}, []])
        with self._write() as conn:
            old = self._lock_open(conn, list(wanted), allowed)
            new: dict[str, JobRecord] = {}
            for enc, ids in _by_updates(wanted, old):
                changes: dict[str, Any] = {"status": str(to), **enc}
                if bump_attempts:
                    changes["attempts"] = t.jobs.c.attempts + 1
                for chunk in _chunks(ids):
                    stmt = (
                        sa.update(t.jobs)
                        .where(t.jobs.c.id.in_(chunk), t.jobs.c.status.in_(allowed))
                        .values(changes)
                        .returning(t.jobs)
                    )
                    new.update((rec.id, rec) for rec in map(_record, conn.execute(stmt)))
            for job_id in wanted:
                rec = new.get(job_id)
                if rec is None:
                    continue
                status, usage = old[job_id]
                self._tally(counts, rec.tenant, rec.model_id, status, -1, json.loads(usage))
                self._tally(counts, rec.tenant, rec.model_id, str(to), 1, rec.usage)
                moved.append(rec)
                if outbox is not None:
                    self._add_events(conn, list(outbox(rec)))
            self._count(conn, counts)
        return moved

    def _lock_open(
        self, conn: sa.Connection, job_ids: list[str], allowed: list[str]
    ) -> dict[str, tuple[str, str]]:
        """Status and usage (JSON) of the jobs among ``job_ids`` in an ``allowed`` status, their
        rows locked until the transaction ends (PostgreSQL; SQLite's write lock covers it)."""
        out: dict[str, tuple[str, str]] = {}
        cols = (t.jobs.c.id, t.jobs.c.status, t.jobs.c.usage)
        for chunk in _chunks(job_ids):
            q = (
                sa.select(*cols)
                .where(t.jobs.c.id.in_(chunk), t.jobs.c.status.in_(allowed))
                .with_for_update()
            )
            out.update((row.id, (row.status, row.usage)) for row in conn.execute(q))
        return out

    def update(self, job_id: str, **updates: object) -> None:
        enc = self._encode(updates)
        if enc:
            with self._write() as conn:
                conn.execute(sa.update(t.jobs).where(t.jobs.c.id == job_id).values(enc))

    def unfinished(self) -> list[JobRecord]:
        q = sa.select(t.jobs).where(t.jobs.c.status.in_(_OPEN)).order_by(t.jobs.c.submitted_at)
        with self._read() as conn:
            return [_record(r) for r in conn.execute(q)]

    def webhooks_pending(self) -> list[JobRecord]:
        q = sa.select(t.jobs).where(t.jobs.c.webhook_pending == 1).order_by(t.jobs.c.finished_at)
        with self._read() as conn:
            return [_record(r) for r in conn.execute(q)]

    def migrate_pending_webhooks(self, build: OutboxFn) -> int:
        with self._write() as conn:
            q = sa.select(t.jobs).where(t.jobs.c.webhook_pending == 1).with_for_update()
            rows = conn.execute(q).all()
            for row in rows:
                self._add_events(conn, list(build(_record(row))))
            if rows:
                conn.execute(
                    sa.update(t.jobs).where(t.jobs.c.webhook_pending == 1).values(webhook_pending=0)
                )
        return len(rows)

    def statuses(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """The status of each job that exists."""
        out: dict[str, JobStatus] = {}
        with self._read() as conn:
            for chunk in _chunks(job_ids):
                q = sa.select(t.jobs.c.id, t.jobs.c.status).where(t.jobs.c.id.in_(chunk))
                out.update({r.id: JobStatus(r.status) for r in conn.execute(q)})
        return out

    # -- adapters and usage --------------------------------------------------------------------
    def put_adapter(self, record: AdapterRecord) -> None:
        stmt = self._insert(t.adapters).values(id=record.id, record=json.dumps(record.stored()))
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.adapters.c.id], set_={"record": stmt.excluded.record}
        )
        with self._write() as conn:
            conn.execute(stmt)

    def delete_adapter(self, adapter_id: str) -> bool:
        with self._write() as conn:
            return (
                conn.execute(t.adapters.delete().where(t.adapters.c.id == adapter_id)).rowcount > 0
            )

    def adapters(self) -> dict[str, AdapterRecord]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.adapters).order_by(t.adapters.c.id)).all()
        return {r.id: AdapterRecord.from_stored(json.loads(r.record)) for r in rows}

    # -- keys and quotas changed at run time (``KeyStore``) -------------------------------------
    def add_api_key(self, key: RuntimeKey) -> bool:
        stmt = self._insert(t.api_keys).values(**asdict(key)).on_conflict_do_nothing()
        with self._write() as conn:  # RETURNING: rowcount of a skipped insert varies by driver
            return conn.execute(stmt.returning(t.api_keys.c.id)).first() is not None

    def revoke_api_key(self, key_id: str, at: float) -> bool:
        k = t.api_keys
        with self._write() as conn:
            if conn.execute(sa.select(k.c.id).where(k.c.id == key_id)).first() is None:
                return False
            conn.execute(
                k.update().where(k.c.id == key_id, k.c.revoked_at.is_(None)).values(revoked_at=at)
            )
            return True

    def set_tenant_quotas(self, tenant: str, quotas: dict[str, int], at: float) -> None:
        q = t.tenant_quotas
        stmt = self._insert(q).values(tenant=tenant, quotas=json.dumps(quotas), updated_at=at)
        stmt = stmt.on_conflict_do_update(
            index_elements=[q.c.tenant],
            set_={"quotas": stmt.excluded.quotas, "updated_at": stmt.excluded.updated_at},
        )
        with self._write() as conn:
            conn.execute(stmt)

    def api_keys(self) -> list[RuntimeKey]:
        k = t.api_keys
        with self._read() as conn:
            rows = conn.execute(sa.select(k).order_by(k.c.id)).all()
        return [RuntimeKey(**r._mapping) for r in rows]  # a whole second may come back as int

    def tenant_quotas(self) -> dict[str, dict[str, int]]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.tenant_quotas)).all()
        return {r.tenant: json.loads(r.quotas) for r in rows}

    def usage(self, tenant: str) -> list[UsageRow]:
        u = t.usage_totals
        q = (
            sa.select(u)
            .where(u.c.tenant == tenant, u.c.jobs > 0)
            .order_by(u.c.model_id, u.c.status)
        )
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [
            UsageRow(
                model_id=r.model_id,
                status=JobStatus(r.status),
                jobs=int(r.jobs),
                images=int(r.images),
                steps=int(r.steps),
                compute_s=float(r.compute_s),
            )
            for r in rows
        ]

    # -- webhook outbox (semantics of ``outbox.py``) --------------------------------------------
    def _add_events(self, conn: sa.Connection, events: Iterable[OutboxEvent]) -> None:
        rows = [
            {
                "id": e.id,
                "job_id": e.job_id,
                "tenant": e.tenant,
                "url": e.url,
                "event_type": e.event_type,
                "payload": json.dumps(e.payload, separators=(",", ":")),
                "attempts": e.attempts,
                "next_attempt_at": e.next_attempt_at,
                "created_at": e.created_at,
                "state": str(e.state),
                "last_error": e.last_error,
                "finished_at": e.finished_at,
                "seq": _next_seq(),
            }
            for e in events
        ]
        if rows:
            conn.execute(t.webhook_outbox.insert(), rows)

    def add_webhooks(self, events: list[OutboxEvent]) -> None:
        if events:
            with self._write() as conn:
                self._add_events(conn, events)

    def webhooks_due(
        self,
        now: float,
        limit: int,
        skip_ids: Iterable[str] = (),
        skip_tenants: Iterable[str] = (),
    ) -> list[OutboxEvent]:
        o = t.webhook_outbox
        q = sa.select(o).where(o.c.state == "pending", o.c.next_attempt_at <= now)
        ids, tenants = list(skip_ids), list(skip_tenants)
        if ids:
            q = q.where(o.c.id.not_in(ids))
        if tenants:
            q = q.where(o.c.tenant.not_in(tenants))
        q = q.order_by(o.c.next_attempt_at, o.c.created_at, o.c.seq).limit(limit)
        with self._read() as conn:
            return [_event(r) for r in conn.execute(q)]

    def webhook_attempted(
        self,
        delivery_id: str,
        now: float,
        *,
        delivered: bool,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> None:
        if delivered:
            state, finished = OutboxState.DELIVERED, now
        elif retry_at is None:
            state, finished = OutboxState.FAILED, now
        else:
            state, finished = OutboxState.PENDING, None
        o = t.webhook_outbox
        stmt = (
            sa.update(o)
            .where(o.c.id == delivery_id, o.c.state == "pending")
            .values(
                attempts=o.c.attempts + 1,
                state=str(state),
                last_error=error,
                next_attempt_at=o.c.next_attempt_at if retry_at is None else retry_at,
                finished_at=finished,
            )
        )
        with self._write() as conn:
            conn.execute(stmt)

    def webhooks_of(self, job_id: str) -> list[OutboxEvent]:
        o = t.webhook_outbox
        q = sa.select(o).where(o.c.job_id == job_id).order_by(o.c.created_at, o.c.seq, o.c.id)
        with self._read() as conn:
            return [_event(r) for r in conn.execute(q)]

    def prune_webhooks(self, finished_before: float, limit: int) -> int:
        o = t.webhook_outbox
        ids = (
            sa.select(o.c.id)
            .where(o.c.state != "pending", o.c.finished_at < finished_before)
            .limit(limit)
        )
        with self._write() as conn:
            return conn.execute(o.delete().where(o.c.id.in_(ids.scalar_subquery()))).rowcount

    # -- the scheduler lease (semantics of ``lease.py``) ----------------------------------------
    def _lease_row(self, conn: sa.Connection, name: str, lock: str = "") -> Lease | None:
        q = sa.select(t.leases).where(t.leases.c.name == name)
        if lock:
            q = q.with_for_update(read=lock == "share")
        row = conn.execute(q).first()
        return (
            None
            if row is None
            else Lease(row.name, row.holder, int(row.token), float(row.expires_at))
        )

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        """Take the lease when free, expired or ``holder``'s own (the token then stays); None
        while another holder's is valid. On success this store's writes are fenced by it."""
        with self._read() as conn:  # a standby polls without locking the active one's row
            seen = self._lease_row(conn, name)
        if seen is not None and seen.holder != holder and seen.expires_at > now:
            return None
        with self._write(fenced=False) as conn:
            # a placeholder row (token 0, expired) so that concurrent first takers serialize
            conn.execute(
                self._insert(t.leases)
                .values(name=name, holder="", token=0, expires_at=0.0)
                .on_conflict_do_nothing(index_elements=[t.leases.c.name])
            )
            current = self._lease_row(conn, name, lock="update")
            assert current is not None
            if current.holder != holder and current.expires_at > now:
                return None
            token = current.token if current.holder == holder else current.token + 1
            conn.execute(
                sa.update(t.leases)
                .where(t.leases.c.name == name)
                .values(holder=holder, token=token, expires_at=now + ttl_s)
            )
        self._fence = (name, token)
        return Lease(name, holder, token, now + ttl_s)

    def renew_lease(self, lease: Lease, ttl_s: float, now: float) -> Lease:
        """Extend the held lease (also one that expired without a takeover); FencedOut when
        its token is no longer current."""
        l_ = t.leases
        with self._write(fenced=False) as conn:  # the token in the WHERE is the fence
            moved = conn.execute(
                sa.update(l_)
                .where(l_.c.name == lease.name, l_.c.holder == lease.holder)
                .where(l_.c.token == lease.token)
                .values(expires_at=now + ttl_s)
            ).rowcount
            if not moved:
                raise FencedOut(lease.name, lease.token, self._lease_row(conn, lease.name))
        return Lease(lease.name, lease.holder, lease.token, now + ttl_s)

    def release_lease(self, lease: Lease) -> None:
        """End the held lease now (the next holder gets a newer token); nothing when it was
        already taken over."""
        l_ = t.leases
        with self._write(fenced=False) as conn:
            conn.execute(
                sa.update(l_)
                .where(l_.c.name == lease.name, l_.c.holder == lease.holder)
                .where(l_.c.token == lease.token)
                .values(expires_at=0.0)
            )

    def lease(self, name: str) -> Lease | None:
        with self._read() as conn:
            found = self._lease_row(conn, name)
        return None if found is None or not found.holder else found

    # -- retention (``retention.py``; usage totals are never touched) ---------------------------
    def _json_field(self, col: sa.ColumnElement[Any], key: str) -> sa.ColumnElement[Any]:
        if self.dialect == "postgresql":
            return sa.cast(col, postgresql.JSONB).op("->>")(sa.literal(key))
        return sa.func.json_extract(col, f"$.{key}")

    def expired_jobs(self, finished_before: float, limit: int) -> list[JobRecord]:
        """Terminal jobs that finished before the cutoff, oldest first; jobs whose webhook is
        still owed (a pending outbox event, or the legacy flag) are left for later."""
        j, o = t.jobs, t.webhook_outbox
        owed = sa.exists().where(o.c.job_id == j.c.id, o.c.state == "pending")
        q = (
            sa.select(j)
            .where(j.c.finished_at.is_not(None), j.c.finished_at < finished_before)
            .where(j.c.status.not_in(_OPEN), j.c.webhook_pending == 0, ~owed)
            .order_by(j.c.finished_at)
            .limit(limit)
        )
        with self._read() as conn:
            return [_record(r) for r in conn.execute(q)]

    def delete_jobs(self, job_ids: list[str]) -> int:
        """Delete finished job rows (one transaction); the usage totals keep counting them."""
        n = 0
        if job_ids:
            with self._write() as conn:
                for chunk in _chunks(job_ids):
                    stmt = t.jobs.delete().where(
                        t.jobs.c.id.in_(chunk), t.jobs.c.status.not_in(_OPEN)
                    )
                    n += conn.execute(stmt).rowcount
        return n

    def outputs_to_expire(self, finished_before: float, limit: int) -> list[JobRecord]:
        """Completed jobs that finished before the cutoff whose outputs are not yet deleted."""
        j = t.jobs
        q = (
            sa.select(j)
            .where(j.c.finished_at.is_not(None), j.c.finished_at < finished_before)
            .where(j.c.status == str(JobStatus.COMPLETED), j.c.result.is_not(None))
            .where(self._json_field(j.c.result, "outputs_deleted_at").is_(None))
            .order_by(j.c.finished_at)
            .limit(limit)
        )
        with self._read() as conn:
            return [_record(r) for r in conn.execute(q)]

    def mark_outputs_deleted(self, job_ids: list[str], at: float) -> None:
        """Record in each job's result when its outputs were deleted."""
        if not job_ids:
            return
        with self._write() as conn:
            for chunk in _chunks(job_ids):
                q = (
                    sa.select(t.jobs.c.id, t.jobs.c.result)
                    .where(t.jobs.c.id.in_(chunk), t.jobs.c.result.is_not(None))
                    .with_for_update()
                )
                for row in conn.execute(q).all():
                    result = {**json.loads(row.result), "outputs_deleted_at": at}
                    conn.execute(
                        sa.update(t.jobs)
                        .where(t.jobs.c.id == row.id)
                        .values(result=json.dumps(result))
                    )

    def expire_idempotency_keys(
        self, submitted_before: float, limit: int, dry_run: bool = False
    ) -> int:
        """Forget the idempotency keys of jobs submitted before the cutoff (at most ``limit``);
        the jobs stay. With ``dry_run`` only counts them."""
        j = t.jobs
        ids = (
            sa.select(j.c.id)
            .where(j.c.idempotency_key.is_not(None), j.c.submitted_at < submitted_before)
            .limit(limit)
        )
        if dry_run:
            with self._read() as conn:
                return len(conn.execute(ids).all())
        with self._write() as conn:
            stmt = sa.update(j).where(j.c.id.in_(ids.scalar_subquery()))
            return conn.execute(stmt.values(idempotency_key=None)).rowcount
