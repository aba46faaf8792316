"""Family worker: one Ray Serve deployment per model family, on its fractional GPU.

Sits after the scheduler in a request's way. The scheduler sends it formed batches of compatible
jobs (``run_batch``, a streaming call): the replica takes the model's pipeline (multiplexed
through ``@serve.multiplexed``, LRU beyond ``max_loaded_models``), runs the call in a thread of
its own under the replica's ``StepGate`` (one call computes at a time; an interactive call makes
a running batch-class call pause at its next step boundary), streams per-step progress back,
stores the outputs and their sidecars, and returns what it wrote. Cancelling the streaming call
stops the pipeline at the next step boundary; ``cancel_jobs`` names jobs of a running batch that
were cancelled while the others go on (their outputs are not stored). Torch threads are sized
from the replica's CPU share.
The call itself (gate, adapters, progress, timings, result) is ``worker/batch.py``; this module
holds the deployment, the multiplexed model cache and the Ray calls. With
``workers.<family>.pipeline_process`` the pipeline (models, gate, calls, storing outputs) runs in
a child process of the replica on its own GIL (``worker/pipeline_process.py``) and the replica
forwards its calls there; when that process dies its calls fail with ``PipelineLost`` (the
scheduler queues their jobs again) and a fresh one starts. Every model load is timed
(``worker/load_times.py``): the figures are in ``ready``/``info``, in ``metrics_text`` and in
``record_autoscaling_stats``, which feeds the autoscaling policy's cold-start figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve
from ray.exceptions import RayActorError

from genmedia.deployments.protocol import (
    AdapterCheck,
    AdapterInfo,
    BatchRequest,
    ProgressEvent,
    WorkerResult,
)
from genmedia.deployments.scheduler.dispatcher import slots_per_replica
from genmedia.deployments.worker.batch import (
    WorkerContext,
)
from genmedia.deployments.worker.gate import Cancelled, StepGate
from genmedia.deployments.worker.load_times import LoadTimes
from genmedia.deployments.worker.pipeline_messages import (
    ModelLoaded,
    PipelineConfig,
    PipelineProcessLost,
)
from genmedia.deployments.worker.pipeline_process import (
    PipelineProcess,
    run_call,
    start_pipeline,
)
from genmedia.deployments.worker.step_loop import StepLoop
from genmedia.models.catalog import ModelEntry

logger = logging.getLogger("ray.serve")


class PipelineLost(RayActorError):
    """The replica's pipeline process died while it ran the call (killed, crashed, out of
    memory). A ``RayActorError``, as for a lost replica: the scheduler queues the call's jobs
    again (``serve/scheduler_batches.py``). Neither ``ActorDiedError`` nor
    ``ActorUnavailableError``: the replica itself is alive and Serve keeps routing to it."""

    def __init__(self, message: str) -> None:
        super().__init__(error_msg=message)


@dataclasses.dataclass
class ChildModel:
    """A model loaded in the replica's pipeline process: the replica holds its figures only."""

    model_id: str
    load_s: float = 0.0
    load_phases: dict = dataclasses.field(default_factory=dict)


def _assigned_gpu_share() -> float:
    import ray

    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


