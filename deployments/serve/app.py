"""App builder: a catalog in, a Ray Serve application out (gateway + one worker per family).

Runs at deploy time, before any request: ``genmedia serve``, ``genmedia deploy`` and the tests
call ``build_app``. Each family worker asks Ray for the sum of its models' GPU fractions, CPUs
from the catalog, and ``max_ongoing_requests`` sized for one running plus one forming batch per
model, so waiting happens in the worker's batcher rather than in Serve's FIFO.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.serve import Application

from genmedia.deployments.scheduler.dispatcher import slots_per_replica
from genmedia.deployments.serve.gateway import GatewayDeployment
from genmedia.deployments.serve.routing import ROUTER_PATH, ROUTING_STATS_PERIOD_S
from genmedia.deployments.serve.scheduler import SchedulerDeployment
from genmedia.deployments.serve.worker import FamilyWorkerDeployment
from genmedia.deployments.store.open import is_url
from genmedia.deployments.tenants.schema import TenantsFile
from genmedia.deployments.worker.batch import torch_threads_for
from genmedia.models.catalog import Catalog, LocalStorage

APP_NAME = "genmedia"
GATEWAY_NAME = "gateway"
SCHEDULER_NAME = "scheduler"
GATEWAY_MAX_ONGOING = 1000
SCHEDULER_MAX_ONGOING = 10_000  # waits and progress streams are held open there


def worker_name(family: str) -> str:
    return f"worker-{family}"


@dataclass(frozen=True)
class WorkerPlan:
    """The Serve options one family worker deployment gets."""

    family: str
    model_ids: tuple[str, ...]
    num_gpus: float
    num_cpus: float
    torch_threads: int
    memory_gb: float
    max_ongoing_requests: int
    min_replicas: int
    max_replicas: int
    max_loaded_models: int
    engine: str = "request"  # the worker's engine: request-level batches or the step engine
    pipeline_process: bool = True  # the pipeline in a child process of each replica

    def deployment_options(self, gpus_available: bool = True) -> dict:
        env = {k: str(self.torch_threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        opts: dict = {
            "name": worker_name(self.family),
            "ray_actor_options": {
                "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus if gpus_available else 0,
                "runtime_env": {"env_vars": env},
            },
            "max_ongoing_requests": self.max_ongoing_requests,
            "graceful_shutdown_timeout_s": 60,
            "health_check_timeout_s": 60,
        }
        if self.min_replicas == self.max_replicas:
            opts["num_replicas"] = self.max_replicas
        else:
            opts["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(1, self.min_replicas),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": max(1, self.max_ongoing_requests // 2),
            }
        return opts


def plan_workers(catalog: Catalog) -> list[WorkerPlan]:
    """Deployment sizing per family (pure; ``genmedia status`` and tests read it too)."""
    plans = []
    for family, entries in catalog.families().items():
        ws = catalog.worker(family)
        loaded = entries[: ws.max_loaded_models]
        plans.append(
            WorkerPlan(
                family=family,
                model_ids=tuple(e.id for e in entries),
                num_gpus=round(min(1.0, sum(e.gpu_fraction for e in entries)), 6),
                num_cpus=ws.num_cpus,
                torch_threads=torch_threads_for(ws.num_cpus),
                memory_gb=sum(e.memory_gb for e in loaded),
                # a step engine takes as many calls as its running set plus a joining set
                max_ongoing_requests=slots_per_replica(
                    ws.engine, max(e.max_batch_size for e in entries)
                ),
                min_replicas=ws.min_replicas,
                max_replicas=ws.max_replicas,
                max_loaded_models=ws.max_loaded_models,
                engine=ws.engine,
                pipeline_process=ws.pipeline_process,
            )
        )
    return plans


def deployable(catalog: Catalog) -> Catalog:
    """The catalog with local paths made absolute, so replicas anywhere read the same thing."""
    models = []
    for m in catalog.models:
        if "://" in m.weights and not m.weights.startswith("file://"):
            models.append(m)
        else:
            path = m.weights.removeprefix("file://")
            models.append(m.model_copy(update={"weights": str(catalog.resolve_path(path))}))
    server = catalog.server
    if isinstance(server.storage, LocalStorage):
        storage = server.storage.model_copy(
            update={"dir": str(catalog.resolve_path(server.storage.dir))}
        )
        server = server.model_copy(update={"storage": storage})
    sched = server.scheduler
    update: dict[str, str] = {}
    if not is_url(sched.job_store):  # a postgresql:// URL is not a path
        update["job_store"] = str(catalog.resolve_path(sched.job_store))
    if sched.job_store_password_file:
        update["job_store_password_file"] = str(catalog.resolve_path(sched.job_store_password_file))
    sched = sched.model_copy(update=update)
    server = server.model_copy(update={"scheduler": sched})
    return catalog.model_copy(update={"models": models, "server": server})


def build_app(
    catalog: Catalog, tenants: TenantsFile, *, gpus_available: bool = True
) -> Application:
    """The Serve application for a catalog (``gpus_available=False`` drops GPU requests).

    ``tenants`` holds hashed keys only; plaintext keys never reach the cluster."""
    catalog = deployable(catalog)
    by_family = catalog.families()
    server = catalog.server
    server_data = server.model_dump(mode="json")
    workers = {}
    for plan in plan_workers(catalog):
        entries = by_family[plan.family]
        workers[plan.family] = FamilyWorkerDeployment.options(  # type: ignore[attr-defined]
            **plan.deployment_options(gpus_available)
        ).bind(
            plan.family,
            [e.model_dump(mode="json") for e in entries],
            {e.id: e.weights for e in entries},
            plan.num_cpus,
            plan.max_loaded_models,
            plan.memory_gb,
            server_data,
            plan.engine,
            plan.pipeline_process,
        )
    data = catalog.model_dump(mode="json", exclude={"source"})
    source = catalog.source or "<catalog>"
    tenants_data = tenants.model_dump(mode="json")
    scheduler = SchedulerDeployment.options(  # type: ignore[attr-defined]
        name=SCHEDULER_NAME,
        # the one owner of every queue, plus standbys that take the store over when it dies;
        # calls go to the replica holding the lease (serve/routing.py)
        num_replicas=1 + server.scheduler.standby,
        max_ongoing_requests=SCHEDULER_MAX_ONGOING,
        request_router_config={
            "request_router_class": ROUTER_PATH,
            "request_routing_stats_period_s": ROUTING_STATS_PERIOD_S,
        },
        ray_actor_options={
            "num_cpus": server.scheduler_num_cpus,
            "num_gpus": 0,
            "runtime_env": {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}},
        },
    ).bind(
        data,
        source,
        workers,
        tenants_data,
        {family: worker_name(family) for family in workers},
        APP_NAME,
    )
    gateway = GatewayDeployment.options(  # type: ignore[attr-defined]
        name=GATEWAY_NAME,
        num_replicas=server.gateway_replicas,
        max_ongoing_requests=GATEWAY_MAX_ONGOING,
        ray_actor_options={
            "num_cpus": server.gateway_num_cpus,
            "num_gpus": 0,
            "runtime_env": {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}},
        },
    )
    return gateway.bind(data, source, scheduler, workers, tenants_data)
