"""Keys and quotas at run time: the scheduler's registry over the tenants file, and a gateway's
Authenticator following it within a second (a fake clock drives the refresher)."""

from __future__ import annotations

import asyncio

import pytest

from genmedia.deployments.protocol import AdminError, RuntimeKey
from genmedia.deployments.tenants.auth import Authenticator, AuthError
from genmedia.deployments.tenants.keys import key_record, new_api_key
from genmedia.deployments.tenants.runtime import KeyRefresher, KeyRegistry
from genmedia.deployments.tenants.schema import parse_tenants
from tests.unit.deployments.fakes import MemoryKeyStore

FILE_KEY = "gm_0123abcd_" + "k" * 43


def tenants_file():
    return parse_tenants(
        {
            "tenants": [
                {"id": "a", "api_keys": [key_record(FILE_KEY).model_dump(mode="json")]},
                {"id": "b", "quotas": {"max_queued_jobs": 50}},
            ]
        }
    )


def runtime_key(tenant: str = "b") -> tuple[str, RuntimeKey]:
    key_id, key, record = new_api_key()
    return key, RuntimeKey(key_id, tenant, record.hash, 1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def setup():
    tf = tenants_file()
    registry = KeyRegistry(MemoryKeyStore(), tf.tenants, clock=lambda: 100.0)
    auth = Authenticator(tf)
    clock = Clock()
    calls: list[int | None] = []

    async def fetch(known: int | None):
        calls.append(known)
        return registry.since(known)

    return registry, auth, KeyRefresher(fetch, auth.apply, clock=clock), clock, calls


def test_refresher_asks_once_a_second_and_applies_changes():
    registry, auth, refresher, clock, calls = setup()
    key, row = runtime_key()

    async def scenario():
        assert await refresher.tick()  # the first check applies the table
        with pytest.raises(AuthError):
            auth.authenticate(f"Bearer {key}")
        assert registry.add(row) == row
        clock.now = 0.5
        assert not await refresher.tick() and len(calls) == 1  # not yet: no call at all
        clock.now = 1.0
        assert await refresher.tick()
        assert auth.authenticate(f"Bearer {key}").id == "b"
        clock.now = 2.0
        assert not await refresher.tick() and calls[-1] == refresher.version  # unchanged
        assert registry.revoke(row.id).revoked_at == 100.0
        assert auth.authenticate(f"Bearer {key}").id == "b"  # until the next check
        clock.now = 3.0
        assert await refresher.tick()
        with pytest.raises(AuthError) as e:
            auth.authenticate(f"Bearer {key}")
        assert e.value.status == 401
        assert len(calls) == 4  # one call a second, whatever the requests

    asyncio.run(scenario())


def test_file_keys_can_be_revoked_and_quotas_overridden():
    registry, auth, refresher, _, _ = setup()
    assert auth.authenticate(f"Bearer {FILE_KEY}").id == "a"
    assert registry.revoke("0123abcd").tenant == "a"
    assert registry.revoke("0123abcd").revoked_at == 100.0  # again: still revoked
    out = registry.set_quotas("b", {"requests_per_minute": 30})
    assert isinstance(out, dict) and out["overrides"] == {"requests_per_minute": 30}
    assert out["quotas"]["max_queued_jobs"] == 50  # the file's value stands
    asyncio.run(refresher.tick())
    with pytest.raises(AuthError):
        auth.authenticate(f"Bearer {FILE_KEY}")
    assert auth.tenants["b"].quotas.requests_per_minute == 30
    assert auth.tenants["b"].quotas.max_queued_jobs == 50


def test_registry_refusals_name_the_field():
    registry, *_ = setup()
    _, row = runtime_key(tenant="nobody")
    refused = registry.add(row)
    assert isinstance(refused, AdminError) and (refused.status, refused.field) == (404, "tenant")
    taken = registry.add(RuntimeKey("0123abcd", "b", row.hash, 1.0))  # a file key's id
    assert isinstance(taken, AdminError) and taken.status == 409
    unknown = registry.revoke("ffffffff")
    assert isinstance(unknown, AdminError) and unknown.status == 404
    bound = registry.set_quotas("b", {"max_concurrent_jobs": 0})
    assert isinstance(bound, AdminError) and bound.status == 422
    assert bound.field == "quotas.max_concurrent_jobs" and "greater than or equal" in bound.message
    empty = registry.set_quotas("b", {})
    assert isinstance(empty, AdminError) and empty.status == 422


def test_a_restarted_registry_keeps_the_store_and_changes_version():
    store = MemoryKeyStore()
    tf = tenants_file()
    first = KeyRegistry(store, tf.tenants)
    _, row = runtime_key()
    first.add(row)
    second = KeyRegistry(store, tf.tenants)
    assert second.table.keys == (row,) and second.version != first.version
    assert second.since(second.version) is None and second.since(first.version) is not None
