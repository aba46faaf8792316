"""The job store's run-time keys and quota overrides (revision 0002) on SQLite and a real
PostgreSQL: insert once per key id, revoke once (the first time stands), overrides replaced
whole, and a second store on the same database sees every change."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from genmedia.deployments.protocol import RuntimeKey
from genmedia.deployments.store.open import engine_for
from genmedia.deployments.store.sql import schema
from genmedia.deployments.store.sql.store import SQLJobStore

HASH = "sha256:" + "a" * 64


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request, tmp_path) -> Iterator[Callable[[], SQLJobStore]]:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = sa.URL.create("sqlite", database=str(tmp_path / "jobs.sqlite"))
    opened: list[SQLJobStore] = []

    def make() -> SQLJobStore:
        engine = engine_for(url)
        schema.upgrade(engine)
        opened.append(SQLJobStore(engine))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def test_keys_added_once_and_revoked_once(opener):
    store = opener()
    key = RuntimeKey("0123abcd", "t", HASH, 10.5, None, "ci")
    assert store.api_keys() == [] and store.tenant_quotas() == {}
    assert store.add_api_key(key) and not store.add_api_key(key)  # the id is taken
    assert store.api_keys() == [key]
    assert not store.revoke_api_key("ffffffff", 11.0)  # unknown
    assert store.revoke_api_key("0123abcd", 12.25) and store.revoke_api_key("0123abcd", 13.0)
    (revoked,) = store.api_keys()
    assert revoked.revoked_at == 12.25 and revoked.description == "ci"  # the first time stands
    file_key = RuntimeKey("89abcdef", "u", HASH.replace("a", "b"), 14.0, 14.0)  # revoked as added
    assert store.add_api_key(file_key)
    assert [k.id for k in opener().api_keys()] == ["0123abcd", "89abcdef"]  # another store


def test_quota_overrides_are_replaced_whole(opener):
    store = opener()
    store.set_tenant_quotas("t", {"max_queued_jobs": 5}, 1.0)
    store.set_tenant_quotas("u", {"requests_per_minute": 60}, 1.0)
    store.set_tenant_quotas("t", {"max_queued_jobs": 7, "max_concurrent_jobs": 2}, 2.0)
    assert opener().tenant_quotas() == {
        "t": {"max_queued_jobs": 7, "max_concurrent_jobs": 2},
        "u": {"requests_per_minute": 60},
    }
