"""Job records and the interface of the store that keeps them: what makes an accepted job
survive a crash.

The scheduler writes a job to the store before the gateway answers 202, moves it through its
states with compare-and-set transitions (a terminal state is final), stores the result before
``COMPLETED``, and on restart rebuilds its queues from ``unfinished()``. ``JobStore`` is that
interface; ``sql/store.py`` (``SQLJobStore``) implements it on SQLite (the embedded default, one
file on the scheduler's node) and PostgreSQL; ``open.py`` opens the catalog's. No Ray imports.

Webhook events are written to the outbox (``outbox.py``) in the same transaction as the job
change that causes them. A store that acquired the scheduler lease (``lease.py``) checks its
fencing token inside every write transaction and refuses writes once another scheduler has taken
the lease over (``FencedOut``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from genmedia.deployments.protocol import (
    TERMINAL,
    AdapterRecord,
    JobStatus,
    RuntimeKey,
    UsageRow,
)
from genmedia.deployments.store.lease import FencedOut, Lease
from genmedia.deployments.store.outbox import OutboxEvent, OutboxState

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

    def to_row(self, columns: Collection[str] | None = None) -> dict:
        """The record as a row (JSON columns encoded); only ``columns`` when given. Shallow:
        the nested dicts are encoded, not copied (``asdict``'s deep copy cost more)."""
        row = {n: getattr(self, n) for n in _NAMES if columns is None or n in columns}
        for name, fn in _ENCODE.items():
            if name in row:
                row[name] = fn(row[name])
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRecord:
        d = dict(row)
        d["status"] = JobStatus(d["status"])
        d["job"] = json.loads(d["job"])
        d["result"] = json.loads(d["result"]) if d["result"] is not None else None
        d["usage"] = json.loads(d["usage"] or "{}")
        d["webhook_pending"] = bool(d["webhook_pending"])
        return cls(**d)


_NAMES = tuple(f.name for f in fields(JobRecord))
_ENCODE: dict[str, Callable[[Any], Any]] = {  # columns stored encoded
    "status": str,
    "job": json.dumps,
    "result": lambda v: None if v is None else json.dumps(v),
    "usage": json.dumps,
    "webhook_pending": int,
}

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

    def get_many(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """The stored jobs among ``job_ids`` (unknown ones left out), by id, in one read."""
        ...

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
    """API keys and quota overrides changed at run time (``SQLJobStore``). Writes are fenced as
    every other write."""

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
