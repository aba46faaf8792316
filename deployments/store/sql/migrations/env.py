"""Alembic's environment for the job store: runs on the connection ``schema.py`` passes in.

``genmedia store migrate`` and the scheduler's start-up (``deployments/store/open.py``) call
``schema.upgrade``; the ``alembic`` command line is not needed. On PostgreSQL an advisory lock
keeps two schedulers starting at once from migrating together.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from genmedia.deployments.store.sql.tables import metadata

MIGRATION_LOCK = 0x67656E6D  # pg_advisory_xact_lock key while migrating


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("job store migrations run through genmedia (store migrate), not alone")
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
        context.run_migrations()


run()
