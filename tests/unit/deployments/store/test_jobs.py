"""The job store on SQLite: idempotent create, compare-and-set transitions, recovery, usage."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from genmedia.deployments.protocol import AdapterInfo, AdapterRecord, UsageRow
from genmedia.deployments.store.jobs import JobRecord, JobStatus
from genmedia.deployments.store.sql.store import SQLJobStore
from tests.unit.deployments.store.stores import sqlite_store


def rec(i, tenant="t", key=None, status=JobStatus.IN_QUEUE):
    return JobRecord(
        id=f"j{i}",
        tenant=tenant,
        model_id="m",
        priority="batch",
        status=status,
        job={"seed": i},
        submitted_at=float(i),
        idempotency_key=key,
    )


def test_idempotency_key_returns_the_same_job(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    first, created = store.create(rec(1, key="abc"))
    again, created2 = store.create(rec(2, key="abc"))
    assert created and not created2 and again.id == first.id == "j1"
    _, other_tenant = store.create(rec(3, tenant="u", key="abc"))
    assert other_tenant  # keys are per tenant
    assert store.find("t", "abc").id == "j1" and store.find("t", "zzz") is None


def test_terminal_states_are_final(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    store.create(rec(1))
    assert store.transition("j1", {JobStatus.IN_QUEUE}, JobStatus.IN_PROGRESS, started_at=1.0)
    done = store.transition(
        "j1",
        {JobStatus.IN_PROGRESS},
        JobStatus.COMPLETED,
        result={"images": []},
        usage={"images": 1, "steps": 4, "compute_s": 0.5},
    )
    assert done.status == JobStatus.COMPLETED and done.result == {"images": []}
    assert (
        store.transition("j1", {JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS}, JobStatus.CANCELLED)
        is None
    )
    assert store.get("j1").status == JobStatus.COMPLETED


def test_concurrent_transitions_only_one_wins(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    store.create(rec(1))
    wins = []

    def attempt(to):
        if store.transition("j1", {JobStatus.IN_QUEUE}, to) is not None:
            wins.append(to)

    threads = [
        threading.Thread(target=attempt, args=(s,))
        for s in (JobStatus.CANCELLED, JobStatus.IN_PROGRESS) * 8
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_survives_reopen_and_lists_unfinished(tmp_path):
    path = tmp_path / "jobs.sqlite"
    store = sqlite_store(path)
    for i in range(4):
        store.create(rec(i))
    store.transition("j1", {JobStatus.IN_QUEUE}, JobStatus.IN_PROGRESS)
    store.transition("j2", {JobStatus.IN_QUEUE}, JobStatus.FAILED, error_type="x")
    store.update("j3", webhook_pending=True)
    store.close()
    again = sqlite_store(path)
    assert [r.id for r in again.unfinished()] == ["j0", "j1", "j3"]
    assert [r.id for r in again.webhooks_pending()] == ["j3"]


def test_usage_per_model(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    for i in range(3):
        store.create(rec(i))
        store.transition(
            f"j{i}",
            {JobStatus.IN_QUEUE},
            JobStatus.COMPLETED,
            usage={"images": 2, "steps": 8, "compute_s": 0.25},
        )
    store.create(rec(9, tenant="other"))
    rows = store.usage("t")
    assert rows == [
        UsageRow(
            model_id="m", status=JobStatus.COMPLETED, jobs=3, images=6, steps=24, compute_s=0.75
        )
    ]


def test_adapters_round_trip(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    info = AdapterInfo(path="/w/a.safetensors", bytes=10, sha256="ab", rank=4, tensors=8)
    record = AdapterRecord(
        id="a",
        base_model="m",
        source="/src/a.safetensors",
        description="",
        origin="api",
        status="ready",
        registered_at=12.5,
        info=info,
    )
    store.put_adapter(record)
    assert store.adapters() == {"a": record}
    assert "path" not in record.public() and record.public()["sha256"] == "ab"
    assert store.delete_adapter("a") and store.adapters() == {}


def test_transition_many_is_one_guarded_write(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    for i in range(3):
        store.create(rec(i))
    store.transition("j1", {JobStatus.IN_QUEUE}, JobStatus.CANCELLED)
    moved = store.transition_many(
        [(f"j{i}", {"started_at": 5.0}) for i in range(3)],
        {JobStatus.IN_QUEUE},
        JobStatus.IN_PROGRESS,
        bump_attempts=True,
    )
    assert [r.id for r in moved] == ["j0", "j2"]  # the cancelled one stays cancelled
    assert all(r.attempts == 1 and r.started_at == 5.0 for r in moved)
    assert store.get("j1").status == JobStatus.CANCELLED


AGGREGATE = (
    "SELECT model_id, status, COUNT(*) AS jobs, "
    "SUM(COALESCE(json_extract(usage, '$.images'), 0)) AS images, "
    "SUM(COALESCE(json_extract(usage, '$.steps'), 0)) AS steps, "
    "SUM(COALESCE(json_extract(usage, '$.compute_s'), 0.0)) AS compute_s "
    "FROM jobs WHERE tenant = ? GROUP BY model_id, status ORDER BY model_id, status"
)


def scanned(store: SQLJobStore, tenant: str) -> list[UsageRow]:
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(AGGREGATE, (tenant,)).mappings().fetchall()
    return [
        UsageRow(
            r["model_id"],
            JobStatus(r["status"]),
            r["jobs"],
            r["images"],
            r["steps"],
            r["compute_s"],
        )
        for r in rows
    ]


def test_usage_counters_equal_a_scan_of_every_job_after_any_transitions(tmp_path):
    import random

    rng = random.Random(3)
    store = sqlite_store(tmp_path / "jobs.sqlite")
    store.create_many([rec(i, tenant=rng.choice("tu")) for i in range(60)])
    states = list(JobStatus)
    for _ in range(200):
        job_id = f"j{rng.randrange(60)}"
        to = rng.choice(states)
        usage = {"images": 1, "steps": 4, "compute_s": 0.5} if to == JobStatus.COMPLETED else {}
        store.transition_many([(job_id, {"usage": usage})], set(states) - {to}, to)
    for tenant in "tu":
        assert store.usage(tenant) == pytest.approx(scanned(store, tenant))


def test_create_many_is_one_transaction_and_a_repeated_key_answers_the_first(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    out = store.create_many([rec(1, key="k"), rec(2, key="k"), rec(3)])
    assert [(r.id, created) for r, created in out] == [("j1", True), ("j1", False), ("j3", True)]
    # a duplicate id fails the whole group: none of it is stored
    with pytest.raises(sa.exc.IntegrityError):
        store.create_many([rec(4), rec(3)])
    assert store.get("j4") is None
