"""A real PostgreSQL server for the job store tests, started once per test session.

``genmedia.deployments.store.sql.local_pg``: ``initdb`` into a temporary folder, ``pg_ctl start``
on a free port of 127.0.0.1 (no system service), stopped and deleted at the end. The tests that
need it skip when the binaries are missing (``.ci/run`` installs Debian's ``postgresql``). Each
test gets its own schema (``pg_url``): no database per test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from genmedia.deployments.store.sql import local_pg
from genmedia.deployments.store.sql.local_pg import PgServer, local_postgres, pg_bin

PG_USER, PG_PASSWORD = local_pg.USER, local_pg.PASSWORD

__all__ = ["PG_PASSWORD", "PG_USER", "PgServer", "pg_bin", "pg_server", "pg_url"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    with local_postgres() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[sa.URL]:
    """A URL whose connections work in a fresh schema of their own (search_path)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {name}")
    try:
        yield pg_server.url().update_query_dict({"options": f"-csearch_path={name}"})
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")
        admin.dispose()
