"""Standby scheduler replicas on one job store, without a Ray cluster: real ``Scheduler``
objects (no workers; replica polling stubbed), the lease, the gate every call passes
(``SchedulerNotActive``), the routing stats and the router's choice (``serve/routing.py``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from genmedia.deployments.protocol import SchedulerNotActive
from genmedia.deployments.serve import scheduler as mod
from genmedia.deployments.serve.routing import active_first
from genmedia.deployments.store.jobs import FencedOut
from genmedia.deployments.store.lease import LeaseKeeper
from genmedia.models.catalog import load_catalog
from tests.unit.deployments.store.test_lease import rec

TENANTS = {"version": 1, "tenants": [{"id": "t", "api_keys": []}]}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """The default catalog on a temporary store with a 2 s lease (renewed every 0.5 s)."""
    monkeypatch.setattr(mod, "yield_cpu_to_workers", lambda n: None)  # keep the test's niceness

    async def no_polling(self):
        await asyncio.Event().wait()

    monkeypatch.setattr(mod.Scheduler, "_poll_replicas", no_polling)  # serve.status needs Ray
    catalog = load_catalog()
    server = catalog.server
    scheduler = server.scheduler.model_copy(
        update={"job_store": str(tmp_path / "jobs.sqlite"), "lease_ttl_s": 2.0}
    )
    storage = server.storage.model_copy(update={"dir": str(tmp_path / "outputs")})
    catalog = catalog.model_copy(
        update={"server": server.model_copy(update={"scheduler": scheduler, "storage": storage})}
    )
    return catalog, catalog.model_dump(mode="json", exclude={"source"})


async def start(data: dict) -> mod.Scheduler:
    s = mod.Scheduler.__new__(mod.Scheduler)
    await s.__init__(data, "<test catalog>", {}, TENANTS, {}, "app")  # type: ignore[misc]
    return s


async def stop(*schedulers: mod.Scheduler) -> None:
    for s in schedulers:
        for task in list(s._tasks):
            task.cancel()
        await asyncio.gather(*s._tasks, return_exceptions=True)
        if hasattr(s, "webhooks"):
            await s.webhooks.aclose()


def test_a_standby_refuses_calls_then_takes_over_and_fences_the_old_owner(setup):
    """The second replica starts as a standby (refuses calls at once while the first renews);
    when the first stalls past the TTL the second takes over with token 2, and the first is
    fenced out: its writes are refused and it reports unhealthy and inactive."""
    _, data = setup

    async def scenario():
        first = await start(data)
        await asyncio.wait_for(first._active.wait(), 30)
        assert first.lease.lease.token == 1
        assert first.record_routing_stats() == {"active": 1}
        second = await start(data)  # constructed at once, not active
        await asyncio.sleep(2.5)  # past the TTL: the first keeps renewing
        assert not second._active.is_set()
        assert second.record_routing_stats() == {"active": 0}
        with pytest.raises(SchedulerNotActive, match="is active"):
            await second.usage("t")  # refused at once: the gateway tries again
        assert await second.record_autoscaling_stats() == {}
        await first.check_health()
        await second.check_health()
        for task in list(first._tasks):  # the first stalls: no more renewals or dispatching
            task.cancel()
        await asyncio.wait_for(second._active.wait(), 30)
        assert second.lease.lease.token == 2 and second._fenced is None
        assert await second.usage("t") == []
        with pytest.raises(FencedOut):  # the stalled replica's writes are refused
            first.store.create(rec(1))
        await asyncio.wait_for(first.lease.hold(), 30)  # its next renewal: fenced out
        assert first._fenced is not None
        assert first.record_routing_stats() == {"active": 0}
        with pytest.raises(RuntimeError, match="fenced out"):
            await first.check_health()
        with pytest.raises(FencedOut):
            await first.submit_many([])
        second.store.create(rec(2))  # the new owner writes
        await stop(first, second)

    asyncio.run(scenario())


def test_a_standby_holds_a_call_while_it_takes_over(setup):
    """A call that reaches a standby once the dead owner's lease has expired waits for the
    takeover and is answered by the new active replica."""
    catalog, data = setup
    store = mod.open_store(catalog.server.scheduler, catalog)
    dead = LeaseKeeper(store, "scheduler", ttl_s=2.0, renew_s=0.5, on_lost=lambda e: None)

    async def scenario():
        await dead.acquire()  # a replica that then dies without releasing the lease
        standby = await start(data)
        with pytest.raises(SchedulerNotActive):
            await standby.usage("t")  # the dead replica's lease is still live
        await asyncio.sleep(2.1)  # expired now: the call waits for the takeover
        assert await asyncio.wait_for(standby.usage("t"), 30) == []
        assert standby.lease.lease.token == 2
        await stop(standby)

    asyncio.run(scenario())


@dataclass
class FakeReplica:
    name: str
    routing_stats: dict = field(default_factory=dict)


def test_the_router_prefers_the_replica_that_reports_active():
    a, b, c = FakeReplica("a", {"active": 0}), FakeReplica("b", {"active": 1}), FakeReplica("c")
    assert active_first([a, b, c]) == [[b]]  # type: ignore[list-item]
    # nobody active yet (a takeover, stats not pulled): every replica is a candidate
    assert active_first([a, c]) == [[a, c]]  # type: ignore[list-item]


def test_a_step_engine_replica_takes_a_running_set_of_calls():
    """Serve's max_ongoing_requests follows the engine: request-level replicas take their
    four slots, a step-engine replica a running set plus a joining set (and its preempt slots)."""
    from genmedia.deployments.scheduler.dispatcher import SLOTS_PER_REPLICA, slots_per_replica
    from genmedia.deployments.serve.app import SCHEDULER_NAME, plan_workers

    catalog = load_catalog()
    step = {**catalog.workers, "sd15": catalog.worker("sd15").model_copy(update={"engine": "step"})}
    plans = {p.family: p for p in plan_workers(catalog.model_copy(update={"workers": step}))}
    batch = max(m.max_batch_size for m in catalog.models if m.family == "sd15")
    assert (
        plans["sd15"].max_ongoing_requests == slots_per_replica("step", batch) > SLOTS_PER_REPLICA
    )
    assert plans["sdxl"].max_ongoing_requests == SLOTS_PER_REPLICA
    assert SCHEDULER_NAME == "scheduler"  # the name the router and the autoscaler read
