"""The job store's schema as of the second edition (jobs, usage totals, adapters, webhook outbox,
scheduler lease, ``body_sha256``), created on an empty store and adopted from an unversioned one.

An unversioned store is a SQLite file written before migrations existed: the first edition
(jobs and adapters only) or the second edition's sqlite3-based store (all tables; no
``body_sha256`` or ``seq``; replaced by ``SQLJobStore``). Missing tables, nullable columns and
indexes are added; usage totals are counted once from the jobs when the table is new. The
table definitions are frozen here; later schema changes are new revisions.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _where(clause: sa.ColumnElement[bool]) -> dict[str, Any]:
    return {"sqlite_where": clause, "postgresql_where": clause}


def _schema() -> sa.MetaData:
    meta = sa.MetaData()
    zero, one = sa.text("0"), sa.text("1.0")
    jobs = sa.Table(
        "jobs",
        meta,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("submitted_at", sa.Double, nullable=False),
        sa.Column("weight", sa.Double, nullable=False, server_default=one),
        sa.Column("deadline", sa.Double),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("webhook_url", sa.Text),
        sa.Column("webhook_pending", sa.Integer, nullable=False, server_default=zero),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=zero),
        sa.Column("result", sa.Text),
        sa.Column("error_type", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("usage", sa.Text, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("body_sha256", sa.Text),
    )
    sa.Index(
        "jobs_idempotency",
        jobs.c.tenant,
        jobs.c.idempotency_key,
        unique=True,
        **_where(jobs.c.idempotency_key.is_not(None)),
    )
    sa.Index("jobs_open", jobs.c.status, **_where(jobs.c.status.in_(("IN_QUEUE", "IN_PROGRESS"))))
    sa.Index("jobs_tenant", jobs.c.tenant, jobs.c.status)
    sa.Index("jobs_finished", jobs.c.finished_at, **_where(jobs.c.finished_at.is_not(None)))
    sa.Table(
        "usage_totals",
        meta,
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("model_id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, primary_key=True),
        sa.Column("jobs", sa.BigInteger, nullable=False, server_default=zero),
        sa.Column("images", sa.BigInteger, nullable=False, server_default=zero),
        sa.Column("steps", sa.BigInteger, nullable=False, server_default=zero),
        sa.Column("compute_s", sa.Double, nullable=False, server_default=sa.text("0.0")),
    )
    sa.Table(
        "adapters",
        meta,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("record", sa.Text, nullable=False),
    )
    outbox = sa.Table(
        "webhook_outbox",
        meta,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=zero),
        sa.Column("next_attempt_at", sa.Double, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'pending'")),
        sa.Column("last_error", sa.Text),
        sa.Column("finished_at", sa.Double),
        sa.Column("seq", sa.BigInteger),
    )
    sa.Index("webhook_outbox_due", outbox.c.next_attempt_at, **_where(outbox.c.state == "pending"))
    sa.Index("webhook_outbox_job", outbox.c.job_id)
    sa.Table(
        "leases",
        meta,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("token", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    return meta


def _fill_totals(bind: sa.Connection, meta: sa.MetaData) -> None:
    """Count the jobs of a store from before the usage totals once."""
    jobs, totals = meta.tables["jobs"], meta.tables["usage_totals"]
    sums: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    query = sa.select(jobs.c.tenant, jobs.c.model_id, jobs.c.status, jobs.c.usage)
    for tenant, model_id, status, usage in bind.execute(query):
        u = json.loads(usage or "{}")
        s = sums[(tenant, model_id, status)]
        s[0] += 1
        s[1] += int(u.get("images", 0))
        s[2] += int(u.get("steps", 0))
        s[3] += float(u.get("compute_s", 0.0))
    rows = [
        {"tenant": k[0], "model_id": k[1], "status": k[2], "jobs": int(s[0]),
         "images": int(s[1]), "steps": int(s[2]), "compute_s": s[3]}
        for k, s in sums.items()
    ]  # fmt: skip
    if rows:
        bind.execute(totals.insert(), rows)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    present = set(inspector.get_table_names())
    meta = _schema()
    for table in meta.sorted_tables:
        if table.name not in present:
            table.create(bind)
            continue
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        for col in table.columns:
            if col.name not in columns:  # only nullable columns are missing from old stores
                op.add_column(table.name, sa.Column(col.name, col.type, nullable=True))
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)
    if "usage_totals" not in present and "jobs" in present:
        _fill_totals(bind, meta)


def downgrade() -> None:
    bind = op.get_bind()
    _schema().drop_all(bind)
