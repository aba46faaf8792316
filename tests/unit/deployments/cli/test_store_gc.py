"""``genmedia store gc``: the dry run lists and deletes nothing, the real run deletes rows and
files together, and a missing job store is a clear error without a traceback."""

from __future__ import annotations

import os
import time

import yaml
from typer.testing import CliRunner

from genmedia.deployments.cli.main import app
from genmedia.deployments.store.jobs import JobRecord, JobStatus
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.models.catalog import load_catalog
from tests.unit.deployments.store.stores import sqlite_store


def catalog_file(tmp_path) -> str:
    data = load_catalog().model_dump(mode="json", exclude_none=True)
    data["server"]["scheduler"]["job_store"] = str(tmp_path / "jobs.sqlite")
    data["server"]["storage"] = {"kind": "local", "dir": str(tmp_path / "files")}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def old_job(tmp_path) -> None:
    store = sqlite_store(tmp_path / "jobs.sqlite")
    long_ago = time.time() - 40 * 86_400
    store.create(JobRecord("j1", "t", "m", "batch", JobStatus.IN_QUEUE, {}, long_ago))
    store.transition(
        "j1",
        {JobStatus.IN_QUEUE},
        JobStatus.COMPLETED,
        finished_at=long_ago,
        result={"images": [{"key": "t/2026/01/01/j1/0.png"}]},
    )
    store.close()
    storage = LocalDirStorage(tmp_path / "files")
    storage.put("t/2026/01/01/j1/0.png", b"p" * 2048, "image/png")
    storage.put("t/uploads/upl_old.png", b"u", "image/png")
    os.utime(storage.root / "t/uploads/upl_old.png", (long_ago, long_ago))


def test_dry_run_lists_and_deletes_nothing(tmp_path):
    cat = catalog_file(tmp_path)
    old_job(tmp_path)
    r = CliRunner().invoke(app, ["store", "gc", "--dry-run", "--catalog", cat])
    assert r.exit_code == 0, r.output
    assert "would delete (dry run)" in r.output
    assert "1 jobs" in r.output and "j1" in r.output and "1 files" in r.output
    assert (tmp_path / "files/t/2026/01/01/j1/0.png").exists()
    store = sqlite_store(tmp_path / "jobs.sqlite")
    assert store.get("j1") is not None
    store.close()


def test_gc_deletes_rows_and_files(tmp_path):
    cat = catalog_file(tmp_path)
    old_job(tmp_path)
    r = CliRunner().invoke(app, ["store", "gc", "--catalog", cat])
    assert r.exit_code == 0, r.output
    assert "deleted" in r.output
    assert not (tmp_path / "files/t/2026").exists()
    assert not (tmp_path / "files/t/uploads/upl_old.png").exists()
    store = sqlite_store(tmp_path / "jobs.sqlite")
    assert store.get("j1") is None
    store.close()


def test_a_missing_job_store_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["store", "gc", "--catalog", catalog_file(tmp_path)])
    assert r.exit_code == 2
    assert "no job store at" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "jobs.sqlite").exists()  # gc never creates one
