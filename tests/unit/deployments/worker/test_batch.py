"""One batch call on a worker replica without Ray (``worker/batch.py``): progress throttling,
inputs, result building, and whole calls through the step gate on the tiny SD1.5-style model."""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genmedia.deployments.protocol import (
    BatchRequest,
    PriorityClass,
    ProgressEvent,
    StoredOutput,
    WorkerResult,
)
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.worker.batch import (
    AdapterFiles,
    AdapterPins,
    CallTimes,
    ProgressThrottle,
    WorkerContext,
    build_result,
    read_inputs,
    run_batch_call,
    store_batch,
    torch_threads_for,
)
from genmedia.deployments.worker.gate import Cancelled, StepGate
from genmedia.models.media import encode_image
from genmedia.models.params import AdapterUse, GenerateRequest, GenerationJob, resolve_request
from genmedia.models.runner import LoadedModel, load_model
from tests.unit.deployments.worker.tiny import tiny_sd15


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    entry, path = tiny_sd15(tmp_path_factory.mktemp("worker-batch"))
    return load_model(entry, path, "cpu")


def _job(model: LoadedModel, request_id: str, **body: object) -> GenerationJob:
    req = GenerateRequest(prompt="a cat", seed=3, **body)
    job, errors = resolve_request(model.entry, req, request_id=request_id)
    assert not errors and job is not None, errors
    return job


def _request(jobs: list[GenerationJob], priority: str = "batch") -> BatchRequest:
    return BatchRequest(
        batch_id="b1",
        model_id="m",
        priority=PriorityClass(priority),
        jobs=jobs,
        tenants={j.request_id: f"tenant-{i}" for i, j in enumerate(jobs)},
    )


def _context(tmp_path: Path, gate: StepGate | None = None) -> WorkerContext:
    return WorkerContext(
        gate=gate or StepGate(),
        storage=LocalDirStorage(tmp_path),
        device="cpu",
        threads=1,
        replica="r1",
        adapter_files=AdapterFiles(max_bytes=1 << 20),
    )


def test_torch_threads_follow_the_cpu_share() -> None:
    assert [torch_threads_for(n) for n in (0.25, 1, 2.9, 4)] == [1, 1, 2, 4]


def test_torch_threads_leave_the_reserved_cores_of_the_host() -> None:
    # a worker given every core of a 2-core host runs one thread: the other core is the
    # control plane's
    assert torch_threads_for(2, host_cores=2, reserved=1) == 1
    assert torch_threads_for(8, host_cores=32, reserved=1) == 8
    assert torch_threads_for(32, host_cores=32, reserved=2) == 30
    assert torch_threads_for(4, host_cores=1, reserved=1) == 1  # never fewer than one
    assert torch_threads_for(2, host_cores=2, reserved=0) == 2


def test_progress_sends_first_and_last_step_and_at_most_hz_between() -> None:
    throttle = ProgressThrottle(hz=2.0)
    # one step every 0.1 s from t=10: step 1 and 10 always, between them every 0.5 s
    sent = [s for s in range(1, 11) if throttle.due(s, 10, 10.0 + 0.1 * s)]
    assert sent == [1, 6, 10]
    again = ProgressThrottle(hz=2.0)
    assert all(again.due(s, 3, 100.0 + 2.0 * s) for s in (1, 2, 3))  # slow steps: every one


def test_adapter_pins_are_the_other_calls_on_the_same_model() -> None:
    pins = AdapterPins()
    pins.hold("a", "m", {"x"})
    pins.hold("b", "m", {"y"})
    pins.hold("c", "other", {"z"})
    assert pins.others("m", "a") == {"y"}
    pins.drop("b")
    assert pins.others("m", "a") == set()


def test_build_result_shares_compute_by_outputs(model: LoadedModel) -> None:
    jobs = [_job(model, "r1", num_images=1), _job(model, "r2", num_images=3)]
    req = _request(jobs)
    req.adapters = [AdapterUse("style", 0.5, "tiny://sd15/style")]
    stored = [
        [StoredOutput("t/a/0.png", 3, 64, 64, "image/png", "h0")],
        [StoredOutput(f"t/b/{i}.png", 3 + i, 64, 64, "image/png", f"h{i}") for i in range(3)],
    ]
    times = CallTimes(
        compute_s=2.0, device_s=1.5, wait_s=0.25, paused_s=0.5, adapter_load_s=0.1, span=(1, 3)
    )
    result = build_result(
        req, stored, times, store_s=0.2, replica="r1", device="cpu", acceleration={"cache": None}
    )
    assert [(j.job_id, len(j.outputs), j.compute_s) for j in result.jobs] == [
        ("r1", 1, 0.5),
        ("r2", 3, 1.5),
    ]
    assert result.batch_images == 4 and result.compute_span == (1, 3)
    t = result.timings
    assert (t.compute_s, t.device_s, t.wait_s, t.paused_s) == (2.0, 1.5, 0.25, 0.5)
    assert (t.store_s, t.adapter_load_s, t.load_s) == (0.2, 0.1, 0.0)
    assert result.adapters == [("style", 0.5)]  # the source stays on the worker
    assert (result.replica, result.device, result.acceleration) == ("r1", "cpu", {"cache": None})


