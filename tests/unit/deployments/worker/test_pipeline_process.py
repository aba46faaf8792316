"""The pipeline in a child process of the replica (``worker/pipeline_process.py``), without Ray:
a call in the child gives what the same call gives in process; a cancelled call stores
nothing; a SIGKILLed child fails its running call with ``PipelineProcessLost`` and the next
call runs on a fresh child. Each test starts real ``spawn`` children on the tiny SD1.5 model."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from genmedia.deployments.protocol import BatchRequest, PriorityClass, ProgressEvent, WorkerResult
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.worker.batch import AdapterFiles, WorkerContext, run_batch_call
from genmedia.deployments.worker.gate import Cancelled, StepGate
from genmedia.deployments.worker.pipeline_messages import (
    CallFailed,
    ModelLoaded,
    PipelineCallError,
    PipelineConfig,
    PipelineProcessLost,
)
from genmedia.deployments.worker.pipeline_process import PipelineProcess
from genmedia.models.catalog import ModelEntry
from genmedia.models.params import GenerateRequest, resolve_request
from genmedia.models.runner import load_model
from tests.unit.deployments.worker.tiny import tiny_sd15

WAIT_S = 120.0  # generous: a loaded 2-core machine starts a child (torch import) slowly


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelEntry, Path]:
    return tiny_sd15(tmp_path_factory.mktemp("pipeline-process"), max_side=256, max_steps=200)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the child inherits the environment: its URL signing secret lives under GENMEDIA_HOME
    monkeypatch.setenv("GENMEDIA_HOME", str(tmp_path / "home"))


def _config(entry: ModelEntry, path: Path, out: Path) -> PipelineConfig:
    return PipelineConfig(
        family="sd15",
        entries=[entry.model_dump(mode="json")],
        weights={entry.id: str(path)},
        num_cpus=1,
        max_loaded_models=1,
        memory_gb=None,
        gpu_share=0.0,
        server={"storage": {"kind": "local", "dir": str(out)}},
        engine="request",
        replica="r1",
        max_calls=2,
    )


def _request(entry: ModelEntry, batch_id: str, steps: int = 4, size: int = 64) -> BatchRequest:
    body = GenerateRequest(
        prompt="a cat", seed=3, num_inference_steps=steps, width=size, height=size
    )
    job, errors = resolve_request(entry, body, request_id=f"{batch_id}-j")
    assert job is not None and not errors, errors
    return BatchRequest(
        batch_id=batch_id,
        model_id=entry.id,
        priority=PriorityClass("batch"),
        jobs=[job],
        tenants={job.request_id: "tenant-a"},
    )


async def _collect(pipeline: PipelineProcess, req: BatchRequest) -> list[Any]:
    items = []
    async with asyncio.timeout(WAIT_S):
        async for item in pipeline.run(req):
            items.append(item)
    return items


def _in_process(entry: ModelEntry, path: Path, out: Path, req: BatchRequest) -> WorkerResult:
    """The same call on a thread of this process, with the child's one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_model(entry, path, "cpu")
        ctx = WorkerContext(
            gate=StepGate(),
            storage=LocalDirStorage(out),
            device="cpu",
            threads=1,
            replica="r1",
            adapter_files=AdapterFiles(max_bytes=1 << 20),
        )
        return run_batch_call(ctx, model, req, threading.Event(), lambda e: None)
    finally:
        torch.set_num_threads(threads)


