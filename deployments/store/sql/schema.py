"""Schema revisions of the job store: which one a store is at, upgrading it, refusing a newer one.

``open_store`` (``deployments/store/open.py``) calls ``ensure`` before the scheduler uses a store:
an empty or older store is upgraded to this code's head revision (Alembic, ``migrations/``), a
store at a revision this code does not know (written by a newer genmedia) is refused with
``SchemaTooNew``. ``genmedia store migrate`` calls ``upgrade`` and reports both revisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x67656E6D  # PostgreSQL advisory lock key held while a store is upgraded


class SchemaTooNew(RuntimeError):
    """The store was upgraded by a newer genmedia: this code must not write to it."""

    def __init__(self, where: str, store_rev: str, code_head: str):
        super().__init__(
            f"job store {where} is at schema revision {store_rev!r}, which this genmedia does not "
            f"know (its newest is {code_head!r}): the store was upgraded by a newer genmedia; run "
            "that version, or restore a backup taken before the upgrade"
        )
        self.store_rev, self.code_head = store_rev, code_head


@dataclass(frozen=True)
class Revisions:
    """A store's revision (None: unversioned or empty) and this code's head."""

    store: str | None
    head: str

    @property
    def current(self) -> bool:
        return self.store == self.head


def _config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None, "no migrations"
    return rev


def revisions(engine: sa.Engine) -> Revisions:
    """Where the store is; SchemaTooNew when its revision is unknown to this code."""
    script = ScriptDirectory.from_config(_config())
    with engine.connect() as conn:
        store_rev = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
    code_head = script.get_current_head()
    assert code_head is not None
    if store_rev is not None:
        try:
            script.get_revision(store_rev)
        except Exception:
            raise SchemaTooNew(_where(engine), store_rev, code_head) from None
    return Revisions(store_rev, code_head)


def upgrade(engine: sa.Engine) -> Revisions:
    """Upgrade to this code's head (a no-op when there); the revisions before the upgrade."""
    before = revisions(engine)
    if not before.current:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # replicas starting together (a scheduler and its standby) upgrade one at a
                # time; the later ones find the store at head and change nothing
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            command.upgrade(_config(conn), "head")
            conn.commit()
    return before


def _where(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
