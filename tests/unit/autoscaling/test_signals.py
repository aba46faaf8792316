"""The scheduler's autoscaling metrics survive the trip to the policy."""

from __future__ import annotations

from genmedia.autoscaling.policy import ModelLoad
from genmedia.autoscaling.signals import decode, encode


def test_round_trip_sums_jobs_and_keeps_idle_models():
    metrics = encode(
        [("a", "interactive", 1.5), ("a", "interactive", 0.5), ("a", "batch", 4.0)],
        [("a", 2.0), ("b", 1.0)],
        {"a": 0.25},
        ["a", "b", "c"],
        {("a", "interactive"): 12.0, ("a", "batch"): 30.0},
    )
    loads = decode(metrics)
    assert loads["a"] == ModelLoad(
        {"interactive": 2.0, "batch": 4.0}, 2.0, 0.25, None, {"interactive": 12.0, "batch": 30.0}
    )
    idle = {"interactive": 0.0, "batch": 0.0}
    assert loads["b"] == ModelLoad(idle, 1.0, None, None, idle)
    assert loads["c"].inflight_units == 0.0 and loads["c"].seconds_per_unit is None


def test_a_measured_slowdown_and_its_age_reach_the_policy():
    metrics = encode([], [], {}, ["a", "b"], None, {"a": (0.64, 12.5)})
    loads = decode(metrics)
    assert loads["a"].slowdown == 0.64 and loads["a"].slowdown_age_s == 12.5
    assert loads["b"].slowdown is None and loads["b"].slowdown_age_s is None


def test_unknown_metric_names_are_ignored():
    assert decode({"ray_something": 3.0, "queued|a": 1.0}) == {}
