"""The job store contract, run on every backend: SQLJobStore on SQLite and on a real PostgreSQL
(``conftest.py``). Create, group commit, idempotency, compare-and-set transitions, usage totals,
the webhook outbox, the lease with its fencing token, and what retention needs; then PostgreSQL
under concurrent writers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from genmedia.deployments.protocol import AdapterRecord
from genmedia.deployments.store.jobs import (
    FencedOut,
    JobRecord,
    JobStatus,
    OutboxEvent,
    OutboxState,
)
from genmedia.deployments.store.lease import LeaseKeeper
from genmedia.deployments.store.open import engine_for
from genmedia.deployments.store.sql import schema
from genmedia.deployments.store.sql.store import SQLJobStore

Q, P, C = JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS, JobStatus.COMPLETED
BACKENDS = ["sqlite", "postgresql"]


def rec(i, tenant="t", key=None, status=Q, url=None, model="m", at=None) -> JobRecord:
    return JobRecord(
        id=f"j{i}",
        tenant=tenant,
        model_id=model,
        priority="batch",
        status=status,
        job={"seed": i},
        submitted_at=float(i) if at is None else at,
        idempotency_key=key,
        webhook_url=url,
    )


def event(r: JobRecord, now: float = 100.0, kind: str | None = None) -> list[OutboxEvent]:
    kind = kind or f"job.{str(r.status).lower()}"
    url = r.webhook_url or ""
    return [OutboxEvent(r.id, r.tenant, url, kind, {"id": r.id}, now, next_attempt_at=now)]


@pytest.fixture(params=BACKENDS)
def opener(request, tmp_path) -> Iterator[Callable[[], object]]:
    """Opens another store on the same database (the lease tests need two)."""
    opened: list = []

    def sql(url) -> Callable[[], object]:
        def make():
            engine = engine_for(url)
            schema.upgrade(engine)
            return SQLJobStore(engine)

        return make

    if request.param == "postgresql":
        make = sql(request.getfixturevalue("pg_url"))
    else:
        make = sql(sa.URL.create("sqlite", database=str(tmp_path / "jobs.sqlite")))

    def tracked():
        store = make()
        opened.append(store)
        return store

    yield tracked
    for store in opened:
        store.close()


@pytest.fixture
def store(opener):
    return opener()


def test_create_get_find_and_idempotency(store):
    first, created = store.create(rec(1, key="abc"))
    again, created2 = store.create(rec(2, key="abc"))
    assert created and not created2 and again.id == first.id == "j1"
    assert store.get("j2") is None
    _, other_tenant = store.create(rec(3, tenant="u", key="abc"))
    assert other_tenant  # keys are per tenant
    assert store.find("t", "abc").id == "j1" and store.find("t", "zzz") is None
    got = store.get("j1")
    assert got == first and got.job == {"seed": 1} and isinstance(got.submitted_at, float)
    hashed = rec(4, key="h")
    hashed.body_sha256 = "ab" * 32
    store.create(hashed)
    assert store.find("t", "h").body_sha256 == "ab" * 32


def test_transition_many_moves_groups_of_updates_in_items_order(store):
    """Jobs sharing their updates move in one statement, others alone; either way the answer
    keeps the items' order, a job listed twice moves once (its first updates), and the usage
    counters follow every move."""
    n = 1200  # more ids than one IN (...) list holds
    store.create_many([rec(i) for i in range(n)])
    items = [(f"j{i}", {"started_at": 7.0}) for i in reversed(range(0, n, 2))]
    items += [(f"j{i}", {"started_at": float(i)}) for i in range(1, 9, 2)]
    items += [("j0", {"started_at": 99.0}), ("nope", {})]
    moved = store.transition_many(items, {Q}, P, bump_attempts=True)
    expected = [i for i in reversed(range(0, n, 2))] + list(range(1, 9, 2))
    assert [r.id for r in moved] == [f"j{i}" for i in expected]
    assert {r.status for r in moved} == {P} and {r.attempts for r in moved} == {1}
    assert store.get("j0").started_at == 7.0 and store.get("j3").started_at == 3.0
    assert store.get("j9").status == Q
    totals = {str(u.status): u.jobs for u in store.usage("t")}
    assert totals[str(P)] == len(expected) and totals[str(Q)] == n - len(expected)
    again = store.transition_many([("j0", {}), ("j9", {})], {Q}, P)
    assert [r.id for r in again] == ["j9"]  # j0 is no longer IN_QUEUE


def test_create_many_is_one_group_commit(store):
    out = store.create_many([rec(1, key="k"), rec(2), rec(3, key="k"), rec(4, key="z")])
    assert [(r.id, c) for r, c in out] == [("j1", True), ("j2", True), ("j1", False), ("j4", True)]
    assert [r.id for r in store.unfinished()] == ["j1", "j2", "j4"]
    with pytest.raises(sa.exc.IntegrityError):  # j2 exists: the whole group fails, none stays
        store.create_many([rec(5), rec(2)])
    assert store.get("j5") is None
    assert sum(u.jobs for u in store.usage("t")) == 3


def test_transitions_compare_and_set(store):
    store.create_many([rec(1), rec(2), rec(3)])
    started = store.transition("j1", {Q}, P, started_at=1.5)
    assert started.status == P and started.started_at == 1.5
    assert store.transition("j1", {Q}, P) is None  # not from IN_PROGRESS
    done = store.transition("j1", {P}, C, result={"images": []}, usage={"images": 2, "steps": 4})
    assert done.status == C and done.result == {"images": []} and done.terminal
    assert store.transition("j1", {Q, P}, JobStatus.CANCELLED) is None
    assert store.get("j1").status == C
    moved = store.transition_many(
        [("j2", {"started_at": 2.0}), ("j1", {}), ("j3", {}), ("nope", {})],
        {Q},
        P,
        bump_attempts=True,
    )
    assert [r.id for r in moved] == ["j2", "j3"] and moved[0].attempts == 1
    store.update("j2", error_message="slow")
    assert store.get("j2").error_message == "slow"
    for bad in ({"status": "COMPLETED"}, {"id": "x"}, {"nope": 1}):
        with pytest.raises(ValueError):
            store.update("j2", **bad)
    assert [r.id for r in store.unfinished()] == ["j2", "j3"]
    assert store.statuses(["j1", "j2", "zz"]) == {"j1": C, "j2": P}
    many = store.get_many(["j2", "zz", "j1", "j2"])  # unknown left out, repeats once
    assert many == {"j1": store.get("j1"), "j2": store.get("j2")}
    assert store.get_many([]) == {}


def test_usage_totals_follow_every_change(store):
    store.create_many([rec(1), rec(2), rec(3, tenant="u"), rec(4, model="n")])
    store.transition("j1", {Q}, C, usage={"images": 2, "steps": 10, "compute_s": 1.5})
    store.transition("j2", {Q}, JobStatus.FAILED)
    rows = {(u.model_id, u.status): u for u in store.usage("t")}
    assert set(rows) == {("m", C), ("m", JobStatus.FAILED), ("n", Q)}
    assert (rows["m", C].jobs, rows["m", C].images, rows["m", C].steps) == (1, 2, 10)
    assert rows["m", C].compute_s == pytest.approx(1.5)
    assert [u.jobs for u in store.usage("u")] == [1]
    assert store.delete_jobs(["j1", "j2", "j4"]) == 2  # j4 is queued: kept
    assert {(u.model_id, u.status) for u in store.usage("t")} == set(rows)  # totals stay


def test_outbox_commits_with_the_state_and_delivers_once(store):
    store.create_many([rec(1, url="https://h/1"), rec(2, url="https://h/2")])
    moved = store.transition_many([("j1", {"finished_at": 100.0})], {Q}, C, outbox=event)
    (ev,) = store.webhooks_due(100.0, 10)
    assert (ev.job_id, ev.event_type, ev.state) == ("j1", "job.completed", "pending")
    assert ev.payload == {"id": "j1"}
    assert moved[0].id == "j1" and store.webhooks_of("j1") == [ev]

    def broken(r):
        raise RuntimeError("cannot build the event")

    with pytest.raises(RuntimeError):
        store.transition_many([("j2", {})], {Q}, JobStatus.FAILED, outbox=broken)
    assert store.get("j2").status == Q and store.webhooks_of("j2") == []  # all or nothing
    first, second = event(rec(2), 50.0, "job.progress")[0], event(rec(2), 50.0, "job.a")[0]
    store.add_webhooks([first, second])
    assert [e.event_type for e in store.webhooks_of("j2")] == ["job.progress", "job.a"]
    assert [e.id for e in store.webhooks_due(100.0, 10)] == [first.id, second.id, ev.id]
    assert store.webhooks_due(100.0, 10, skip_ids=[first.id], skip_tenants=["x"])[0] == second
    assert store.webhooks_due(100.0, 10, skip_tenants=["t"]) == []
    store.webhook_attempted(ev.id, 101.0, delivered=False, error="503", retry_at=130.0)
    store.webhook_attempted(first.id, 101.0, delivered=True)
    store.webhook_attempted(second.id, 101.0, delivered=False, error="410")
    store.webhook_attempted(first.id, 102.0, delivered=False, retry_at=200.0)  # done: no change
    (again,) = store.webhooks_of("j1")
    assert (again.attempts, again.state, again.last_error) == (1, "pending", "503")
    assert again.next_attempt_at == 130.0
    got = {e.event_type: e for e in store.webhooks_of("j2")}
    assert got["job.progress"].state == OutboxState.DELIVERED and got["job.progress"].attempts == 1
    assert got["job.a"].state == OutboxState.FAILED and got["job.a"].finished_at == 101.0
    assert store.webhooks_due(129.0, 10) == [] and store.webhooks_due(130.0, 10)[0].id == ev.id
    assert store.prune_webhooks(101.5, 1) == 1 and store.prune_webhooks(101.5, 10) == 1
    assert store.webhooks_of("j2") == []


def test_legacy_pending_webhooks_move_to_the_outbox(store):
    store.create_many([rec(1, url="https://h/1"), rec(2)])
    store.transition("j1", {Q}, C, webhook_pending=True, finished_at=5.0)
    assert [r.id for r in store.webhooks_pending()] == ["j1"]
    assert store.migrate_pending_webhooks(event) == 1
    assert store.webhooks_pending() == [] and len(store.webhooks_of("j1")) == 1
    assert store.migrate_pending_webhooks(event) == 0


def test_lease_fences_the_old_holder(opener):
    a, b = opener(), opener()
    a.create(rec(1))
    la = a.acquire_lease("sched", "A", 10.0, now=100.0)
    assert la is not None and la.token == 1 and a.lease("sched") == la
    assert b.acquire_lease("sched", "B", 10.0, now=105.0) is None  # A's is valid
    assert a.acquire_lease("sched", "A", 10.0, now=106.0).token == 1  # its own: same token
    la = a.renew_lease(la, 10.0, now=107.0)
    assert la.expires_at == 117.0
    lb = b.acquire_lease("sched", "B", 10.0, now=118.0)  # expired: taken over
    assert lb is not None and lb.token == 2 and b.lease("sched").holder == "B"
    with pytest.raises(FencedOut) as e:  # A's writes are refused and change nothing
        a.transition("j1", {Q}, P)
    assert e.value.token == 1 and e.value.current.token == 2 and "stale" in str(e.value)
    with pytest.raises(FencedOut):
        a.create(rec(9))
    with pytest.raises(FencedOut):
        a.renew_lease(la, 10.0, now=119.0)
    a.release_lease(la)  # taken over: nothing happens
    assert b.get("j1").status == Q and b.get("j9") is None and b.lease("sched").token == 2
    assert b.transition("j1", {Q}, P) is not None
    b.release_lease(lb)  # released: a successor need not wait for the expiry
    c = opener()
    assert c.acquire_lease("sched", "C", 10.0, now=119.0).token == 3


def test_adapters(store):
    r = AdapterRecord("a1", "m", "tiny://x", "d", "api", "pending", registered_at=3.0)
    store.put_adapter(r)
    store.put_adapter(AdapterRecord("a0", "m", "tiny://y", "", "api", "ready", registered_at=1.0))
    ready = AdapterRecord("a1", "m", "tiny://x", "new", "api", "ready", registered_at=4.0)
    store.put_adapter(ready)  # replaced
    assert list(store.adapters()) == ["a0", "a1"] and store.adapters()["a1"] == ready
    assert store.delete_adapter("a1") and not store.delete_adapter("a1")


def test_retention_methods(store):
    store.create_many([rec(i, key=f"k{i}", url="https://h/x") for i in range(1, 6)])
    for i, status in ((1, C), (2, JobStatus.FAILED), (3, C)):
        store.transition(f"j{i}", {Q}, status, finished_at=float(10 * i), result={"images": []})
    owed = [("j4", {"finished_at": 5.0, "result": {"images": []}})]
    store.transition_many(owed, {Q}, C, outbox=event)  # its webhook is still owed
    assert [r.id for r in store.expired_jobs(25.0, 10)] == ["j1", "j2"]
    assert [r.id for r in store.expired_jobs(100.0, 2)] == ["j1", "j2"]
    assert [r.id for r in store.outputs_to_expire(100.0, 10)] == ["j4", "j1", "j3"]
    store.mark_outputs_deleted(["j4", "j1"], at=77.0)
    assert store.get("j1").result == {"images": [], "outputs_deleted_at": 77.0}
    assert [r.id for r in store.outputs_to_expire(100.0, 10)] == ["j3"]
    assert store.expire_idempotency_keys(3.5, 10, dry_run=True) == 3
    assert (
        store.expire_idempotency_keys(3.5, 2) == 2 and store.expire_idempotency_keys(3.5, 10) == 1
    )
    assert store.find("t", "k1") is None and store.get("j1") is not None
    assert store.find("t", "k4").id == "j4"
    assert store.delete_jobs(["j1", "j5"]) == 1 and store.get("j1") is None
    assert store.statuses(["j1", "j4", "j5"]) == {"j4": C, "j5": Q}


# -- PostgreSQL: several writers at once, the lease between processes' schedulers -----------
@pytest.fixture
def pg_store(pg_url) -> Iterator[Callable[[], SQLJobStore]]:
    opened: list[SQLJobStore] = []

    def make() -> SQLJobStore:
        engine = engine_for(pg_url)
        schema.upgrade(engine)
        opened.append(SQLJobStore(engine))
        return opened[-1]

    yield make
    for s in opened:
        s.close()


def test_pg_concurrent_writers_keep_keys_and_totals_exact(pg_store):
    store = pg_store()
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def writer(w: int) -> None:
        try:
            barrier.wait()
            for n in range(20):  # every writer tries the same 20 keys, and 20 jobs of its own
                store.create_many([rec(f"{w}-{n}", key=f"k{n}", at=n), rec(f"{w}-own-{n}", at=n)])
                store.transition_many(
                    [(f"j{w}-own-{n}", {}), (f"j0-{n}", {})], {Q}, C, bump_attempts=True
                )
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    keyed = [store.find("t", f"k{n}") for n in range(20)]
    assert all(r is not None for r in keyed)  # one job per key, whoever won
    moved = sum(1 for r in keyed if r.id.startswith("j0-"))  # writer 0's keyed jobs completed
    totals = {u.status: u.jobs for u in store.usage("t")}
    assert totals == {C: 120 + moved, Q: 20 - moved} if moved < 20 else {C: 140}
    assert len(store.unfinished()) == 20 - moved
    assert all(store.get(f"j{w}-own-{n}").attempts == 1 for w in range(6) for n in range(20))


def test_pg_second_scheduler_waits_then_takes_over_and_fences(pg_store):
    a, b = pg_store(), pg_store()
    lost: list[FencedOut] = []
    clock = [1000.0]
    opts = {"ttl_s": 5.0, "renew_s": 0.05, "on_lost": lost.append, "clock": lambda: clock[0]}
    keeper_a, keeper_b = LeaseKeeper(a, "sched", **opts), LeaseKeeper(b, "sched", **opts)

    async def scenario() -> None:
        la = await keeper_a.acquire()
        standby = asyncio.create_task(keeper_b.acquire())
        await asyncio.sleep(0.3)
        assert not standby.done()  # the standby waits while A's lease is valid
        clock[0] += 6.0  # A stalls past its TTL
        lb = await asyncio.wait_for(standby, 30)
        assert lb.token == la.token + 1
        with pytest.raises(FencedOut):
            a.create(rec(1))
        holding = asyncio.create_task(keeper_a.hold())
        await asyncio.wait_for(holding, 30)  # A's renewal is refused: on_lost, then it stops
        assert len(lost) == 1 and lost[0].current.holder == keeper_b.holder
        b.create(rec(2))

    asyncio.run(scenario())
    assert a.get("j1") is None and a.get("j2") is not None


def test_pg_takeover_waits_for_writes_in_flight(pg_store):
    """A write transaction that passed the fence check commits before the takeover does;
    every later write of the old holder is refused."""
    a, b = pg_store(), pg_store()
    a.acquire_lease("sched", "A", 1.0, now=0.0)
    inside, release = threading.Event(), threading.Event()

    def slow_outbox(r):
        inside.set()
        release.wait(10)
        return []

    a.create(rec(1))
    writer = threading.Thread(
        target=lambda: a.transition_many([("j1", {})], {Q}, P, outbox=slow_outbox)
    )
    writer.start()
    assert inside.wait(10)
    taken: list = []
    taker = threading.Thread(target=lambda: taken.append(b.acquire_lease("sched", "B", 5.0, 2.0)))
    taker.start()
    taker.join(0.5)
    assert taker.is_alive()  # blocked behind the write in flight
    release.set()
    writer.join(10)
    taker.join(10)
    assert taken[0].token == 2 and b.get("j1").status == P
    with pytest.raises(FencedOut):
        a.transition("j1", {P}, C)
