"""A throwaway PostgreSQL server on 127.0.0.1 for the job store's tests and benchmarks.

Not on a request's way: the tests (``tests/unit/deployments/store/conftest.py``) and
``benchmarks/bench_store.py`` start one to run the PostgreSQL job store against. ``initdb`` into
a temporary folder, ``pg_ctl start`` on a free port of 127.0.0.1 with its unix socket in that
folder (no system service; durability off unless asked: fsync, synchronous commit, full page
writes), stopped and deleted when the block ends. Binaries: ``initdb`` on PATH or Debian's
``/usr/lib/postgresql/<version>/bin`` (``apt-get install postgresql``). As root the server runs
as the ``postgres`` user (PostgreSQL refuses root). Never for serving.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from genmedia.deployments.local_ports import free_port

USER = "genmedia"
PASSWORD = "test-only-secret"
# no durability: a crash loses the server, which is thrown away anyway
FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here, or the server did not start (the message says which)."""


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


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str = "postgres") -> sa.URL:
        """A psycopg URL with the password (for tests; a catalog's URL holds none)."""
        return sa.URL.create(
            "postgresql+psycopg",
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=database,
        )

    def catalog_url(self, database: str = "postgres") -> str:
        """The URL as a catalog's ``job_store`` takes it: no password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def _run_as(root: Path) -> tuple[list[str], tuple[int, int] | None]:
    """The command prefix (and uid, gid) that runs the server as a non-root user when root."""
    if os.geteuid() != 0:  # initdb and postgres refuse to run as root
        return [], None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pw = pwd.getpwnam("nobody")
    os.chown(root, pw.pw_uid, pw.pw_gid)
    return ["runuser", "-u", pw.pw_name, "--"], (pw.pw_uid, pw.pw_gid)


@contextmanager
def local_postgres(*, max_connections: int = 60, durable: bool = False) -> Iterator[PgServer]:
    """A fresh server for the block: user ``USER`` with password ``PASSWORD`` (scram-sha-256 over
    TCP), database ``postgres``; ``PostgresUnavailable`` when it cannot start. ``durable``:
    PostgreSQL's own defaults (fsync, synchronous commit), as a managed server runs."""
    bindir = pg_bin()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        )
    root = Path(tempfile.mkdtemp(prefix="genmedia-pg-"))
    try:
        run_as, owner = _run_as(root)
        data, log, pwfile = root / "data", root / "server.log", root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if owner:
            os.chown(pwfile, *owner)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8"]
        initdb += ["--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256"]
        initdb += [f"--pwfile={pwfile}"]
        made = subprocess.run([*run_as, *initdb], capture_output=True)
        if made.returncode != 0:
            raise PostgresUnavailable(f"initdb failed:\n{made.stderr.decode(errors='replace')}")
        port = free_port()
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        opts += f" -c max_connections={max_connections}" + ("" if durable else f" {FAST}")
        ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
        started = subprocess.run([*run_as, *ctl, "-o", opts, "start"], capture_output=True)
        if started.returncode != 0:
            msg = log.read_text() if log.exists() else started.stderr.decode(errors="replace")
            raise PostgresUnavailable(f"pg_ctl start failed:\n{msg}")
        try:
            yield PgServer("127.0.0.1", port, USER, PASSWORD)
        finally:
            subprocess.run([*run_as, *ctl, "-m", "immediate", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
