"""Retention: rows and files deleted together, usage totals kept, keys forgotten, uploads and
inputs expired, work bounded per sweep."""

from __future__ import annotations

import os
import time

import pytest

from genmedia.deployments.store.jobs import JobRecord, JobStatus
from genmedia.deployments.store.outputs import output_prefix
from genmedia.deployments.store.retention import Sweeper
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.models.server_config import RetentionSettings
from tests.unit.deployments.store.stores import sqlite_store

DAY = 86_400.0
NOW = 1_800_000_000.0  # 2027-01-15


def finished_job(store, storage, i, *, tenant="t", finished_at, key=None, status="COMPLETED"):
    """A job that ran and finished at ``finished_at``, with two outputs (image + sidecar) and
    an inline input image stored as the worker and the gateway store them."""
    jid = f"j{i}"
    store.create(
        JobRecord(
            id=jid,
            tenant=tenant,
            model_id="m",
            priority="batch",
            status=JobStatus.IN_QUEUE,
            job={"extra": {"inputs": {"image": f"{tenant}/inputs/{jid}/image"}}},
            submitted_at=finished_at - 10,
            idempotency_key=key,
        )
    )
    store.transition(jid, {JobStatus.IN_QUEUE}, JobStatus.IN_PROGRESS, started_at=finished_at - 5)
    storage.put(f"{tenant}/inputs/{jid}/image", b"i" * 10, "application/octet-stream")
    base = f"{tenant}/{output_prefix(jid, finished_at)}"
    storage.put(f"{base}/0.png", b"p" * 100, "image/png")
    storage.put(f"{base}/0.json", b"{}", "application/json")
    updates: dict = {"finished_at": finished_at}
    if status == "COMPLETED":
        updates["result"] = {"images": [{"key": f"{base}/0.png"}]}
        updates["usage"] = {"images": 1, "steps": 4, "compute_s": 0.5}
    else:
        updates["error_type"] = "generation_failed"
    store.transition(jid, {JobStatus.IN_PROGRESS}, JobStatus(status), **updates)
    return jid