def test_a_call_in_the_child_matches_the_call_in_process_and_cancel_stores_nothing(
    tiny: tuple[ModelEntry, Path], tmp_path: Path
) -> None:
    entry, path = tiny
    loads: list[ModelLoaded] = []

    async def scenario() -> tuple[list[Any], list[Any], Any]:
        pipeline = PipelineProcess(_config(entry, path, tmp_path / "child"), loads.append)
        try:
            ready = await asyncio.wait_for(pipeline.start(), WAIT_S)
            assert ready.threads == 1 and ready.device == "cpu" and ready.pid != os.getpid()
            await asyncio.wait_for(pipeline.load(entry.id), WAIT_S)
            items = await _collect(pipeline, _request(entry, "b1"))
            # cancel: leave the stream after the first step; the child stops at a boundary
            long = _request(entry, "b2", steps=200, size=128)
            seen: list[Any] = []
            async with asyncio.timeout(WAIT_S), contextlib.aclosing(pipeline.run(long)) as stream:
                async for item in stream:
                    seen.append(item)
                    if isinstance(item, ProgressEvent) and item.step >= 1:
                        break
            async with asyncio.timeout(WAIT_S):
                while (info := await pipeline.info()) is None or info.running:
                    await asyncio.sleep(0.05)
            # unknown model: the child's KeyError, type kept
            with pytest.raises(KeyError, match="not served"):
                await _collect(pipeline, replace(_request(entry, "b3"), model_id="nope"))
            return items, seen, info
        finally:
            pipeline.close()

    items, seen, info = asyncio.run(scenario())
    assert [m.model_id for m in loads] == [entry.id] and loads[0].load_s > 0
    progress = [i for i in items if isinstance(i, ProgressEvent)]
    assert progress and progress[-1].step == progress[-1].total == 4
    result = items[-1]
    assert isinstance(result, WorkerResult) and result.replica == "r1"
    assert result.timings.load_s == 0.0  # loaded before the call
    here = _in_process(entry, path, tmp_path / "here", _request(entry, "b1"))
    child_out = [o for j in result.jobs for o in j.outputs]
    here_out = [o for j in here.jobs for o in j.outputs]
    assert [o.sha256 for o in child_out] == [o.sha256 for o in here_out]
    assert all((tmp_path / "child" / o.key).is_file() for o in child_out)
    # the cancelled call ended without a result and stored nothing
    assert not any(isinstance(i, WorkerResult) for i in seen)
    assert info.running == 0 and info.loaded == [entry.id]
    assert not list((tmp_path / "child" / "tenant-a").rglob("b2-j*"))


def test_a_killed_child_fails_its_call_and_the_next_call_runs_on_a_fresh_child(
    tiny: tuple[ModelEntry, Path], tmp_path: Path
) -> None:
    entry, path = tiny
    loads: list[ModelLoaded] = []

    async def scenario() -> tuple[int, int, list[Any], int]:
        pipeline = PipelineProcess(_config(entry, path, tmp_path / "out"), loads.append)
        try:
            first = (await asyncio.wait_for(pipeline.start(), WAIT_S)).pid
            long = _request(entry, "b1", steps=200, size=128)
            with pytest.raises(PipelineProcessLost, match="exited"):
                async with asyncio.timeout(WAIT_S):
                    async for item in pipeline.run(long):
                        if isinstance(item, ProgressEvent) and item.step >= 1:
                            os.kill(first, signal.SIGKILL)
            # a fresh child starts; the model loads again on the next call
            items = await _collect(pipeline, _request(entry, "b2"))
            second = pipeline.pid
            assert second is not None
            return first, second, items, pipeline.restarts
        finally:
            pipeline.close()

    first, second, items, restarts = asyncio.run(scenario())
    assert second != first and restarts == 1
    result = items[-1]
    assert isinstance(result, WorkerResult) and result.timings.load_s > 0
    assert any(isinstance(i, ProgressEvent) and i.log and "loaded" in i.log for i in items)
    assert [m.model_id for m in loads] == [entry.id, entry.id]  # once per child


def test_failures_keep_their_type_or_say_it() -> None:
    sent = CallFailed.of(7, Cancelled())
    assert isinstance(sent.error(), Cancelled)

    class Local(Exception):  # defined here: it cannot be pickled by reference
        pass

    text = CallFailed.of(7, Local("boom"))
    assert text.pickled is None
    error = text.error()
    assert isinstance(error, PipelineCallError) and "Local: boom" in str(error)
