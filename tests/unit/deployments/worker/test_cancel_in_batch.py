"""A job cancelled while its shared batch runs (issue 15, item 5), on the worker's side without
Ray: its outputs are not stored, it keeps its share of the compute seconds (the scheduler meters
them), the other jobs of the batch are stored as usual; ``delete_outputs`` removes what was
stored when the cancel came too late."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from genmedia.deployments.protocol import ProgressEvent
from genmedia.deployments.store.outputs import delete_outputs, sidecar_key
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.worker.batch import run_batch_call, store_batch
from genmedia.models.runner import LoadedModel
from tests.unit.deployments.worker.test_batch import _context, _job, _request, model

__all__ = ["model"]  # the module-scoped tiny model fixture


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_job_cancelled_during_the_call_stores_nothing_but_keeps_its_compute(
    model: LoadedModel, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    jobs = [_job(model, "r1", num_images=2), _job(model, "r2")]
    req = _request(jobs)
    ctx.cancelled_jobs[req.batch_id] = set()  # the worker deployment opens it per batch

    def emit(event: ProgressEvent) -> None:  # the scheduler's cancel_jobs, mid-call
        if event.step == 1:
            ctx.cancelled_jobs[req.batch_id].add("r1")

    result = run_batch_call(ctx, model, req, threading.Event(), emit)
    by_job = {j.job_id: j for j in result.jobs}
    assert by_job["r1"].outputs == [] and len(by_job["r2"].outputs) == 1
    # both keep their share of the call's compute (by outputs: 2 of 3 and 1 of 3)
    assert by_job["r1"].compute_s > 0 and by_job["r2"].compute_s > 0
    assert abs(by_job["r1"].compute_s - 2 * by_job["r2"].compute_s) < 1e-9
    assert result.batch_images == 3
    files = _files(tmp_path)
    assert files and all(f.startswith("tenant-1/") for f in files)  # only r2's
    assert not any("/r1/" in f for f in files)


def test_store_batch_skips_cancelled_jobs(model: LoadedModel, tmp_path: Path) -> None:
    req = _request([_job(model, "r1"), _job(model, "r2")])
    pixels = np.zeros((64, 64, 3), np.uint8)
    storage = LocalDirStorage(tmp_path)
    stored = store_batch(storage, req, [[pixels], [pixels]], now=0.0, skip={"r2"})
    assert [len(s) for s in stored] == [1, 0]
    assert all(f.startswith("tenant-0/") for f in _files(tmp_path))


def test_delete_outputs_removes_files_and_sidecars(model: LoadedModel, tmp_path: Path) -> None:
    req = _request([_job(model, "r1", num_images=2)])
    pixels = np.zeros((64, 64, 3), np.uint8)
    storage = LocalDirStorage(tmp_path)
    (stored,) = store_batch(storage, req, [[pixels, pixels]], now=0.0)
    assert len(_files(tmp_path)) == 4 and sidecar_key(stored[0].key).endswith("/0.json")
    assert delete_outputs(storage, stored) == 4
    assert _files(tmp_path) == []
    assert delete_outputs(storage, stored) == 0  # already gone: nothing raised
