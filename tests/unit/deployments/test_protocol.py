"""The typed messages between gateway, scheduler and worker (``deployments/protocol.py``): the
JSON shape of a job's status, adapter records, and that every message survives pickling (what
Ray does to them between processes)."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from genmedia.deployments.protocol import (
    AdapterCheck,
    AdapterDeleted,
    AdapterError,
    AdapterInfo,
    AdapterRecord,
    BatchRequest,
    CancelOutcome,
    JobError,
    JobOutputs,
    JobStatus,
    JobStatusView,
    PriorityClass,
    ProgressEvent,
    Rejection,
    StepProgress,
    StoredOutput,
    Submission,
    SubmitAccepted,
    UsageRow,
    WorkerResult,
    WorkerTimings,
)
from genmedia.models.catalog import load_catalog
from genmedia.models.params import AdapterUse, GenerateRequest, resolve_request

BASE = JobStatusView(
    request_id="r1",
    model="sd15-tiny",
    status=JobStatus.IN_QUEUE,
    priority=PriorityClass.BATCH,
    submitted_at=1.5,
    tenant="dev",
)


def test_a_queued_job_shows_position_and_eta_even_when_unknown() -> None:
    assert BASE.as_dict() == {
        "request_id": "r1",
        "model": "sd15-tiny",
        "status": "IN_QUEUE",
        "priority": "batch",
        "submitted_at": 1.5,
        "tenant": "dev",
    }
    queued = replace(BASE, queue_position=2)
    assert queued.as_dict(tenant=False) == {
        "request_id": "r1",
        "model": "sd15-tiny",
        "status": "IN_QUEUE",
        "priority": "batch",
        "submitted_at": 1.5,
        "queue_position": 2,
        "eta_s": None,
    }


def test_running_finished_and_keepalive_shapes() -> None:
    running = replace(BASE, status=JobStatus.IN_PROGRESS, progress=StepProgress(3, 8))
    assert running.as_dict()["progress"] == {"step": 3, "total": 8}
    assert "finished_at" not in running.as_dict()
    done = replace(BASE, status=JobStatus.COMPLETED, finished_at=9.0, result={"images": []})
    assert done.as_dict()["result"] == {"images": []} and done.as_dict()["finished_at"] == 9.0
    assert "result" not in done.as_dict(result=False)
    failed = replace(
        BASE, status=JobStatus.FAILED, finished_at=9.0, error=JobError("worker_lost", "gone")
    )
    assert failed.as_dict()["error"] == {"type": "worker_lost", "message": "gone"}
    assert "result" not in failed.as_dict()
    beat = replace(running, keepalive=True).as_dict()
    assert next(iter(beat.items())) == ("type", "keepalive")


def test_enums_compare_as_their_strings() -> None:
    assert PriorityClass.INTERACTIVE == "interactive" and PriorityClass.INTERACTIVE.rank == 0
    assert PriorityClass("batch").rank == 1
    assert CancelOutcome("already_finished") is CancelOutcome.ALREADY_FINISHED
    assert f"{JobStatus.EXPIRED}" == "EXPIRED"


def test_adapter_record_hides_the_worker_path_and_round_trips_the_store() -> None:
    info = AdapterInfo(path="/w/a.safetensors", bytes=10, sha256="ab", rank=4, tensors=8)
    pending = AdapterRecord("a", "m", "tiny://sd15/a", "", origin="catalog", status="pending")
    assert pending.public(admin=True) == {
        "id": "a",
        "base_model": "m",
        "source": "tiny://sd15/a",
        "description": "",
        "origin": "catalog",
        "status": "pending",
    }
    assert "source" not in pending.public()  # admin tenants only
    ready = replace(pending, origin="api", status="ready", registered_at=5.0, info=info)
    public = ready.public()
    assert "path" not in public and public["rank"] == 4 and public["registered_at"] == 5.0
    stored = ready.stored()
    assert stored["path"] == "/w/a.safetensors" and "origin" not in stored
    assert AdapterRecord.from_stored(stored) == ready
    assert AdapterDeleted("a").as_dict() == {"id": "a", "deleted": True}


def test_batch_request_multiplex_id_names_its_adapter_set() -> None:
    req = BatchRequest("b", "m", PriorityClass.BATCH, jobs=[], tenants={})
    assert req.multiplex_id == "m"
    req.adapters = [AdapterUse("z", 1.0, "s"), AdapterUse("a", 0.5, "s")]
    assert req.multiplex_id == "m@a+z"


@pytest.fixture(scope="module")
def job():
    entry = load_catalog().model("sd15-tiny")
    assert entry is not None
    job, errors = resolve_request(entry, GenerateRequest(prompt="x", seed=1), request_id="r1")
    assert not errors and job is not None
    return job


def test_every_message_pickles(job) -> None:
    out = StoredOutput("dev/r1/0.png", 1, 64, 64, "image/png", "h")
    timings = WorkerTimings(1.0, 0.5, 0.1, 0.0, 0.2, 0.0, load_s=0.3)
    messages = [
        Submission("dev", "sd15-tiny", PriorityClass.INTERACTIVE, job, deadline_s=3.0),
        SubmitAccepted(True, replace(BASE, queue_position=0)),
        Rejection(429, "rate_limited", "slow down", 2.0),
        UsageRow("sd15-tiny", JobStatus.COMPLETED, 1, 1, 4, 0.5),
        AdapterError(404, "not_found", "adapter_id", "no adapter"),
        AdapterCheck(error="bad keys"),
        BatchRequest("b", "sd15-tiny", PriorityClass.BATCH, [job], {"r1": "dev"}),
        ProgressEvent(1, 4),
        WorkerResult(
            "b", [JobOutputs("r1", [out], 1.0)], 1, timings, (1.0, 2.0), "r", "cpu", {}, []
        ),
        CancelOutcome.CANCELLED,
    ]
    for message in messages:
        assert pickle.loads(pickle.dumps(message)) == message
    assert out.as_record() == {
        "key": "dev/r1/0.png",
        "seed": 1,
        "width": 64,
        "height": 64,
        "content_type": "image/png",
        "sha256": "h",
    }
