"""The load time a worker replica measures reaches the policy's cold-start figure: worker
``LoadTimes`` -> its ``record_autoscaling_stats`` metrics -> the Serve adapter -> ``decide``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genmedia.autoscaling import policy
from genmedia.autoscaling.policy import ModelLoad, PolicyConfig, Snapshot, zero_blockers
from genmedia.autoscaling.serve_adapter import GenmediaAutoscaler, measured_load_times
from genmedia.autoscaling.signals import (
    decode_load_times,
    encode,
    encode_load_times,
    with_load_times,
)
from genmedia.deployments.worker.load_times import LoadTimes
from tests.unit.autoscaling.conftest import catalog, model

MODELS = [model("a", slo={"interactive_s": 20.0}, scaling={"load_s": 30.0})]
WORKERS = {"sd15": {"min_replicas": 0, "max_replicas": 2}}


@dataclass
class _Point:
    value: float


@dataclass
class _Ctx:
    """The fields of Serve's AutoscalingContext the adapter reads."""

    deployment_name: str
    raw_metrics: dict[str, dict[str, list[_Point]]]
    target_num_replicas: int = 1
    current_time: float = 1000.0
    policy_state: dict[str, Any] = field(default_factory=dict)
    aggregated_metrics: dict[str, Any] = field(default_factory=dict)


def _raw(per_replica: dict[str, dict[str, float]]) -> dict[str, dict[str, list[_Point]]]:
    out: dict[str, dict[str, list[_Point]]] = {}
    for replica, metrics in per_replica.items():
        for name, value in metrics.items():
            out.setdefault(name, {})[replica] = [_Point(value)]
    return out


@dataclass
class _Loaded:
    load_s: float
    load_phases: dict = field(default_factory=dict)


def test_round_trip_and_merge() -> None:
    metrics = encode_load_times({"a": 2.5, "b": 0.75})
    assert decode_load_times({**metrics, "queued|a|batch": 3.0, "load|zero": 0.0}) == {
        "a": 2.5,
        "b": 0.75,
    }
    merged = with_load_times({"a": ModelLoad(inflight_units=1.0)}, {"a": 2.5, "b": 0.75})
    assert merged["a"].load_s == 2.5 and merged["a"].inflight_units == 1.0
    assert merged["b"].load_s == 0.75


def test_measured_load_replaces_the_catalog_guess() -> None:
    cfg = PolicyConfig.from_catalog(catalog(MODELS, WORKERS), 8, 80)
    assert "cold start 35 s" in zero_blockers(cfg, "sd15")[0]  # 5 s start + the guessed 30 s
    snap = Snapshot(1000.0, {"sd15": 1}, {"a": ModelLoad(load_s=2.0)})
    assert zero_blockers(cfg, "sd15", snap) == []  # 5 s + the measured 2 s fits 20 s
    assert policy.cold_start_s(cfg, cfg.models["sd15"]["a"], snap.models["a"]) == 7.0


def test_worker_load_time_reaches_the_policy(monkeypatch) -> None:
    times = LoadTimes("sd15")
    times.record("a", _Loaded(2.0, {"weights_s": 1.5, "kernels_s": 0.1, "bytes": 1000}))
    other = LoadTimes("sd15")
    other.record("a", _Loaded(3.0))
    assert times.info()["a"]["phases"] == {"weights_s": 1.5, "kernels_s": 0.1}
    assert b"genmedia_model_last_load_seconds" in times.metrics.render()

    worker = _Ctx(
        "worker-sd15",
        _raw({"r1": times.autoscaling_stats(), "r2": other.autoscaling_stats()}),
    )
    assert measured_load_times(worker) == {"a": 3.0}  # the slowest replica's
    sched = _Ctx("scheduler", _raw({"s": encode([], [], {}, ["a"])}))
    seen: list[Snapshot] = []
    real = policy.decide

    def spy(config, snap, state):
        seen.append(snap)
        return real(config, snap, state)

    monkeypatch.setattr("genmedia.autoscaling.serve_adapter.decide", spy)
    scaler = GenmediaAutoscaler(catalog(MODELS, WORKERS).model_dump(mode="json"), 8, 80)
    scaler({"w": worker, "s": sched})
    assert seen[-1].models["a"].load_s == 3.0
    # the family went to zero: no replica reports, the last measurement is kept
    scaler({"w": _Ctx("worker-sd15", {}, target_num_replicas=0), "s": sched})
    assert seen[-1].models["a"].load_s == 3.0
    assert zero_blockers(scaler.config, "sd15", seen[-1]) == []