def test_store_batch_writes_under_each_tenant(model: LoadedModel, tmp_path: Path) -> None:
    jobs = [_job(model, "r1"), _job(model, "r2", num_images=2)]
    req = _request(jobs)
    pixels = np.zeros((64, 64, 3), np.uint8)
    stored = store_batch(LocalDirStorage(tmp_path), req, [[pixels], [pixels, pixels]], now=0.0)
    assert [len(s) for s in stored] == [1, 2]
    assert stored[0][0].key.startswith("tenant-0/") and stored[1][1].key.startswith("tenant-1/")
    sidecar = json.loads((tmp_path / stored[1][1].key.replace(".png", ".json")).read_text())
    assert sidecar["batch"] == "b1" and sidecar["batch_size"] == 3 and sidecar["seed"] == 4


def test_read_inputs(model: LoadedModel, tmp_path: Path) -> None:
    storage = LocalDirStorage(tmp_path)
    assert read_inputs(storage, [_job(model, "r1")]) is None  # text-to-image has none
    job = _job(model, "r2")
    job = replace(job, params=replace(job.params, task="image-to-image"))
    job.extra["inputs"] = {"image": "t/inputs/r2/image"}
    storage.put("t/inputs/r2/image", encode_image(np.full((8, 8, 3), 9, np.uint8)), "image/png")
    (item,) = read_inputs(storage, [job]) or []
    assert isinstance(item["image"], Image.Image) and item["image"].mode == "RGB"
    gone = replace(job, request_id="r3", extra={"inputs": {"image": "t/inputs/r3/image"}})
    with pytest.raises(FileNotFoundError, match="input image of r3 is gone"):
        read_inputs(storage, [gone])


def test_a_whole_call_streams_progress_and_returns_its_outputs(
    model: LoadedModel, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    jobs = [_job(model, "r1"), _job(model, "r2", num_images=2)]
    events: list[ProgressEvent] = []
    result = run_batch_call(ctx, model, _request(jobs), threading.Event(), events.append)
    assert isinstance(result, WorkerResult)
    assert events[0] == ProgressEvent(1, 4) and events[-1] == ProgressEvent(4, 4)
    assert [(j.job_id, len(j.outputs)) for j in result.jobs] == [("r1", 1), ("r2", 2)]
    for j in result.jobs:
        for out in j.outputs:
            data = ctx.storage.get(out.key)
            assert data is not None and Image.open(io.BytesIO(data)).size == (64, 64)
    t = result.timings
    assert t.compute_s > 0 and 0 <= t.device_s <= t.compute_s and t.wait_s >= 0
    assert result.compute_span[0] <= result.compute_span[1]
    assert result.replica == "r1" and result.batch_images == 3
    assert not ctx.gate.busy and ctx.pins.others("m", "") == set()


def test_a_cancelled_call_stops_at_a_step_and_frees_the_gate(
    model: LoadedModel, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    cancel = threading.Event()
    cancel.set()
    events: list[ProgressEvent] = []
    with pytest.raises(Cancelled):
        run_batch_call(ctx, model, _request([_job(model, "r1")]), cancel, events.append)
    assert events == [] and not ctx.gate.busy and ctx.pins.others("m", "") == set()
    assert not list(tmp_path.rglob("*.png"))  # nothing stored


def test_a_batch_call_yields_to_an_interactive_one_between_steps(
    model: LoadedModel, tmp_path: Path
) -> None:
    """While a batch-class call holds the gate, an interactive one runs at its next step
    boundary; the batch call's pause is counted as paused, not computed."""
    gate = StepGate()
    ctx = _context(tmp_path, gate)
    results: dict[str, WorkerResult] = {}
    started = threading.Event()

    def emit(event: ProgressEvent) -> None:
        """The batch call's first step: hold it until the interactive call waits at the gate."""
        if event.step == 1:
            started.set()
            deadline = time.monotonic() + 30
            while not gate.waiters and time.monotonic() < deadline:
                time.sleep(0.005)

    def run(name: str, priority: str, on_event) -> None:
        req = _request([_job(model, name)], priority)
        req.batch_id = name
        results[name] = run_batch_call(ctx, model, req, threading.Event(), on_event)

    bulk = threading.Thread(target=run, args=("bulk", "batch", emit))
    bulk.start()
    assert started.wait(30)
    run("inter", "interactive", lambda e: None)
    bulk.join(60)
    assert gate.preemptions >= 1
    assert results["inter"].compute_span[1] <= results["bulk"].compute_span[1]
    assert results["bulk"].timings.paused_s >= results["inter"].timings.compute_s
