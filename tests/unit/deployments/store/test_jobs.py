"""The SQLite job store: idempotent create, compare-and-set transitions, recovery, usage."""

from __future__ import annotations

import threading

from genmedia.deployments.protocol import AdapterInfo, AdapterRecord, UsageRow
from genmedia.deployments.store.jobs import JobRecord, JobStatus, SQLiteJobStore


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
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    first, created = store.create(rec(1, key="abc"))
    again, created2 = store.create(rec(2, key="abc"))
    assert created and not created2 and again.id == first.id == "j1"
    _, other_tenant = store.create(rec(3, tenant="u", key="abc"))
    assert other_tenant  # keys are per tenant
    assert store.find("t", "abc").id == "j1" and store.find("t", "zzz") is None


def test_terminal_states_are_final(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
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
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
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
    store = SQLiteJobStore(path)
    for i in range(4):
        store.create(rec(i))
    store.transition("j1", {JobStatus.IN_QUEUE}, JobStatus.IN_PROGRESS)
    store.transition("j2", {JobStatus.IN_QUEUE}, JobStatus.FAILED, error_type="x")
    store.update("j3", webhook_pending=True)
    store.close()
    again = SQLiteJobStore(path)
    assert [r.id for r in again.unfinished()] == ["j0", "j1", "j3"]
    assert [r.id for r in again.webhooks_pending()] == ["j3"]


def test_usage_per_model(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
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
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
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
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
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
