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
holds the deployment, the multiplexed model cache and the Ray calls. Every model load is timed
(``worker/load_times.py``): the figures are in ``ready``/``info``, in ``metrics_text`` and in
``record_autoscaling_stats``, which feeds the autoscaling policy's cold-start figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import serve

from genmedia.deployments.protocol import (
    AdapterCheck,
    AdapterInfo,
    BatchRequest,
    ProgressEvent,
    WorkerResult,
)
from genmedia.deployments.scheduler.dispatcher import slots_per_replica
from genmedia.deployments.store.storage import make_storage
from genmedia.deployments.worker.batch import (
    AdapterFiles,
    WorkerContext,
    run_batch_call,
    run_step_call,
    torch_threads_for,
)
from genmedia.deployments.worker.gate import Cancelled, StepGate
from genmedia.deployments.worker.load_times import LoadTimes
from genmedia.deployments.worker.step_loop import StepLoop
from genmedia.models.catalog import ModelEntry, ServerSettings

logger = logging.getLogger("ray.serve")

# The pipeline thread holds the GIL through the Python side of every op; other threads of the
# replica (Serve's event loop, Ray's core worker) take it over every switch interval. A longer
# interval lets the pipeline run in longer stretches; the event loop waits a little longer.
GIL_SWITCH_INTERVAL_S = 0.02
CONTROL_PLANE_NICENESS = 10  # added to the gateway's and the scheduler's niceness


def yield_cpu_to_workers() -> None:
    """Lower this process's CPU priority (gateway, scheduler). Where they share cores with a
    family worker (one machine, CPU inference), the pipeline gets the CPU first and the
    control plane the rest; raising niceness needs no privilege."""
    with contextlib.suppress(OSError):
        os.nice(CONTROL_PLANE_NICENESS)


def _setup_process(num_cpus: float) -> int:
    """Torch threads sized from the replica's CPU share, a longer GIL switch interval, no
    progress bars; returns the torch intra-op threads."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    from genmedia.models.weights import genmedia_home

    # torch.compile's caches where every replica of the host (and a volume) finds them
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(genmedia_home() / "inductor"))
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    threads = torch_threads_for(num_cpus)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)
    return threads


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
    ):
        threads = _setup_process(num_cpus)
        self.family = family
        self.entries = {e["id"]: ModelEntry.model_validate(e) for e in entries}
        self.weights = weights
        self.threads = threads
        from genmedia.models.runner import cap_gpu_memory, pick_device

        self.device = pick_device()
        # Ray's GPU fractions are bookkeeping only: cap this process at its share.
        cap_gpu_memory(_assigned_gpu_share(), memory_gb)
        settings = ServerSettings.model_validate(server)
        replica_ctx = serve.get_replica_context()
        self.replica = replica_ctx.replica_id.unique_id if replica_ctx else f"pid{os.getpid()}"
        self.gate = StepGate()
        # what every batch call of this replica shares (``worker/batch.py``)
        self.ctx = WorkerContext(
            gate=self.gate,
            storage=make_storage(settings.storage, Path),  # paths already absolute
            device=self.device,
            threads=threads,
            replica=self.replica,
            adapter_files=AdapterFiles(settings.max_adapter_bytes),
        )
        # ``engine: step``: calls the family's step engine runs join one running set
        self.step_loop = StepLoop(self.ctx) if engine == "step" else None
        self.executor = ThreadPoolExecutor(
            # one thread per call in flight (a step call waits on one) plus model loads
            max_workers=slots_per_replica(
                engine, max(e.max_batch_size for e in self.entries.values())
            )
            + 2,
            thread_name_prefix="pipeline",
        )
        self.running: dict[str, str] = {}  # batch id -> priority
        self.models: OrderedDict[str, Any] = OrderedDict()  # base pipelines (LoadedModel), LRU
        self.max_loaded_models = max_loaded_models
        self._loading: dict[str, asyncio.Task] = {}
        self.load_times = LoadTimes(family)  # measured per model, reported to the autoscaler

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
            "%s worker %s ready on %s with %d torch threads",
            family,
            self.replica,
            self.device,
            threads,
        )

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

    async def run_batch(self, req: BatchRequest) -> AsyncIterator[ProgressEvent | WorkerResult]:
        """Run one batch; yields progress events, then the result (streaming call)."""
        if req.model_id not in self.entries:
            raise KeyError(f"model {req.model_id!r} is not served by the {self.family} worker")
        loop = asyncio.get_running_loop()
        load_start = time.perf_counter()
        model = await self._get_model(req.multiplex_id)
        load_s = time.perf_counter() - load_start
        if load_s >= 0.05:  # a line for the jobs' logs (``?logs=1``); a loaded model takes ~0
            steps = req.jobs[0].params.num_inference_steps
            yield ProgressEvent(0, steps, log=f"model {req.model_id} loaded in {load_s:.2f}s")
        events: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: ProgressEvent) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        self.running[req.batch_id] = req.priority
        self.ctx.cancelled_jobs[req.batch_id] = set()
        if self.step_loop is not None and self.step_loop.accepts(model, req):
            future = loop.run_in_executor(
                self.executor, run_step_call, self.ctx, self.step_loop, model, req, cancel, emit
            )
        else:
            future = loop.run_in_executor(
                self.executor, run_batch_call, self.ctx, model, req, cancel, emit
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
        except Cancelled:
            raise RuntimeError("cancelled") from None
        finally:
            self.running.pop(req.batch_id, None)
            self.ctx.cancelled_jobs.pop(req.batch_id, None)
            if not future.done():
                cancel.set()

    async def cancel_jobs(self, batch_id: str, job_ids: list[str]) -> bool:
        """Jobs of a running batch the scheduler cancelled: the batch goes on for the others,
        their outputs are not stored. False when the batch does not run on this replica (the
        scheduler then deletes whatever was stored)."""
        cancelled = self.ctx.cancelled_jobs.get(batch_id)
        if cancelled is None:
            return False
        cancelled.update(job_ids)
        return True

    async def ready(self) -> dict:
        """Loaded models of this replica (readiness probe of the gateway)."""
        adapters = {m: list(model.adapters.loaded) for m, model in self.models.items()}
        return {
            "replica": self.replica,
            "loaded": list(self.models),
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

        return {
            **(await self.ready()),
            "family": self.family,
            "device": self.device,
            "torch_threads": self.threads,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "preemptions": self.gate.preemptions,
            "busy_s": self.gate.busy_s,
            "load_times": self.load_times.info(),
        }


FamilyWorkerDeployment = serve.deployment(FamilyWorker)
