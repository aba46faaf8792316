"""Job stores for tests: ``SQLJobStore`` (or a subclass) on a SQLite file, opened as the
scheduler opens the catalog's (``store/open.py``: WAL, schema at this code's revision)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa

from genmedia.deployments.store.open import engine_for
from genmedia.deployments.store.sql import schema
from genmedia.deployments.store.sql.store import SQLJobStore

S = TypeVar("S", bound=SQLJobStore)


def sqlite_store(path: str | Path, cls: type[S] = SQLJobStore) -> S:  # type: ignore[assignment]
    """The store in the SQLite file ``path`` (created, or upgraded, as needed)."""
    engine = engine_for(sa.URL.create("sqlite", database=str(path)))
    try:
        schema.upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return cls(engine)