class FamilyWorker:
    """Serves every model of one family; see the module docstring."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        family: str,
        entries: list[dict],
        weights: dict[str, str],
        num_cpus: float,
        max_loaded_models: int,
        memory_gb: float | None,
        server: dict,
        engine: str = "request",
        pipeline_process: bool = False,
    ):
        self.family = family
        self.entries = {e["id"]: ModelEntry.model_validate(e) for e in entries}
        self.weights = weights
        replica_ctx = serve.get_replica_context()
        self.replica = replica_ctx.replica_id.unique_id if replica_ctx else f"pid{os.getpid()}"
        # one call in flight per slot (a step call waits on one)
        max_calls = slots_per_replica(engine, max(e.max_batch_size for e in self.entries.values()))
        self.running: dict[str, str] = {}  # batch id -> priority
        self.models: OrderedDict[str, Any] = OrderedDict()  # base pipelines (LoadedModel), LRU
        self.max_loaded_models = max_loaded_models
        self._loading: dict[str, asyncio.Task] = {}
        self.load_times = LoadTimes(family)  # measured per model, reported to the autoscaler
        self.pipeline: PipelineProcess | None = None
        self.gate: StepGate | None = None
        self.ctx: WorkerContext | None = None
        self.step_loop: StepLoop | None = None
        self.executor: ThreadPoolExecutor | None = None
        if pipeline_process:
            config = PipelineConfig(
                family, entries, weights, num_cpus, max_loaded_models, memory_gb,
                _assigned_gpu_share(), server, engine, self.replica, max_calls,
            )  # fmt: skip
            self.pipeline = PipelineProcess(config, on_loaded=self._loaded_in_child)
            ready = await self.pipeline.start()
            self.device, self.threads = ready.device, ready.threads
        else:
            self._start_here(num_cpus, memory_gb, server, engine, max_calls)

        async def _load(mux_id: str):
            # "<model>" or "<model>@<adapter ids>": Serve routes a batch to replicas that hold
            # its id; the base pipeline is one object whatever adapters a batch adds to it.
            return await self._base_model(mux_id.split("@", 1)[0])

        self._load_fn = _load  # Serve keeps its LRU wrapper on this function object
        adapters_per_model = max(e.max_loaded_adapters for e in self.entries.values())
        self._get_model = serve.multiplexed(
            max_num_models_per_replica=max_loaded_models * (1 + adapters_per_model)
        )(_load)
        # Preload what fits so readiness means "models loaded", not "first request will load".
        for model_id in list(self.entries)[:max_loaded_models]:
            await self._get_model(model_id)
        logger.info(
            "%s worker %s ready on %s with %d torch threads%s",
            family,
            self.replica,
            self.device,
            self.threads,
            f" (pipeline process {self.pipeline.pid})" if self.pipeline is not None else "",
        )

    def _start_here(
        self, num_cpus: float, memory_gb: float | None, server: dict, engine: str, max_calls: int
    ) -> None:
        """The pipeline in this process: torch threads, device, memory cap, the context."""
        gpu_share = _assigned_gpu_share()
        self.ctx, self.step_loop, self.executor = start_pipeline(
            num_cpus, memory_gb, gpu_share, server, engine, self.replica, max_calls
        )
        self.gate, self.device, self.threads = self.ctx.gate, self.ctx.device, self.ctx.threads

    def __del__(self) -> None:
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.close()

    async def _base_model(self, model_id: str):
        """The loaded pipeline of a model (loading it once; least recently used evicted)."""
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        if model_id not in self._loading:
            self._loading[model_id] = asyncio.ensure_future(self._load_model(model_id))
        try:
            model = await asyncio.shield(self._loading[model_id])
        finally:
            self._loading.pop(model_id, None)
        self.models[model_id] = model
        while len(self.models) > self.max_loaded_models:
            evicted, _ = self.models.popitem(last=False)  # running calls keep their reference
            logger.info("unloaded %s (LRU)", evicted)
        return model

    async def _load_model(self, model_id: str):
        if self.pipeline is not None:  # its load time arrives through ``_loaded_in_child``
            answer = await self.pipeline.load(model_id)
            return ChildModel(model_id, answer.load_s, dict(answer.load_phases))
        from genmedia.models.runner import load_model
        from genmedia.models.weights import resolve_source

        entry = self.entries[model_id]

        def _load():
            path = resolve_source(self.weights[model_id])
            return load_model(entry, path, self.device)

        model = await asyncio.get_running_loop().run_in_executor(self.executor, _load)
        self.load_times.record(model_id, model)
        logger.info("loaded %s in %.2fs %s", model_id, model.load_s, model.load_phases)
        return model

    def _loaded_in_child(self, msg: ModelLoaded) -> None:
        """A load in the pipeline process (on request, or on a call after a restart)."""
        self.load_times.record(msg.model_id, ChildModel(msg.model_id, msg.load_s, msg.load_phases))
        logger.info("loaded %s in %.2fs %s", msg.model_id, msg.load_s, msg.load_phases)

    async def run_batch(
        self, req: BatchRequest
    ) -> AsyncGenerator[ProgressEvent | WorkerResult, None]:
        """Run one batch; yields progress events, then the result (streaming call)."""
        if req.model_id not in self.entries:
            raise KeyError(f"model {req.model_id!r} is not served by the {self.family} worker")
        load_start = time.perf_counter()
        model = await self._get_model(req.multiplex_id)
        load_s = time.perf_counter() - load_start
        if load_s >= 0.05:  # a line for the jobs' logs (``?logs=1``); a loaded model takes ~0
            steps = req.jobs[0].params.num_inference_steps
            yield ProgressEvent(0, steps, log=f"model {req.model_id} loaded in {load_s:.2f}s")
        if self.pipeline is not None:
            calls = self._run_in_child(self.pipeline, req, load_s)
        else:
            calls = self._run_here(model, req, load_s)
        self.running[req.batch_id] = req.priority
        try:
            async with contextlib.aclosing(calls) as stream:
                async for item in stream:
                    yield item
        except Cancelled:
            raise RuntimeError("cancelled") from None
        finally:
            self.running.pop(req.batch_id, None)

    async def _run_in_child(
        self, pipeline: PipelineProcess, req: BatchRequest, load_s: float
    ) -> AsyncGenerator[ProgressEvent | WorkerResult, None]:
        """The call in the pipeline process; its death fails the call with ``PipelineLost``."""
        try:
            async with contextlib.aclosing(pipeline.run(req)) as stream:
                async for item in stream:
                    if isinstance(item, WorkerResult):  # the child's load (after a restart) too
                        timings = item.timings
                        timings = dataclasses.replace(timings, load_s=load_s + timings.load_s)
                        item = dataclasses.replace(item, timings=timings)
                    yield item
        except PipelineProcessLost as e:
            raise PipelineLost(str(e)) from None

    async def _run_here(
        self, model: Any, req: BatchRequest, load_s: float
    ) -> AsyncGenerator[ProgressEvent | WorkerResult, None]:
        """The call on a thread of this process."""
        ctx = self.ctx
        assert ctx is not None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: ProgressEvent) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        ctx.cancelled_jobs[req.batch_id] = set()
        future = loop.run_in_executor(
            self.executor, run_call, ctx, self.step_loop, model, req, cancel, emit
        )
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                both: set[asyncio.Future[Any]] = {getter, future}
                done, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                result = future.result()  # raises the pipeline's error
                timings = dataclasses.replace(result.timings, load_s=load_s)
                yield dataclasses.replace(result, timings=timings)
                return
        except (asyncio.CancelledError, GeneratorExit):
            cancel.set()  # the thread stops at its next step boundary
            raise
        finally:
            ctx.cancelled_jobs.pop(req.batch_id, None)
            if not future.done():
                cancel.set()

    async def cancel_jobs(self, batch_id: str, job_ids: list[str]) -> bool:
        """Jobs of a running batch the scheduler cancelled: the batch goes on for the others,
        their outputs are not stored. False when the batch does not run on this replica (the
        scheduler then deletes whatever was stored)."""
        if self.pipeline is not None:
            if batch_id not in self.running:
                return False
            self.pipeline.cancel_jobs(batch_id, job_ids)
            return True
        assert self.ctx is not None
        cancelled = self.ctx.cancelled_jobs.get(batch_id)
        if cancelled is None:
            return False
        cancelled.update(job_ids)
        return True

    async def _holdings(self) -> tuple[list[str], dict[str, list[str]], int, float]:
        """Loaded models, their adapters, the step gate's preemptions and busy seconds."""
        if self.pipeline is None:
            assert self.gate is not None
            adapters = {m: list(model.adapters.loaded) for m, model in self.models.items()}
            return list(self.models), adapters, self.gate.preemptions, self.gate.busy_s
        info = await self.pipeline.info()
        if info is None:  # starting again after a crash, or busy: what it last said
            return list(self.pipeline.loaded), {}, 0, 0.0
        return info.loaded, info.adapters, info.preemptions, info.busy_s

    async def ready(self) -> dict:
        """Loaded models of this replica (readiness probe of the gateway)."""
        loaded, adapters, _, _ = await self._holdings()
        return self._ready_body(loaded, adapters)

    def _ready_body(self, loaded: list[str], adapters: dict[str, list[str]]) -> dict:
        return {
            "replica": self.replica,
            "loaded": loaded,
            "adapters": adapters,
            "running": len(self.running),
            "load_s": self.load_times.seconds(),
        }

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The load time measured per model (``load|<model>``): the autoscaling policy's
        cold-start figure (``autoscaling/serve_adapter.py``)."""
        return self.load_times.autoscaling_stats()

    async def metrics_text(self) -> bytes:
        """This replica's Prometheus text (``metrics.WorkerMetrics``: load times, phases)."""
        return self.load_times.metrics.render()

    async def check_adapter(self, model_id: str, source: str, max_bytes: int) -> AdapterCheck:
        """Registration: resolve an adapter and check its keys against the loaded model (read
        only: running calls are not disturbed)."""
        from genmedia.models.lora import AdapterError, check_adapter

        model = await self._base_model(model_id)
        if self.pipeline is not None:
            return await self.pipeline.check_adapter(model_id, source, max_bytes)
        assert self.ctx is not None

        def _check():
            return check_adapter(
                model.pipe,
                model.entry.family,
                source,
                max_bytes=max_bytes,
                max_rank=model.entry.max_lora_rank,
            )

        try:
            path, info = await asyncio.get_running_loop().run_in_executor(self.executor, _check)
        except AdapterError as e:
            return AdapterCheck(error=str(e))
        self.ctx.adapter_files.remember(source, path)
        return AdapterCheck(info=AdapterInfo(**info))  # path, bytes, sha256, rank, tensors

    async def info(self) -> dict:
        """Where this replica runs and what it holds (for ``genmedia status`` and tests)."""
        import ray

        loaded, adapters, preemptions, busy_s = await self._holdings()
        pipeline = self.pipeline
        return {
            **self._ready_body(loaded, adapters),
            "family": self.family,
            "device": self.device,
            "torch_threads": self.threads,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "pipeline_pid": pipeline.pid if pipeline is not None else None,
            "pipeline_restarts": pipeline.restarts if pipeline is not None else 0,
            "preemptions": preemptions,
            "busy_s": busy_s,
            "load_times": self.load_times.info(),
        }


FamilyWorkerDeployment = serve.deployment(FamilyWorker)