@pytest.fixture
def env(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    storage = LocalDirStorage(tmp_path / "files")
    yield store, storage
    store.close()


def sweeper(store, storage, **settings) -> Sweeper:
    return Sweeper(store, storage, RetentionSettings(**settings), clock=lambda: NOW)


def keys(storage) -> set[str]:
    return {o.key for o in storage.list_files("")}


def test_expired_jobs_go_with_their_files_and_usage_totals_stay(env):
    store, storage = env
    old = finished_job(store, storage, 1, finished_at=NOW - 31 * DAY)
    failed = finished_job(store, storage, 2, finished_at=NOW - 40 * DAY, status="FAILED")
    new = finished_job(store, storage, 3, finished_at=NOW - 1 * DAY)
    usage_before = store.usage("t")

    report = sweeper(store, storage).sweep()

    assert store.get(old) is None and store.get(failed) is None and store.get(new) is not None
    assert all(new in k for k in keys(storage))  # only the recent job's files are left
    assert report.classes["jobs"].items == 2 and report.classes["jobs"].files == 6
    assert store.usage("t") == usage_before  # deleting rows never changes usage
    old_day = time.strftime("%Y/%m/%d", time.gmtime(NOW - 40 * DAY))
    assert not (storage.root / "t" / old_day).exists()  # emptied folders go too


def test_unfinished_jobs_and_owed_webhooks_are_kept(env):
    store, storage = env
    jid = finished_job(store, storage, 1, finished_at=NOW - 60 * DAY)
    store.update(jid, webhook_pending=True)
    store.create(
        JobRecord("q", "t", "m", "batch", JobStatus.IN_QUEUE, {}, submitted_at=NOW - 90 * DAY)
    )
    sweeper(store, storage).sweep()
    assert store.get(jid) is not None and store.get("q") is not None


def test_idempotency_keys_expire_and_the_key_can_be_used_again(env):
    store, storage = env
    finished_job(store, storage, 1, finished_at=NOW - 2 * DAY, key="k-old")
    finished_job(store, storage, 2, finished_at=NOW - 3600, key="k-new")

    dry = sweeper(store, storage).sweep(dry_run=True)
    assert dry.classes["idempotency_keys"].items == 1 and store.find("t", "k-old") is not None

    report = sweeper(store, storage).sweep()
    assert report.classes["idempotency_keys"].items == 1
    assert store.find("t", "k-old") is None and store.find("t", "k-new").id == "j2"
    assert store.get("j1") is not None  # the job stays
    again = JobRecord("j9", "t", "m", "batch", JobStatus.IN_QUEUE, {}, NOW, idempotency_key="k-old")
    assert store.create(again) == (again, True)


def test_outputs_sooner_than_jobs_keep_the_row_and_say_so(env):
    store, storage = env
    jid = finished_job(store, storage, 1, finished_at=NOW - 8 * DAY)
    s = sweeper(store, storage, outputs_hours=7 * 24, jobs_hours=30 * 24)
    report = s.sweep()
    assert report.classes["outputs"].items == 1 and report.classes["outputs"].files == 2
    rec = store.get(jid)
    assert rec is not None and rec.result["outputs_deleted_at"] == NOW
    assert not any(k.endswith(".png") for k in keys(storage))
    assert s.sweep().classes["outputs"].items == 0  # done once


def test_old_uploads_and_inputs_of_finished_or_unknown_jobs_expire(env):
    store, storage = env
    storage.put("t/uploads/upl_old.png", b"o", "image/png")
    storage.put("t/uploads/upl_new.png", b"n", "image/png")
    storage.put("t/inputs/gone/image", b"g", "application/octet-stream")  # a refused request
    store.create(JobRecord("q", "t", "m", "batch", JobStatus.IN_QUEUE, {}, NOW - 3 * DAY))
    storage.put("t/inputs/q/image", b"q", "application/octet-stream")  # still queued
    done = finished_job(store, storage, 1, finished_at=NOW - 2 * DAY)
    day_old = NOW - 2 * DAY
    for key in ("t/uploads/upl_old.png", "t/inputs/gone/image", "t/inputs/q/image"):
        os.utime(storage.root / key, (day_old, day_old))
    os.utime(storage.root / f"t/inputs/{done}/image", (day_old, day_old))
    os.utime(storage.root / "t/uploads/upl_new.png", (NOW - 3600, NOW - 3600))

    report = sweeper(store, storage).sweep()

    left = keys(storage)
    assert "t/uploads/upl_new.png" in left and "t/uploads/upl_old.png" not in left
    assert "t/inputs/q/image" in left  # its job has not run yet
    assert "t/inputs/gone/image" not in left and f"t/inputs/{done}/image" not in left
    assert report.classes["uploads"].items == 1 and report.classes["inputs"].items == 2
    assert store.get(done) is not None  # the job's row and outputs stay until jobs_hours


def test_work_per_sweep_is_bounded(env):
    store, storage = env
    for i in range(5):
        finished_job(store, storage, i, finished_at=NOW - 40 * DAY + i)
    s = sweeper(store, storage, max_per_sweep=2)
    first = s.sweep()
    assert first.classes["jobs"].items == 2 and first.more
    s.sweep()
    last = s.sweep()
    assert last.classes["jobs"].items == 1 and not last.more
    assert keys(storage) == set()


def test_a_dry_run_deletes_nothing(env):
    store, storage = env
    finished_job(store, storage, 1, finished_at=NOW - 40 * DAY)
    before = keys(storage)
    report = sweeper(store, storage).sweep(dry_run=True)
    assert report.dry_run and report.classes["jobs"].items == 1
    assert report.classes["jobs"].bytes == 112 and keys(storage) == before
    assert store.get("j1") is not None
