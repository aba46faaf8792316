"""Live previews and log lines from a batch call (``worker/batch.py``): only the jobs that ask
get a preview, it is a PNG of at most 64 px, throttled; pauses and gate waits become log lines
on the progress stream."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from genmedia.deployments.protocol import BatchRequest, PriorityClass, ProgressEvent
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.worker.batch import (
    AdapterFiles,
    CallPreviews,
    GatedCall,
    WorkerContext,
    run_batch_call,
)
from genmedia.deployments.worker.gate import StepGate
from genmedia.models.params import GenerateRequest, GenerationJob, resolve_request
from genmedia.models.runner import LoadedModel, load_model
from tests.unit.deployments.worker.tiny import tiny_sd15


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    entry, path = tiny_sd15(tmp_path_factory.mktemp("worker-previews"))
    return load_model(entry, path, "cpu")


def _job(model: LoadedModel, request_id: str, **body: Any) -> GenerationJob:
    job, errors = resolve_request(
        model.entry, GenerateRequest(prompt="a cat", seed=3, **body), request_id=request_id
    )
    assert not errors and job is not None, errors
    return job


def _request(jobs: list[GenerationJob]) -> BatchRequest:
    return BatchRequest(
        batch_id="b1",
        model_id="m",
        priority=PriorityClass.BATCH,
        jobs=jobs,
        tenants={j.request_id: "t" for j in jobs},
    )


def _context(tmp_path: Path) -> WorkerContext:
    return WorkerContext(
        gate=StepGate(),
        storage=LocalDirStorage(tmp_path),
        device="cpu",
        threads=1,
        replica="r1",
        adapter_files=AdapterFiles(max_bytes=1 << 20),
    )


def test_preview_is_opt_in_and_not_part_of_the_batch_key(model: LoadedModel) -> None:
    on, off = _job(model, "a", preview=True), _job(model, "b")
    assert on.extra.get("preview") is True and "preview" not in off.extra
    assert on.batch_key == off.batch_key
    assert CallPreviews.of("sd15", _request([off]), lambda e: None) is None
    assert CallPreviews.of("stable_audio", _request([on]), lambda e: None) is None


def test_a_call_sends_png_previews_of_the_jobs_that_ask(model: LoadedModel, tmp_path: Path) -> None:
    jobs = [_job(model, "plain", num_images=2), _job(model, "seen", preview=True)]
    events: list[ProgressEvent] = []
    run_batch_call(_context(tmp_path), model, _request(jobs), threading.Event(), events.append)
    shown = [e for e in events if e.previews]
    assert shown and shown[0].step == 1  # the first step is always sent
    for event in shown:
        assert set(event.previews) == {"seen"}
        p = event.previews["seen"]
        assert p.step == event.step and max(p.width, p.height) <= 64
        with Image.open(io.BytesIO(p.png)) as img:
            assert img.format == "PNG" and img.size == (p.width, p.height) and img.mode == "RGB"
    # the plain progress events are unchanged
    steps = [e.step for e in events if not e.previews and e.log is None]
    assert steps[0] == 1 and steps[-1] == 4 and steps == sorted(steps)


def test_previews_are_throttled_and_a_failure_never_fails_the_call() -> None:
    sent: list[ProgressEvent] = []
    job = SimpleNamespace(request_id="j", num_images=1, extra={"preview": True})
    params = SimpleNamespace(width=64, height=64, num_inference_steps=50)
    job.params = params
    req = SimpleNamespace(jobs=[job])
    previews = CallPreviews("sd15", req, sent.append)  # type: ignore[arg-type]
    latents = torch.zeros(1, 4, 8, 8)
    for step in range(1, 21):  # twenty steps at once: the first only (then 2 a second)
        previews.on_latents(step, latents)
    assert [e.step for e in sent] == [1]
    previews.throttle.last = 0.0  # due again
    previews.on_latents(21, torch.zeros(1, 3, 8, 8))  # wrong shape: logged, previews stop
    previews.throttle.last = 0.0
    previews.on_latents(22, latents)
    assert [e.step for e in sent] == [1] and previews.first_output == {}


class _SlowGate:
    """A gate whose checkpoint hands the call a new ticket after a pause (it yielded)."""

    def checkpoint(self, ticket: int, rank: int, cancel: threading.Event) -> int:
        time.sleep(0.08)
        return ticket + 1


def test_a_pause_at_the_gate_is_a_log_line(model: LoadedModel, tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    ctx.gate = _SlowGate()  # type: ignore[assignment]
    events: list[ProgressEvent] = []
    call = GatedCall(ctx, model, _request([_job(model, "j")]), {}, threading.Event(), events.append)
    call.ticket = 1
    call.on_step(2, 4)
    logs = [e for e in events if e.log]
    assert len(logs) == 1 and logs[0].step == 2
    assert logs[0].log is not None and logs[0].log.startswith("paused ")
    assert "at step 2 by interactive work" in logs[0].log
