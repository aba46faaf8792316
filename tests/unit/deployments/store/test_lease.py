"""The scheduler lease: two stores on one file (two schedulers), the second waits; a stale
token's writes are refused; a takeover after expiry increments the token."""

from __future__ import annotations

import asyncio

import pytest

from genmedia.deployments.store.jobs import FencedOut, JobRecord, JobStatus
from genmedia.deployments.store.lease import LeaseKeeper
from tests.unit.deployments.store.stores import sqlite_store
from tests.unit.deployments.store.test_outbox import terminal_event

TTL = 10.0


def rec(i):
    return JobRecord(
        id=f"j{i}",
        tenant="t",
        model_id="m",
        priority="batch",
        status=JobStatus.IN_QUEUE,
        job={"seed": i},
        submitted_at=float(i),
        webhook_url="https://hooks.example.com/h",
    )


@pytest.fixture
def two(tmp_path):
    """Two stores on one file, as two scheduler replicas have."""
    path = tmp_path / "jobs.sqlite"
    a, b = sqlite_store(path), sqlite_store(path)
    yield a, b
    a.close()
    b.close()


def test_second_waits_until_expiry_then_takes_over_with_a_newer_token(two):
    a, b = two
    first = a.acquire_lease("scheduler", "A", TTL, now=0.0)
    assert (first.holder, first.token, first.expires_at) == ("A", 1, TTL)
    assert b.acquire_lease("scheduler", "B", TTL, now=1.0) is None  # valid: B waits
    renewed = a.renew_lease(first, TTL, now=8.0)
    assert renewed.expires_at == 18.0 and renewed.token == 1
    assert b.acquire_lease("scheduler", "B", TTL, now=17.9) is None
    second = b.acquire_lease("scheduler", "B", TTL, now=18.0)  # expired: taken over
    assert (second.holder, second.token) == ("B", 2)
    assert a.lease("scheduler") == second
    assert b.acquire_lease("scheduler", "B", TTL, now=19.0).token == 2  # its own: same token


def test_a_stale_token_is_refused_and_changes_nothing(two):
    a, b = two
    a.create(rec(1))
    held = a.acquire_lease("scheduler", "A", TTL, now=0.0)
    a.create(rec(2))  # fenced writes pass while the token is current
    assert a.transition("j2", {JobStatus.IN_QUEUE}, JobStatus.IN_PROGRESS) is not None
    b.acquire_lease("scheduler", "B", TTL, now=TTL + 1)  # A stalled past its TTL
    with pytest.raises(FencedOut, match=r"token 1 is stale.*'B' holds token 2"):
        a.transition_many(
            [("j1", {})], {JobStatus.IN_QUEUE}, JobStatus.COMPLETED, outbox=terminal_event
        )
    with pytest.raises(FencedOut):
        a.create(rec(3))
    with pytest.raises(FencedOut):
        a.update("j1", error_message="x")
    with pytest.raises(FencedOut):
        a.add_webhooks(terminal_event(a.get("j1")))
    with pytest.raises(FencedOut):
        a.renew_lease(held, TTL, now=TTL + 2)
    a.release_lease(held)  # taken over already: nothing to release, no error
    assert b.get("j1").status == JobStatus.IN_QUEUE and b.get("j3") is None
    assert b.webhooks_of("j1") == [] and b.get("j1").error_message is None
    assert b.transition("j1", {JobStatus.IN_QUEUE}, JobStatus.CANCELLED) is not None  # B writes
    assert b.lease("scheduler").holder == "B"


def test_release_lets_the_standby_in_at_once(two):
    a, b = two
    held = a.acquire_lease("scheduler", "A", TTL, now=0.0)
    a.release_lease(held)
    taken = b.acquire_lease("scheduler", "B", TTL, now=0.5)
    assert taken.token == 2
    with pytest.raises(FencedOut):  # the released holder's later writes stay fenced
        a.create(rec(1))


def test_stores_without_a_lease_are_not_fenced(two):
    a, b = two
    a.acquire_lease("scheduler", "A", TTL, now=0.0)
    b.create(rec(1))  # e.g. an operator's tool: no lease, no token
    assert a.get("j1") is not None


def test_two_keepers_one_holds_the_other_waits_then_takes_over(two):
    """Two schedulers' keepers on one file with a fake clock: the second waits while the first
    renews, and takes over (token 2) once the first stops renewing; the first learns it lost."""
    a, b = two
    now = [0.0]
    lost: list[FencedOut] = []

    def keeper(store, on_lost=lambda e: None):
        return LeaseKeeper(
            store, "scheduler", ttl_s=1.0, renew_s=0.01, on_lost=on_lost, clock=lambda: now[0]
        )

    async def scenario():
        first = keeper(a, lost.append)
        assert (await first.acquire()).token == 1
        holding = asyncio.create_task(first.hold())
        second = keeper(b)
        waiting = asyncio.create_task(second.acquire())
        for _ in range(20):  # the clock moves while the first renews: the second keeps waiting
            now[0] += 0.2
            await asyncio.sleep(0.02)
        assert not waiting.done()
        holding.cancel()  # the first stalls (no more renewals)
        now[0] += 1.5
        taken = await asyncio.wait_for(waiting, 30)
        assert (taken.token, taken.holder) == (2, second.holder)
        await asyncio.wait_for(first.hold(), 30)  # its next renewal is refused: on_lost
        return taken

    asyncio.run(scenario())
    assert len(lost) == 1 and lost[0].current.token == 2
    with pytest.raises(FencedOut):
        a.create(rec(1))


def test_keeper_rejects_a_renewal_period_beyond_the_ttl(two):
    with pytest.raises(ValueError, match="renew_s"):
        LeaseKeeper(two[0], "scheduler", ttl_s=1.0, renew_s=1.0, on_lost=lambda e: None)
