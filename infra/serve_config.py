"""The Serve application config for a catalog: the deployed shape of genmedia, as data.

Rendered by ``infra/render.py`` (``genmedia render serve-config``, and inside the KubeRay
``RayService``) and used by the autoscaling integration test. The app is built on the cluster by
``genmedia.deployments.serve.entrypoint:build`` from ``args``; the config adds what code does
not say:
the application-level autoscaling policy (``autoscaling/serve_adapter.py``) with the catalog and
GPU budget as its kwargs, and per deployment the autoscaling config that registers each worker
with it (Serve's own delays at zero: the policy damps) and the scheduler whose
``record_autoscaling_stats`` feeds it. Pure data, no Ray; Ray's ``ServeDeploySchema`` checks it
in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genmedia.autoscaling.placement import replica_shapes
from genmedia.autoscaling.policy import policy_knobs
from genmedia.models.catalog import Catalog

APP_NAME = "genmedia"  # as deployments/serve/app.py
BUILDER = "genmedia.deployments.serve.entrypoint:build"
POLICY = "genmedia.autoscaling.serve_adapter:GenmediaAutoscaler"


@dataclass(frozen=True)
class ScalingKnobs:
    """How often the scheduler reports, and the policy's knobs that differ from their defaults
    (``autoscaling.policy.policy_knobs``; the config carries all of them)."""

    metrics_interval_s: float = 1.0
    look_back_period_s: float = 5.0
    policy: Mapping[str, float] = field(default_factory=dict)


def application_config(
    catalog: Catalog,
    *,
    gpus: int,
    gpu_memory_gb: float,
    name: str = APP_NAME,
    route_prefix: str = "/",
    tenants_file: str | None = None,
    tenants: dict[str, Any] | None = None,
    gpus_available: bool = True,
    knobs: ScalingKnobs = ScalingKnobs(),
) -> dict[str, Any]:
    """One entry of a Serve config's ``applications`` list."""
    data = catalog.model_dump(mode="json", exclude={"source"})
    args: dict[str, Any] = {"catalog": data, "gpus_available": gpus_available}
    if tenants_file:
        args["tenants_file"] = tenants_file
    if tenants is not None:
        args["tenants"] = tenants
    return {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": BUILDER,
        "args": args,
        "autoscaling_policy": {
            "policy_function": POLICY,
            "policy_kwargs": {
                "catalog": data,
                "gpus": gpus,
                "gpu_memory_gb": gpu_memory_gb,
                **policy_knobs(**knobs.policy),
            },
        },
        "deployments": _deployments(catalog, knobs),
    }


def _deployments(catalog: Catalog, knobs: ScalingKnobs) -> list[dict[str, Any]]:
    """The scheduler (the active replica, reporting its queues, and
    ``server.scheduler.standby`` standbys) and one autoscaled worker per family, with Serve's
    own delays at zero."""
    report = {
        "metrics_interval_s": knobs.metrics_interval_s,
        "look_back_period_s": knobs.look_back_period_s,
    }
    schedulers = 1 + catalog.server.scheduler.standby
    deployments: list[dict[str, Any]] = [
        {
            "name": "scheduler",
            "num_replicas": "auto",
            "autoscaling_config": {
                "min_replicas": schedulers,
                "max_replicas": schedulers,
                **report,
            },
        }
    ]
    for family, shape in replica_shapes(catalog).items():
        deployments.append(
            {
                "name": f"worker-{family}",
                "num_replicas": "auto",
                "autoscaling_config": {
                    "min_replicas": shape.min_replicas,
                    "initial_replicas": max(1, shape.min_replicas),
                    "max_replicas": shape.max_replicas,
                    "upscale_delay_s": 0.0,
                    "downscale_delay_s": 0.0,
                    "downscale_to_zero_delay_s": 0.0,
                    **report,
                },
            }
        )
    return deployments
