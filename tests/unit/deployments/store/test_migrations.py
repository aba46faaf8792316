"""Job store schema revisions and backend choice: an empty store and a first-edition SQLite file
are upgraded to the head revision, a store from a newer genmedia is refused naming both
revisions, a PostgreSQL URL is never a file path and never carries its password, and
``genmedia store migrate`` upgrades a catalog's store."""

from __future__ import annotations

import json
import sqlite3

import pytest
import sqlalchemy as sa
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from genmedia.deployments.cli.main import app
from genmedia.deployments.store.jobs import JobStatus
from genmedia.deployments.store.open import (
    JobStoreConfigError,
    SchemaTooNew,
    engine_for,
    open_store,
    store_url,
)
from genmedia.deployments.store.sql import schema, tables
from genmedia.models.catalog import load_catalog
from genmedia.models.server_config import SchedulerSettings

# The first edition's job store (deployments/jobstore.py at e79864f), as written then.
FIRST_EDITION = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, model_id TEXT NOT NULL, priority TEXT NOT NULL,
    status TEXT NOT NULL, job TEXT NOT NULL, submitted_at REAL NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0, deadline REAL, idempotency_key TEXT, webhook_url TEXT,
    webhook_pending INTEGER NOT NULL DEFAULT 0, started_at REAL, finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0, result TEXT, error_type TEXT, error_message TEXT,
    usage TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (status) WHERE status IN ('IN_QUEUE', 'IN_PROGRESS');
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant, status);
CREATE TABLE IF NOT EXISTS adapters (id TEXT PRIMARY KEY, record TEXT NOT NULL);
"""

# The SQLite store of the second edition before migrations (sqlite3, no alembic_version): every
# table, ``body_sha256`` added in place, no ``seq``.
SQLITE_BEFORE_MIGRATIONS = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, model_id TEXT NOT NULL, priority TEXT NOT NULL,
    status TEXT NOT NULL, job TEXT NOT NULL, submitted_at REAL NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0, deadline REAL, idempotency_key TEXT, body_sha256 TEXT,
    webhook_url TEXT, webhook_pending INTEGER NOT NULL DEFAULT 0, started_at REAL,
    finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0, result TEXT, error_type TEXT,
    error_message TEXT, usage TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX jobs_idempotency
    ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_open ON jobs (status) WHERE status IN ('IN_QUEUE', 'IN_PROGRESS');
CREATE INDEX jobs_tenant ON jobs (tenant, status);
CREATE TABLE usage_totals (
    tenant TEXT NOT NULL, model_id TEXT NOT NULL, status TEXT NOT NULL,
    jobs INTEGER NOT NULL DEFAULT 0, images INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0, compute_s REAL NOT NULL DEFAULT 0.0,
    PRIMARY KEY (tenant, model_id, status)
);
CREATE TABLE adapters (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE webhook_outbox (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, tenant TEXT NOT NULL, url TEXT NOT NULL,
    event_type TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', last_error TEXT, finished_at REAL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_outbox_job ON webhook_outbox (job_id);
CREATE TABLE leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, expires_at REAL NOT NULL
);
"""


def sqlite_url(path) -> sa.URL:
    return sa.URL.create("sqlite", database=str(path))


def layout(engine: sa.Engine) -> dict[str, tuple[set[str], set[str]]]:
    insp = sa.inspect(engine)
    return {
        name: (
            {c["name"] for c in insp.get_columns(name)},
            {i["name"] for i in insp.get_indexes(name)},
        )
        for name in insp.get_table_names()
        if name != "alembic_version"
    }


EXPECTED = {
    t.name: ({c.name for c in t.columns}, {i.name for i in t.indexes})
    for t in tables.metadata.sorted_tables
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> sa.URL:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return sqlite_url(tmp_path / "jobs.sqlite")


def test_empty_store_gets_the_current_schema(url):
    engine = engine_for(url)
    before = schema.upgrade(engine)
    assert before.store is None and before.head == schema.head()
    assert layout(engine) == EXPECTED  # the first revision and tables.py agree
    assert schema.revisions(engine).current and schema.upgrade(engine).current  # idempotent
    engine.dispose()


def test_store_from_a_newer_genmedia_is_refused(url):
    engine = engine_for(url)
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaTooNew) as e:
        engine2 = engine_for(url)
        try:
            schema.upgrade(engine2)
        finally:
            engine2.dispose()
    assert "'9999'" in str(e.value) and f"'{schema.head()}'" in str(e.value)


