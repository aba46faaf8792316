"""Opening the catalog's job store: the backend from ``server.scheduler.job_store``.

The scheduler replica (``serve/scheduler.py``) and ``genmedia store`` call ``open_store`` at
start: a plain path (or ``sqlite:///path``) is the embedded SQLite file, ``postgresql://user@
host:port/db`` a PostgreSQL database whose password comes from ``job_store_password_env`` or
``job_store_password_file`` (never from the catalog). A URL is never taken for a file path. The
store's schema is brought to this code's revision (``sql/schema.py``: an older store is upgraded,
a newer one refused with ``SchemaTooNew``). No Ray imports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from genmedia.deployments.store.sql import schema
from genmedia.deployments.store.sql.store import SQLJobStore
from genmedia.models.catalog import Catalog
from genmedia.models.server_config import SchedulerSettings

__all__ = ["JobStoreConfigError", "SchemaTooNew", "engine_for", "open_store", "store_url"]
SchemaTooNew = schema.SchemaTooNew


class JobStoreConfigError(ValueError):
    """``server.scheduler.job_store`` (or its password) cannot be used."""


def is_url(job_store: str) -> bool:
    return "://" in job_store


def _password(settings: SchedulerSettings, resolve: Callable[[str], Path]) -> str | None:
    if settings.job_store_password_env:
        name = settings.job_store_password_env
        value = os.environ.get(name)
        if not value:
            raise JobStoreConfigError(
                f"server.scheduler.job_store_password_env: the environment variable {name} is "
                "not set (or empty) in the scheduler's process"
            )
        return value
    if settings.job_store_password_file:
        path = resolve(settings.job_store_password_file)
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as e:
            raise JobStoreConfigError(
                f"server.scheduler.job_store_password_file: cannot read {path}: {e.strerror}"
            ) from None
    return None


def store_url(settings: SchedulerSettings, resolve: Callable[[str], Path] = Path) -> sa.URL:
    """The SQLAlchemy URL of the job store, password included (never log it: ``hide_password``)."""
    value = settings.job_store
    if not is_url(value):
        return sa.URL.create("sqlite", database=str(resolve(value)))
    try:
        url = sa.make_url(value)
    except sa.exc.ArgumentError as e:
        raise JobStoreConfigError(f"server.scheduler.job_store: not a URL: {e}") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(database=str(resolve(url.database or "")))
    if backend != "postgresql":
        raise JobStoreConfigError(f"server.scheduler.job_store: unsupported database {backend!r}")
    if url.password is not None:
        raise JobStoreConfigError(
            "server.scheduler.job_store: the URL holds a password; set job_store_password_env "
            "or job_store_password_file instead"
        )
    return url.set(drivername="postgresql+psycopg", password=_password(settings, resolve))


def engine_for(url: sa.URL, **kwargs: Any) -> sa.Engine:
    """An engine for the store: SQLite with one shared connection in WAL mode whose write
    transactions start with ``BEGIN IMMEDIATE``; PostgreSQL with a checked connection pool."""
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=8, **kwargs)
    Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url, poolclass=StaticPool, connect_args={"check_same_thread": False}, **kwargs
    )

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of any process; a power loss may drop the last
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(conn.info.pop("begin", "BEGIN"))

    return engine


def open_store(
    settings: SchedulerSettings, catalog: Catalog | None = None, *, migrate: bool = True
) -> SQLJobStore:
    """The catalog's job store at this code's schema revision (upgraded when ``migrate``;
    ``SchemaTooNew`` for a store a newer genmedia upgraded)."""
    resolve = catalog.resolve_path if catalog is not None else _expand
    engine = engine_for(store_url(settings, resolve))
    try:
        revs = schema.upgrade(engine) if migrate else schema.revisions(engine)
        if not migrate and not revs.current:
            raise JobStoreConfigError(
                f"job store {engine.url.render_as_string(hide_password=True)} is at schema "
                f"revision {revs.store!r}, this code at {revs.head!r}: run genmedia store migrate"
            )
    except BaseException:
        engine.dispose()
        raise
    return SQLJobStore(engine)


def _expand(value: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(value)))
