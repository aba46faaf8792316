"""The webhook outbox in the job store: written with the job's state (all or nothing), still due
after a kill between commit and delivery, one delivery id across retries, legacy rows moved."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from genmedia.deployments.store.jobs import (
    JobRecord,
    JobStatus,
    OutboxEvent,
    OutboxState,
)
from tests.unit.deployments.store.stores import sqlite_store


def rec(i, tenant="t", url="https://hooks.example.com/h"):
    return JobRecord(
        id=f"j{i}",
        tenant=tenant,
        model_id="m",
        priority="batch",
        status=JobStatus.IN_QUEUE,
        job={"seed": i},
        submitted_at=float(i),
        webhook_url=url,
    )


def terminal_event(r: JobRecord, now: float = 100.0) -> list[OutboxEvent]:
    if not r.webhook_url:
        return []
    kind = f"job.{str(r.status).lower()}"
    payload = {"type": kind, "request_id": r.id, "status": str(r.status)}
    return [OutboxEvent(r.id, r.tenant, r.webhook_url, kind, payload, now, next_attempt_at=now)]


def test_event_commits_with_the_terminal_state(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    store.create_many([rec(1), rec(2), rec(3, url=None)])
    store.transition("j2", {JobStatus.IN_QUEUE}, JobStatus.CANCELLED)
    moved = store.transition_many(
        [("j1", {"finished_at": 100.0}), ("j2", {}), ("j3", {})],
        {JobStatus.IN_QUEUE},
        JobStatus.COMPLETED,
        outbox=terminal_event,
    )
    assert [r.id for r in moved] == ["j1", "j3"]  # j2 was final already: no event either
    (ev,) = store.webhooks_due(100.0, 10)
    assert (ev.job_id, ev.event_type, ev.state, ev.attempts) == (
        "j1",
        "job.completed",
        "pending",
        0,
    )
    assert ev.payload == {"type": "job.completed", "request_id": "j1", "status": "COMPLETED"}
    assert ev.id.startswith("msg_") and store.webhooks_of("j2") == []
    assert store.webhooks_of("j1") == [ev]


def test_a_failing_event_rolls_the_state_back(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    store.create_many([rec(1), rec(2)])

    def broken(r: JobRecord) -> list[OutboxEvent]:
        if r.id == "j2":
            raise RuntimeError("cannot build the event")
        return terminal_event(r)

    with pytest.raises(RuntimeError):
        store.transition_many(
            [("j1", {}), ("j2", {})], {JobStatus.IN_QUEUE}, JobStatus.FAILED, outbox=broken
        )
    assert store.get("j1").status == JobStatus.IN_QUEUE  # all or nothing
    assert store.webhooks_of("j1") == [] and store.usage("t")[0].status == JobStatus.IN_QUEUE


def test_kill_between_commit_and_delivery_keeps_the_event(tmp_path):
    """A process commits a terminal state and is killed before any delivery: the reopened store
    still owes the event, with the delivery id it was written with."""
    path = tmp_path / "jobs.sqlite"
    sqlite_store(path).create(rec(1))
    code = textwrap.dedent(
        f"""
        import os
        from genmedia.deployments.store.jobs import JobStatus
        from tests.unit.deployments.store.stores import sqlite_store
        from tests.unit.deployments.store.test_outbox import terminal_event
        store = sqlite_store({str(path)!r})
        store.transition_many([("j1", {{}})], {{JobStatus.IN_QUEUE}}, JobStatus.COMPLETED,
                              outbox=terminal_event)
        print(store.webhooks_of("j1")[0].id, flush=True)
        os.kill(os.getpid(), 9)  # no close, no delivery
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr
    written_id = run.stdout.strip()
    again = sqlite_store(path)
    assert again.get("j1").status == JobStatus.COMPLETED
    (ev,) = again.webhooks_due(1e12, 10)
    assert ev.id == written_id and ev.job_id == "j1" and ev.state == OutboxState.PENDING


