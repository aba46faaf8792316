"""Family worker: one Ray Serve deployment per model family, on its fractional GPU.

Sits after the scheduler in a request's way. The scheduler sends it formed batches of compatible
jobs (``run_batch``, a streaming call): the replica takes the model's pipeline (multiplexed
through ``@serve.multiplexed``, LRU beyond ``max_loaded_models``), runs the call in a thread of
its own under the replica's ``StepGate`` (one call computes at a time; an interactive call makes
a running batch-class call pause at its next step boundary), streams per-step progress back,
stores the outputs and their sidecars, and returns what it wrote. Cancelling the streaming call
stops the pipeline at the next step boundary. Torch threads are sized from the replica's CPU share.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ray import serve

from genmedia.deployments.store.outputs import store_outputs
from genmedia.deployments.store.storage import make_storage
from genmedia.deployments.worker.device_time import DeviceClock, timed
from genmedia.deployments.worker.gate import Cancelled, StepGate
from genmedia.models.catalog import ModelEntry, ServerSettings
from genmedia.models.params import AdapterUse, GenerationJob, adapter_set_key

logger = logging.getLogger("ray.serve")

PRIORITY = {"interactive": 0, "batch": 1}
PROGRESS_HZ = 2.0
# The pipeline thread holds the GIL through the Python side of every op; other threads of the
# replica (Serve's event loop, Ray's core worker) take it over every switch interval. A longer
# interval lets the pipeline run in longer stretches; the event loop waits a little longer.
GIL_SWITCH_INTERVAL_S = 0.02
# Two main slots (one computing, one staged at the gate) and two preempt slots (interactive only:
# one computing, one staged behind it); the scheduler never sends more, so waiting happens in its
# queue.
SLOTS_PER_REPLICA = 4


@dataclass
class BatchRequest:
    """A batch formed by the scheduler: compatible jobs of one model and class."""

    batch_id: str
    model_id: str
    priority: str
    jobs: list[GenerationJob]
    tenants: dict[str, str]  # job id -> tenant (output paths are per tenant)
    adapters: list[AdapterUse] = field(default_factory=list)  # LoRA set of the whole batch


CONTROL_PLANE_NICENESS = 10


def yield_cpu_to_workers() -> None:
    """Lower this process's CPU priority (gateway, scheduler). Where they share cores with a
    family worker (one machine, CPU inference), the pipeline gets the CPU first and the
    control plane the rest; raising niceness needs no privilege."""
    with contextlib.suppress(OSError):
        os.nice(CONTROL_PLANE_NICENESS)


def _assigned_gpu_share() -> float:
    import ray

    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def torch_threads_for(num_cpus: float) -> int:
    """Torch intra-op threads for a replica with ``num_cpus`` Ray CPUs (at least one)."""
    return max(1, int(num_cpus))


class FamilyWorker:
    """Serves every model of one family; see the module docstring."""

    async def __init__(
        self,
        family: str,
        entries: list[dict],
        weights: dict[str, str],
        num_cpus: float,
        max_loaded_models: int,
        memory_gb: float | None,
        server: dict,
    ):
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        threads = torch_threads_for(num_cpus)
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already set in this process
            torch.set_num_interop_threads(1)
        self.family = family
        self.entries = {e["id"]: ModelEntry.model_validate(e) for e in entries}
        self.weights = weights
        self.threads = threads
        from genmedia.models.runner import cap_gpu_memory, pick_device

        self.device = pick_device()
        # Ray's GPU fractions are bookkeeping only: cap this process at its share.
        cap_gpu_memory(_assigned_gpu_share(), memory_gb)
        settings = ServerSettings.model_validate(server)
        self.max_adapter_bytes = settings.max_adapter_bytes
        self.storage = make_storage(settings.storage, Path)  # paths already absolute
        ctx = serve.get_replica_context()
        self.replica = ctx.replica_id.unique_id if ctx else f"pid{os.getpid()}"
        self.gate = StepGate()
        self.executor = ThreadPoolExecutor(
            max_workers=SLOTS_PER_REPLICA + 2, thread_name_prefix="pipeline"
        )
        self.running: dict[str, str] = {}  # batch id -> priority
        self.running_adapters: dict[str, tuple[str, set[str]]] = {}  # batch id -> (model, ids)
        self.models: OrderedDict[str, object] = OrderedDict()  # base pipelines, LRU
        self.max_loaded_models = max_loaded_models
        self._loading: dict[str, asyncio.Task] = {}
        self.adapter_files: dict[str, object] = {}  # adapter source -> local file

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
        logger.info("loaded %s in %.2fs", model_id, model.load_s)
        return model

    def _inputs(self, req: BatchRequest) -> list[dict] | None:
        """Input images of an image-to-image / inpainting batch, read from storage."""
        if req.jobs[0].params.task == "text-to-image":
            return None
        from PIL import Image

        out = []
        for job in req.jobs:
            keys = job.extra.get("inputs") or {}
            item = {}
            for name, mode in (("image", "RGB"), ("mask", "L")):
                if name in keys:
                    data = self.storage.get(keys[name])
                    if data is None:
                        raise FileNotFoundError(f"input {name} of {job.request_id} is gone")
                    item[name] = Image.open(io.BytesIO(data)).convert(mode)
            out.append(item)
        return out

    def _adapter_files(self, uses: list[AdapterUse]) -> dict[str, object]:
        from genmedia.models.lora import resolve_adapter_file

        files = {}
        for use in uses:
            if use.source not in self.adapter_files:
                self.adapter_files[use.source] = resolve_adapter_file(
                    use.source, max_bytes=self.max_adapter_bytes
                )
            files[use.id] = self.adapter_files[use.source]
        return files

    def _pinned(self, model_id: str, batch_id: str) -> set[str]:
        """Adapters of the other calls on this model: paused at a step, they still need them."""
        out: set[str] = set()
        for other, (mid, ids) in self.running_adapters.items():
            if other != batch_id and mid == model_id:
                out |= ids
        return out

    def _run(self, model, req: BatchRequest, cancel: threading.Event, emit) -> dict:
        """The pipeline call, in a thread: gate, steps (with checkpoints), then storage."""
        from genmedia.models.runner import run_batch

        prio = PRIORITY[req.priority]
        # A step-cached model keeps per-call state in its shared modules: its calls run to the
        # end once started (they neither yield nor are interleaved with another call).
        yields = not model.step_cached
        inputs = self._inputs(req)
        files = self._adapter_files(req.adapters)
        self.running_adapters[req.batch_id] = (req.model_id, set(files))
        adapter_s = 0.0

        def on_gate() -> None:
            """Whenever this call (re)takes the gate: its adapters, and only they, are set."""
            nonlocal adapter_s
            if files or model.adapters.loaded:
                pinned = self._pinned(req.model_id, req.batch_id)
                loaded, wall_s, cpu_s = timed(model.adapters.ensure, model.pipe, files, pinned)
                adapter_s += loaded
                clock.exclude(wall_s, cpu_s)
                model.adapters.activate(model.pipe, req.adapters)

        waited = time.perf_counter()
        ticket = self.gate.acquire(prio, cancel)
        started = time.perf_counter()
        started_wall = time.time()  # the compute span, for the scheduler's contention signal
        clock = DeviceClock(self.device, self.threads)
        paused = 0.0
        state = {"ticket": ticket}
        last_emit = 0.0

        def on_step(step: int, total: int) -> None:
            nonlocal paused, last_emit
            before = time.perf_counter()
            if yields:
                held = state["ticket"]
                state["ticket"] = self.gate.checkpoint(held, prio, cancel)
                if state["ticket"] != held:  # another call ran meanwhile
                    on_gate()
            elif cancel.is_set():
                raise Cancelled()
            after = time.perf_counter()
            paused += after - before
            # Progress costs this replica's event loop (and the GIL) a message each: at most
            # PROGRESS_HZ a second, and always the first and the last step.
            if step in (1, total) or after - last_emit >= 1.0 / PROGRESS_HZ:
                last_emit = after
                emit({"type": "progress", "step": step, "total": total})

        try:
            on_gate()
            outputs = run_batch(model, req.jobs, on_step=on_step, inputs=inputs)
        finally:
            self.gate.release(state["ticket"])
            self.running_adapters.pop(req.batch_id, None)
        compute_s, device_s = clock.stop(paused)
        done = time.perf_counter()
        now = time.time()
        results = []
        total_images = sum(j.num_images for j in req.jobs)
        sample_rate = None
        if req.jobs[0].params.task == "text-to-audio":
            sample_rate = model.family.sample_rate(model.pipe)
        for job, arrays in zip(req.jobs, outputs, strict=True):
            tenant = req.tenants.get(job.request_id, "_")
            stored = store_outputs(
                self.storage,
                job,
                arrays,
                prefix=f"{tenant}/",
                sample_rate=sample_rate,
                extra={"batch": req.batch_id, "batch_size": total_images},
                now=now,
            )
            results.append(
                {
                    "job_id": job.request_id,
                    "images": [s.as_record() for s in stored],
                    "compute_s": compute_s * job.num_images / total_images,
                }
            )
        return {
            "type": "result",
            "batch_id": req.batch_id,
            "results": results,
            "batch_images": total_images,
            "compute_s": compute_s,
            "device_s": device_s,
            "wait_s": started - waited,
            "paused_s": paused,
            "store_s": time.perf_counter() - done,
            "adapter_load_s": adapter_s,
            "adapters": [{"id": u.id, "scale": u.scale} for u in req.adapters],
            "replica": self.replica,
            "compute_span": [started_wall, now],
            "device": self.device,
            "acceleration": model.acceleration,
        }

    async def run_batch(self, req: BatchRequest) -> AsyncIterator[dict]:
        """Run one batch; yields progress events, then the result (streaming call)."""
        if req.model_id not in self.entries:
            raise KeyError(f"model {req.model_id!r} is not served by the {self.family} worker")
        loop = asyncio.get_running_loop()
        load_start = time.perf_counter()
        mux_id = req.model_id
        if req.adapters:
            mux_id += "@" + adapter_set_key(req.adapters)
        model = await self._get_model(mux_id)
        load_s = time.perf_counter() - load_start
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        self.running[req.batch_id] = req.priority
        future = loop.run_in_executor(self.executor, self._run, model, req, cancel, emit)
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                result = future.result()  # raises the pipeline's error
                result["load_s"] = load_s
                yield result
                return
        except (asyncio.CancelledError, GeneratorExit):
            cancel.set()  # the thread stops at its next step boundary
            raise
        except Cancelled:
            raise RuntimeError("cancelled") from None
        finally:
            self.running.pop(req.batch_id, None)
            if not future.done():
                cancel.set()

    async def ready(self) -> dict:
        """Loaded models of this replica (readiness probe of the gateway)."""
        adapters = {m: list(model.adapters.loaded) for m, model in self.models.items()}
        return {
            "replica": self.replica,
            "loaded": list(self.models),
            "adapters": adapters,
            "running": len(self.running),
        }

    async def check_adapter(self, model_id: str, source: str, max_bytes: int) -> dict:
        """Registration: resolve an adapter and check its keys against the loaded model (read
        only: running calls are not disturbed). ``{"info": ...}`` or ``{"error": message}``."""
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
            return {"error": str(e)}
        self.adapter_files[source] = path
        return {"info": info}

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
        }


FamilyWorkerDeployment = serve.deployment(FamilyWorker)
