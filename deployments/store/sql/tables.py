"""The job store's schema, one for SQLite and PostgreSQL: what ``SQLJobStore`` reads and writes.

Jobs (one row per accepted job, JSON fields as text), running usage totals per tenant, model and
status, LoRA adapters registered at run time, the webhook outbox and the scheduler lease. The
first Alembic revision (``migrations/versions/v0001_current_schema.py``) creates the same tables;
a test checks that the two agree. Times are unix seconds in double precision. No Ray imports.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

OPEN = ("IN_QUEUE", "IN_PROGRESS")  # the statuses of unfinished jobs


def _where(clause: sa.ColumnElement[bool]) -> dict[str, Any]:
    """A partial index's predicate for both dialects."""
    return {"sqlite_where": clause, "postgresql_where": clause}


jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("priority", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("job", sa.Text, nullable=False),  # JSON: the resolved GenerationJob
    sa.Column("submitted_at", sa.Double, nullable=False),
    sa.Column("weight", sa.Double, nullable=False, server_default=sa.text("1.0")),
    sa.Column("deadline", sa.Double),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_pending", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("started_at", sa.Double),
    sa.Column("finished_at", sa.Double),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("result", sa.Text),  # JSON
    sa.Column("error_type", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("usage", sa.Text, nullable=False, server_default=sa.text("'{}'")),  # JSON
    sa.Column("body_sha256", sa.Text),  # of the body submitted with the idempotency key
)
sa.Index(
    "jobs_idempotency",
    jobs.c.tenant,
    jobs.c.idempotency_key,
    unique=True,
    **_where(jobs.c.idempotency_key.is_not(None)),
)
sa.Index("jobs_open", jobs.c.status, **_where(jobs.c.status.in_(OPEN)))
sa.Index("jobs_tenant", jobs.c.tenant, jobs.c.status)
sa.Index("jobs_finished", jobs.c.finished_at, **_where(jobs.c.finished_at.is_not(None)))

usage_totals = sa.Table(
    "usage_totals",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("model_id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, primary_key=True),
    sa.Column("jobs", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("images", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("steps", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("compute_s", sa.Double, nullable=False, server_default=sa.text("0.0")),
)

adapters = sa.Table(
    "adapters",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("record", sa.Text, nullable=False),  # JSON: AdapterRecord.stored()
)

webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),  # the delivery id (webhook-id)
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("next_attempt_at", sa.Double, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'pending'")),
    sa.Column("last_error", sa.Text),
    sa.Column("finished_at", sa.Double),
    sa.Column("seq", sa.BigInteger),  # insertion order among events of one instant
)
sa.Index(
    "webhook_outbox_due",
    webhook_outbox.c.next_attempt_at,
    **_where(webhook_outbox.c.state == "pending"),
)
sa.Index("webhook_outbox_job", webhook_outbox.c.job_id)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
)

# keys and quotas changed at run time (revision 0002; ``tenants/runtime.py``)
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),  # the public key id
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),  # sha256:<hex> of the whole key
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double),
    sa.Column("description", sa.Text, nullable=False, server_default=sa.text("''")),
)

tenant_quotas = sa.Table(
    "tenant_quotas",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("quotas", sa.Text, nullable=False),  # JSON: Quotas fields overridden
    sa.Column("updated_at", sa.Double, nullable=False),
)