def test_first_edition_sqlite_store_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(FIRST_EDITION)
    usage = json.dumps({"images": 2, "steps": 8, "compute_s": 1.5})
    db.execute(
        "INSERT INTO jobs (id, tenant, model_id, priority, status, job, submitted_at, "
        "idempotency_key, usage, finished_at, result, webhook_pending, webhook_url) VALUES "
        "('j1', 't', 'm', 'batch', 'COMPLETED', '{}', 1.0, 'k', ?, 2.0, '{}', 1, 'https://h')",
        (usage,),
    )
    db.execute(
        "INSERT INTO jobs (id, tenant, model_id, priority, status, job, submitted_at) "
        "VALUES ('j2', 't', 'm', 'interactive', 'IN_QUEUE', '{\"seed\": 3}', 3.0)"
    )
    db.execute("INSERT INTO adapters VALUES ('a', ?)", (json.dumps({"id": "a"}),))
    db.commit()
    db.close()
    store = open_store(SchedulerSettings(job_store=str(path)))
    assert layout(store.engine) == EXPECTED and schema.revisions(store.engine).current
    assert store.find("t", "k").id == "j1" and store.get("j1").body_sha256 is None
    assert [r.id for r in store.unfinished()] == ["j2"] and store.get("j2").job == {"seed": 3}
    (done, queued) = store.usage("t")
    assert (done.status, done.jobs, done.images, done.steps) == (JobStatus.COMPLETED, 1, 2, 8)
    assert (queued.status, queued.jobs) == (JobStatus.IN_QUEUE, 1)
    assert [r.id for r in store.webhooks_pending()] == ["j1"]  # owed: moved at the next start
    store.transition("j2", {JobStatus.IN_QUEUE}, JobStatus.CANCELLED)
    store.close()
    again = open_store(SchedulerSettings(job_store=str(path)))  # totals are not counted twice
    assert [(u.status, u.jobs) for u in again.usage("t")] == [
        (JobStatus.CANCELLED, 1),
        (JobStatus.COMPLETED, 1),
    ]
    again.close()


def test_store_written_before_migrations_is_adopted(tmp_path):
    path = tmp_path / "jobs.sqlite"
    db = sqlite3.connect(path)
    db.executescript(SQLITE_BEFORE_MIGRATIONS)
    db.execute(
        "INSERT INTO jobs (id, tenant, model_id, priority, status, job, submitted_at) "
        "VALUES ('j1', 't', 'm', 'batch', 'IN_QUEUE', '{}', 1.0)"
    )
    db.execute(
        "INSERT INTO usage_totals (tenant, model_id, status, jobs) VALUES ('t', 'm', 'IN_QUEUE', 1)"
    )
    db.execute("INSERT INTO leases VALUES ('sched', 'A', 1, 110.0)")
    db.commit()
    db.close()
    store = open_store(SchedulerSettings(job_store=str(path)))
    assert layout(store.engine) == EXPECTED
    assert store.get("j1").status == JobStatus.IN_QUEUE and store.lease("sched").token == 1
    assert [u.jobs for u in store.usage("t")] == [1]  # its totals are kept, not counted again
    store.close()


def test_a_postgresql_url_is_never_a_file_path(tmp_path, pg_server, monkeypatch):
    base = f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}/postgres"
    with pytest.raises(ValidationError, match="holds a password"):
        SchedulerSettings(job_store=base.replace("@", ":hunter2@"))
    with pytest.raises(ValidationError, match="unsupported URL scheme 'mysql'"):
        SchedulerSettings(job_store="mysql://u@h/db")
    with pytest.raises(ValidationError, match="only a postgresql:// job_store"):
        SchedulerSettings(job_store="jobs.sqlite", job_store_password_env="X")
    env = SchedulerSettings(job_store=base, job_store_password_env="GM_TEST_PG_PASSWORD")
    with pytest.raises(JobStoreConfigError, match="GM_TEST_PG_PASSWORD is not set"):
        open_store(env)
    monkeypatch.setenv("GM_TEST_PG_PASSWORD", pg_server.password)
    assert store_url(env).get_backend_name() == "postgresql"
    store = open_store(env)
    assert store.dialect == "postgresql" and schema.revisions(store.engine).current
    assert pg_server.password not in repr(store.engine.url)
    store.close()
    (tmp_path / "pw").write_text(pg_server.password + "\n")
    by_file = SchedulerSettings(job_store=base, job_store_password_file=str(tmp_path / "pw"))
    open_store(by_file).close()
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    with pytest.raises(sa.exc.OperationalError):  # the server checks the password
        open_store(SchedulerSettings(job_store=base, job_store_password_file=str(wrong)))


def test_store_migrate_command(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(FIRST_EDITION)
    db.close()
    data = load_catalog().model_dump(mode="json", exclude_none=True)
    data["server"]["scheduler"]["job_store"] = "old.sqlite"  # relative to the catalog
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(app, ["store", "migrate", "--catalog", str(cat)])
    assert r.exit_code == 0, r.output
    assert f"unversioned -> {schema.head()}" in r.output
    r = CliRunner().invoke(app, ["store", "migrate", "--catalog", str(cat)])
    assert r.exit_code == 0 and "(current)" in r.output
    db = sqlite3.connect(path)
    db.execute("UPDATE alembic_version SET version_num = '9999'")
    db.commit()
    db.close()
    r = CliRunner().invoke(app, ["store", "migrate", "--catalog", str(cat)])
    assert r.exit_code != 0 and "'9999'" in r.output and "newer genmedia" in r.output
