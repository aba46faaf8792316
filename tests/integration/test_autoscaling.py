"""The autoscaling policy on a real Ray Serve: load on one model scales its worker up, and the
worker scales back down when idle.

A separate small app ("genmedia-autoscale", one sd15 worker, 1..2 replicas, no GPU asks: the
session app holds the logical GPU) is deployed from the rendered Serve config through the same
declarative path KubeRay uses, on the session's Ray cluster, and deleted after.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.conftest import API_KEY, make_tenants

pytestmark = pytest.mark.integration

APP = "genmedia-autoscale"
PREFIX = "/autoscale"


def _replicas(serve) -> int:
    """Replicas of the worker that are starting or running (a decision shows as STARTING)."""
    app = serve.status().applications.get(APP)
    if app is None or "worker-sd15" not in app.deployments:
        return -1
    states = app.deployments["worker-sd15"].replica_states
    return sum(v for k, v in states.items() if str(k).split(".")[-1] in ("STARTING", "RUNNING"))


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_queued_work_scales_a_worker_up_then_down_when_idle(serve_app, tmp_path):
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from genmedia.infra.serve_config import ScalingKnobs, application_config

    base_url, session_catalog = serve_app
    tiny = session_catalog.model("sd15-tiny")
    entry = tiny.model_copy(
        update={
            "slo": tiny.slo.model_copy(update={"interactive_s": 0.5}),
            "scaling": tiny.scaling.model_copy(update={"load_s": 1.0}),
        }
    )
    server = session_catalog.server.model_copy(
        update={
            "scheduler": session_catalog.server.scheduler.model_copy(
                update={
                    "job_store": str(tmp_path / "jobs.sqlite"),
                    "job_store_password_env": None,
                    "standby": 0,
                }
            )
        }
    )
    catalog = session_catalog.model_copy(
        update={
            "models": [entry],
            "workers": {
                "sd15": session_catalog.worker("sd15").model_copy(
                    update={"num_cpus": 0.25, "min_replicas": 1, "max_replicas": 2}
                )
            },
            "server": server,
        }
    )
    config = application_config(
        catalog,
        gpus=1,
        gpu_memory_gb=24,
        name=APP,
        route_prefix=PREFIX,
        tenants=make_tenants().model_dump(mode="json"),
        gpus_available=False,
        knobs=ScalingKnobs(
            metrics_interval_s=0.5, look_back_period_s=2.0, policy={"downscale_delay_s": 3.0}
        ),
    )
    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [config]}))
    try:
        _wait(lambda: _replicas(serve) == 1, 60, "the app to start with one worker")
        url = base_url + PREFIX
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            ids = []
            for i in range(80):
                r = http.post(
                    "/v1/queue/models/sd15-tiny",
                    json={
                        "prompt": f"fox {i}",
                        "seed": i,
                        "num_inference_steps": 8,
                        "priority": "interactive",
                    },
                )
                assert r.status_code == 202, r.text
                ids.append(r.json()["request_id"])
            _wait(lambda: _replicas(serve) == 2, 40, "a second worker replica")

            def done() -> bool:
                return all(
                    http.get(f"/v1/queue/requests/{j}/status").json()["status"] == "COMPLETED"
                    for j in ids
                )

            _wait(done, 90, "the queued jobs to complete")
        _wait(lambda: _replicas(serve) == 1, 40, "the worker to scale back down when idle")
    finally:
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": []}))
        _wait(lambda: APP not in serve.status().applications, 60, "the app to be deleted")
