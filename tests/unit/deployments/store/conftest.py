"""A real PostgreSQL server for the job store tests, started once per test session.

``initdb`` into a temporary folder, ``pg_ctl start`` on a free port of 127.0.0.1 with its unix
socket in that folder (no system service), stopped and deleted at the end. Binaries: ``initdb``
on PATH or Debian's ``/usr/lib/postgresql/<version>/bin`` (``.ci/run`` installs the package);
the tests that need it skip when neither exists. As root the server runs as the ``postgres`` user
(PostgreSQL refuses root). Each test gets its own schema (``pg_url``): no database per test.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_USER = "genmedia"
PG_PASSWORD = "test-only-secret"


def pg_bin() -> Path | None:
    """The folder of initdb / pg_ctl: PATH first, then the newest Debian install."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(dirs[-1]).parent if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str = "postgres") -> sa.URL:
        return sa.URL.create(
            "postgresql+psycopg",
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=database,
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="genmedia-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = pwd.getpwnam("nobody")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", pw.pw_name, "--"]
    data, log = root / "data", root / "server.log"
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "-E", "UTF8"]
    initdb += ["--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256"]
    initdb += [f"--pwfile={pwfile}"]
    subprocess.run([*run_as, *initdb], check=True, capture_output=True)
    port = _free_port()
    opts = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
    )
    ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
    started = subprocess.run([*run_as, *ctl, "-o", opts, "start"], capture_output=True)
    if started.returncode != 0:
        msg = log.read_text() if log.exists() else started.stderr.decode()
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed:\n{msg}")
    try:
        yield PgServer("127.0.0.1", port, PG_USER, PG_PASSWORD)
    finally:
        subprocess.run([*run_as, *ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


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
