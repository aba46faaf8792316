"""Gateway deployment: the FastAPI ingress of the Ray Serve app (CPU only, no GPU visible).

Front of a request's way. Each replica builds a ``GatewayService`` over deployment handles of the
family workers and serves the routes of ``api.py``. The handle call carries the model id as
Serve's multiplexed model id, so Serve routes it to a worker replica that already holds the model.
"""

from __future__ import annotations

import os

from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from genmedia.deployments.api import build_api
from genmedia.deployments.service import GatewayService, WorkerResult, WorkerUnavailable
from genmedia.models.catalog import parse_catalog
from genmedia.models.params import GenerationJob


class RayWorkerClient:
    """Reaches family workers through Serve deployment handles."""

    def __init__(self, handles: dict[str, DeploymentHandle]):
        self.handles = handles

    def _handle(self, family: str) -> DeploymentHandle:
        try:
            return self.handles[family]
        except KeyError:
            raise WorkerUnavailable(f"no worker deployment for family {family!r}") from None

    async def generate(self, family: str, job: GenerationJob) -> WorkerResult:
        handle = self._handle(family).options(multiplexed_model_id=job.params.model_id)
        try:
            return await handle.generate.remote(job)
        except (BackPressureError, DeploymentUnavailableError) as e:
            raise WorkerUnavailable(f"{family} worker unavailable: {e}") from e

    async def ready(self, family: str) -> dict:
        return await self._handle(family).ready.remote()


@serve.ingress()
class Gateway:
    """Ray Serve ingress; the app is built per replica from the catalog it was deployed with."""

    def __init__(self, catalog: dict, catalog_file: str, workers: dict[str, DeploymentHandle]):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU deployment may otherwise see every GPU
        self.service = GatewayService(
            parse_catalog(catalog, catalog_file), RayWorkerClient(workers)
        )

    async def info(self) -> dict:
        """Where this replica runs (for ``genmedia status``): no GPU, its CPU share."""
        import ray

        return {
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "gpu_ids": [],
            "loaded": [],
            "pid": os.getpid(),
        }

    def __serve_build_asgi_app__(self):
        return build_api(self.service)


GatewayDeployment = serve.deployment(Gateway)
