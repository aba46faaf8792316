"""The autoscaling benchmark's adapter of Ray Serve's default policy (no Ray cluster started)."""

from __future__ import annotations

import math

import pytest
from bench_autoscaling import CATALOG, Meter, RayDefaultScaler, gpu_hours
from ray.serve.autoscaling_policy import (
    _apply_autoscaling_config,
    replica_queue_length_autoscaling_policy,
)

from genmedia.loadtests.sim.scaling import ClusterSnapshot, FamilySnapshot
from genmedia.models.catalog import load_catalog


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(CATALOG)


def fam(name: str, ready: int, queued: int = 0, running: int = 0, starting: int = 0):
    return FamilySnapshot(
        family=name,
        replicas=ready,
        starting=starting,
        queued={"interactive": queued, "batch": 0},
        queued_cost={"interactive": 0.0, "batch": 0.0},
        running_calls=0,
        busy_replicas=0,
        arrivals=0,
        completed=0,
        oldest_wait_s={"interactive": 0.0, "batch": 0.0},
        running_jobs=running,
    )


def snap(now: float, **families: tuple[int, int, int]) -> ClusterSnapshot:
    return ClusterSnapshot(
        now=now,
        interval_s=1.0,
        gpus=1000,
        free_gpu=900.0,
        families={f: fam(f, *v) for f, v in families.items()},
        occupied_gpus=100,
    )


def test_matches_rays_wrapped_default_policy_without_delays(catalog):
    """With no delays the adapter decides what Ray's own wrapped policy plus bounds decides."""
    scaler = RayDefaultScaler(catalog, target_ongoing_requests=2.0, upscale_delay_s=0.0)
    ray_policy = _apply_autoscaling_config(replica_queue_length_autoscaling_policy)
    for ready, queued, running in [(4, 40, 8), (4, 0, 1), (10, 300, 20), (8, 3, 2)]:
        scaler.samples["sd15"].clear()
        scaler.target["sd15"] = ready
        s = snap(100.0, sd15=(ready, queued, running))
        ctx = scaler.context("sd15", s)
        expected, _ = ray_policy(ctx)
        cfg = scaler.configs["sd15"]
        expected = max(cfg.min_replicas, min(cfg.max_replicas, math.ceil(expected)))
        scaler.samples["sd15"].clear()
        assert scaler.decide("sd15", s) == expected


def test_requests_are_queued_plus_running_averaged_over_look_back(catalog):
    scaler = RayDefaultScaler(catalog, target_ongoing_requests=2.0, look_back_period_s=30.0)
    scaler.context("sd15", snap(0.0, sd15=(4, 100, 0)))
    ctx = scaler.context("sd15", snap(10.0, sd15=(4, 0, 20)))
    assert ctx.total_num_requests == pytest.approx(60.0)  # mean of 100 and 20
    ctx = scaler.context("sd15", snap(35.0, sd15=(4, 0, 40)))
    assert ctx.total_num_requests == pytest.approx(30.0)  # the sample at t=0 left the window


def test_upscale_waits_the_delay_on_the_simulated_clock(catalog):
    scaler = RayDefaultScaler(catalog, target_ongoing_requests=2.0, upscale_delay_s=30.0)
    busy = {"sd15": (4, 40, 8), "sdxl": (4, 0, 0), "flux": (8, 0, 0)}
    assert scaler(snap(0.0, **busy))["sd15"] == 4
    assert scaler(snap(29.0, **busy))["sd15"] == 4
    assert scaler(snap(30.0, **busy))["sd15"] == 24  # 48 requests / 2 per replica


def test_downscale_never_goes_below_min_replicas(catalog):
    scaler = RayDefaultScaler(catalog, downscale_delay_s=0.0, upscale_delay_s=0.0)
    scaler.target["flux"] = 50
    out = scaler(snap(0.0, flux=(50, 0, 0)))
    assert out["flux"] == catalog.worker("flux").min_replicas


def test_meter_integrates_provisioned_gpus():
    meter = Meter(lambda s: {})
    meter(snap(0.0, sd15=(4, 0, 0)))
    meter(snap(2.0, sd15=(4, 0, 0)))
    # 100 GPUs for 2 s, then 100 for the last tick's 1 s
    assert gpu_hours(meter.ticks, "gpus_occupied") == pytest.approx(300 / 3600)
    assert meter.ticks[0]["replicas.sd15"] == 4
