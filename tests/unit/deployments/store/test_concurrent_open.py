"""Replicas that open one empty PostgreSQL store at the same moment (a scheduler and its
standbys starting together): the schema upgrade runs once, under an advisory lock, and every
opener ends with a usable store at head."""

from __future__ import annotations

import threading

import pytest

from genmedia.deployments.store.sql import schema
from genmedia.deployments.store.sql.store import SQLJobStore


@pytest.mark.parametrize("openers", [4])
def test_concurrent_first_opens_upgrade_once(pg_url, openers):
    from sqlalchemy import create_engine

    engines = [create_engine(pg_url) for _ in range(openers)]
    errors: list[BaseException] = []
    start = threading.Barrier(openers)

    def open_one(engine) -> None:
        try:
            start.wait()
            schema.upgrade(engine)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert schema.revisions(engines[0]).current
    store = SQLJobStore(engines[0])
    assert store.unfinished() == []
    for e in engines[1:]:
        e.dispose()
    store.close()
