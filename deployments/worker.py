"""Family worker: one Ray Serve deployment per model family, on its fractional GPU.

Sits after the gateway in a request's way. A replica holds the pipelines of its family's models
(multiplexed through ``@serve.multiplexed``, LRU beyond ``max_loaded_models``), queues incoming
jobs per model in a ``BatchRunner`` that runs one batch of compatible jobs at a time per pipeline,
and runs the pipeline in a thread so the replica's event loop (health checks, new requests) stays
free. Torch threads are sized from the replica's CPU share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from ray import serve

from genmedia.deployments.batching import BatchRunner
from genmedia.deployments.service import WorkerResult
from genmedia.models.catalog import ModelEntry
from genmedia.models.params import GenerationJob

logger = logging.getLogger("ray.serve")


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
        memory_gb: float | None = None,
    ):
        import torch

        threads = torch_threads_for(num_cpus)
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already set in this process
            torch.set_num_interop_threads(1)
        self.family = family
        self.entries = {e["id"]: ModelEntry.model_validate(e) for e in entries}
        self.weights = weights
        self.threads = threads
        from genmedia.models.runner import pick_device

        self.device = pick_device()
        if self.device == "cuda" and memory_gb:
            # Ray's GPU fractions are bookkeeping only: cap this process at its share.
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, memory_gb * 2**30 / total))
        ctx = serve.get_replica_context()
        self.replica = ctx.replica_id.unique_id if ctx else f"pid{os.getpid()}"
        self.load_errors: dict[str, str] = {}

        async def _load(model_id: str):
            return await self._load_model(model_id)

        self._load_fn = _load  # Serve keeps its LRU wrapper on this function object
        self._get_model = serve.multiplexed(max_num_models_per_replica=max_loaded_models)(_load)
        self._runner: BatchRunner[GenerationJob] = BatchRunner(
            self._run_batch,
            key=lambda j: j.batch_key,
            size=lambda j: j.num_images,
            max_items=lambda mid: self.entries[mid].max_batch_size,
            wait_s=lambda mid: self.entries[mid].batch_wait_ms / 1000.0,
        )
        # Preload what fits so readiness means "models loaded", not "first request will load".
        for model_id in list(self.entries)[:max_loaded_models]:
            await self._get_model(model_id)
        logger.info(
            "%s worker %s ready on %s with %d torch threads: %s",
            family,
            self.replica,
            self.device,
            threads,
            ", ".join(list(self.entries)[:max_loaded_models]),
        )

    async def _load_model(self, model_id: str):
        from genmedia.models.runner import load_model
        from genmedia.models.weights import resolve_source

        entry = self.entries[model_id]

        def _load():
            path = resolve_source(self.weights[model_id])
            return load_model(entry, path, self.device)

        model = await asyncio.to_thread(_load)
        logger.info("loaded %s in %.2fs", model_id, model.load_s)
        return model

    async def _run_batch(self, model_id: str, jobs: list[GenerationJob]) -> list:
        from genmedia.models.runner import run_text_to_image

        model = await self._get_model(model_id)
        return await asyncio.to_thread(run_text_to_image, model, jobs)

    async def generate(self, job: GenerationJob) -> WorkerResult:
        """Run one job (batched with compatible ones) and return its images."""
        model_id = job.params.model_id
        if model_id not in self.entries:
            raise KeyError(f"model {model_id!r} is not served by the {self.family} worker")
        images, info = await self._runner.submit(model_id, job)
        return WorkerResult(
            images, info, f"{self.replica}:{info.batch_id}", self.replica, self.device
        )

    async def ready(self) -> dict:
        """Loaded models of this replica (readiness probe of the gateway)."""
        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        loaded = list(wrapper.models) if wrapper is not None else []
        return {"replica": self.replica, "loaded": loaded, "queued": self._runner.queued()}

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
            "time": time.time(),
        }

    async def __del__(self):
        runner = getattr(self, "_runner", None)
        if runner is not None:
            await runner.close()


FamilyWorkerDeployment = serve.deployment(FamilyWorker)