def test_retries_keep_the_id_and_count(tmp_path):
    path = tmp_path / "jobs.sqlite"
    store = sqlite_store(path)
    store.create(rec(1))
    store.transition("j1", {JobStatus.IN_QUEUE}, JobStatus.FAILED)  # no event: outbox not given
    store.add_webhooks(terminal_event(store.get("j1")))
    (ev,) = store.webhooks_due(100.0, 10)
    store.webhook_attempted(
        ev.id, 101.0, delivered=False, error="receiver answered 503", retry_at=103.0
    )
    assert store.webhooks_due(102.0, 10) == []  # not due before its backoff
    store.close()
    store = sqlite_store(path)  # a restart keeps the schedule and the id
    (again,) = store.webhooks_due(103.0, 10)
    assert (again.id, again.attempts, again.last_error) == (ev.id, 1, "receiver answered 503")
    store.webhook_attempted(ev.id, 104.0, delivered=True)
    (done,) = store.webhooks_of("j1")
    assert (done.id, done.state, done.attempts, done.finished_at) == (ev.id, "delivered", 2, 104.0)
    store.webhook_attempted(ev.id, 105.0, delivered=False, error="late")  # an outcome is final
    assert store.webhooks_of("j1")[0].state == OutboxState.DELIVERED
    assert store.webhooks_due(1e12, 10) == []


def test_given_up_events_fail_and_are_pruned(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    store.create_many([rec(1), rec(2)])
    for j in ("j1", "j2"):
        store.add_webhooks(terminal_event(store.get(j)))
    a, b = store.webhooks_due(100.0, 10)
    store.webhook_attempted(a.id, 110.0, delivered=False, error="receiver answered 410")
    store.webhook_attempted(b.id, 200.0, delivered=True)
    assert store.webhooks_of(a.job_id)[0].state == OutboxState.FAILED
    assert store.prune_webhooks(finished_before=150.0, limit=10) == 1  # only the older outcome
    assert store.webhooks_of(a.job_id) == [] and len(store.webhooks_of(b.job_id)) == 1


def test_due_skips_events_in_flight_and_full_tenants(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    store.create_many([rec(1, "a"), rec(2, "a"), rec(3, "b")])
    for j in ("j1", "j2", "j3"):
        store.add_webhooks(terminal_event(store.get(j), now=float(j[1])))
    first = store.webhooks_due(100.0, 10)
    assert [e.job_id for e in first] == ["j1", "j2", "j3"]  # earliest first
    assert [e.job_id for e in store.webhooks_due(100.0, 1)] == ["j1"]
    assert [e.job_id for e in store.webhooks_due(100.0, 10, skip_ids=[first[0].id])] == ["j2", "j3"]
    assert [e.job_id for e in store.webhooks_due(100.0, 10, skip_tenants=["a"])] == ["j3"]


def test_legacy_webhook_pending_rows_move_into_the_outbox(tmp_path):
    """A store written before the outbox owes webhooks through jobs.webhook_pending."""
    path = tmp_path / "jobs.sqlite"
    store = sqlite_store(path)
    store.create_many([rec(1), rec(2)])
    store.transition_many([("j1", {}), ("j2", {})], {JobStatus.IN_QUEUE}, JobStatus.COMPLETED)
    store.close()
    with sqlite3.connect(path) as db:  # what the previous scheduler left
        db.execute("UPDATE jobs SET webhook_pending = 1 WHERE id = 'j1'")
    store = sqlite_store(path)
    assert [r.id for r in store.webhooks_pending()] == ["j1"]
    assert store.migrate_pending_webhooks(terminal_event) == 1
    assert store.webhooks_pending() == [] and store.migrate_pending_webhooks(terminal_event) == 0
    (ev,) = store.webhooks_due(1e12, 10)
    assert ev.job_id == "j1" and ev.event_type == "job.completed"
