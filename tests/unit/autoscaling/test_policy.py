"""Scaling policy driven by a fake clock: demand per class, damping, scale to zero, budget."""

from __future__ import annotations

import pytest

from genmedia.autoscaling.policy import (
    Decision,
    FamilyState,
    ModelLoad,
    PolicyConfig,
    RateEstimate,
    Snapshot,
    capacity,
    decide,
    policy_knobs,
    replicas_for,
    useful_replicas,
    zero_blockers,
)
from tests.unit.autoscaling.conftest import catalog, model

# Default request of the test models: 2.62 work units; at 0.1 s a unit a job takes 0.262 s.
RATE = 0.1


def _config(models, workers, gpus=8, **knobs) -> PolicyConfig:
    return PolicyConfig.from_catalog(catalog(models, workers), gpus, 80, **knobs)


class Driver:
    """Calls the policy as the adapter does: the last decision's replicas and state fed back."""

    def __init__(self, config: PolicyConfig, replicas: dict[str, int]):
        self.config = config
        self.replicas = dict(replicas)
        self.state: dict[str, FamilyState] = {}
        self.now = 1000.0
        self.admitted = 0.0  # a counter of admitted work, for the tests that need one

    def step(self, models: dict[str, ModelLoad], dt: float = 1.0) -> Decision:
        self.now += dt
        d = decide(self.config, Snapshot(self.now, dict(self.replicas), models), self.state)
        self.replicas, self.state = dict(d.replicas), d.state
        return d


def _queued(interactive=0.0, batch=0.0, inflight=0.0) -> ModelLoad:
    return ModelLoad({"interactive": interactive, "batch": batch}, inflight)


def test_interactive_work_scales_up_at_once_to_meet_its_target():
    cfg = _config(
        [model("a", slo={"interactive_s": 10.0, "batch_s": 3600})],
        {"sd15": {"min_replicas": 1, "max_replicas": 10}},
    )
    drv = Driver(cfg, {"sd15": 1})
    # 300 units = 30 s of work; drain time = 10 s - 0.262 s: ceil(30 / 9.738) = 4
    d = drv.step({"a": _queued(interactive=300)})
    assert d.replicas == {"sd15": 4}


def test_batch_work_is_held_to_its_own_longer_target():
    cfg = _config(
        [model("a", slo={"interactive_s": 10.0, "batch_s": 100.0})],
        {"sd15": {"min_replicas": 1, "max_replicas": 10}},
    )
    drv = Driver(cfg, {"sd15": 1})
    assert drv.step({"a": _queued(batch=300)}).replicas == {"sd15": 1}  # 30 s within 100 s
    assert drv.step({"a": _queued(batch=3000)}).replicas == {"sd15": 4}  # 300 s: 4 replicas


def test_measured_service_time_overrides_the_catalog_estimate():
    cfg = _config([model("a", slo={"interactive_s": 10.0})], {"sd15": {"max_replicas": 10}})
    drv = Driver(cfg, {"sd15": 1})
    slow = ModelLoad({"interactive": 300}, 0.0, seconds_per_unit=0.3)
    assert drv.step({"a": slow}).replicas == {"sd15": 10}  # 90 s of work, capped at max


def test_downscale_waits_for_the_delay_with_hysteresis():
    cfg = _config(
        [model("a", slo={"interactive_s": 10.0})],
        {"sd15": {"min_replicas": 1, "max_replicas": 10}},
        downscale_delay_s=30.0,
        down_utilisation=0.5,
    )
    drv = Driver(cfg, {"sd15": 1})
    assert drv.step({"a": _queued(interactive=300)}).replicas["sd15"] == 4
    # 150 units need 2 replicas; at 50 % utilisation 4 are still right: no change at all
    for _ in range(60):
        assert drv.step({"a": _queued(interactive=150)}).replicas["sd15"] == 4
    # load gone: nothing happens for 30 s, then straight to the minimum
    seen = [drv.step({"a": _queued()}).replicas["sd15"] for _ in range(40)]
    assert seen[:29] == [4] * 29 and seen[-1] == 1
    assert seen.index(1) in (29, 30)


def test_a_short_dip_does_not_scale_down():
    cfg = _config(
        [model("a", slo={"interactive_s": 10.0})],
        {"sd15": {"max_replicas": 10}},
        downscale_delay_s=30.0,
    )
    drv = Driver(cfg, {"sd15": 1})
    drv.step({"a": _queued(interactive=300)})
    for _ in range(5):
        for _ in range(20):
            assert drv.step({"a": _queued()}).replicas["sd15"] == 4
        drv.step({"a": _queued(interactive=300)})  # load returns before the delay ends


def test_scale_to_zero_after_idle_as_long_as_a_cold_start():
    cfg = _config(
        [model("a", slo={"interactive_s": 120.0}, scaling={"load_s": 55.0})],
        {"sd15": {"min_replicas": 0, "max_replicas": 2}},
        downscale_delay_s=10.0,
    )
    assert zero_blockers(cfg, "sd15") == []
    drv = Driver(cfg, {"sd15": 1})
    seen = [drv.step({"a": _queued()}).replicas["sd15"] for _ in range(70)]
    assert seen[58] == 1 and seen[-1] == 0  # idle 60 s (5 s start + 55 s load), not 10 s
    # work arrives: back to one replica at once
    assert drv.step({"a": _queued(interactive=1)}).replicas["sd15"] == 1


def test_never_to_zero_when_the_cold_start_misses_the_interactive_target():
    models = [model("a", slo={"interactive_s": 20.0}, scaling={"load_s": 30.0})]
    workers = {"sd15": {"min_replicas": 0, "max_replicas": 2}}
    cfg = _config(models, workers, downscale_delay_s=1.0)
    assert "cold start 35 s > interactive target 20 s" in zero_blockers(cfg, "sd15")[0]
    drv = Driver(cfg, {"sd15": 1})
    assert {drv.step({"a": _queued()}).replicas["sd15"] for _ in range(300)} == {1}
    # ... unless the catalog opts the model in
    models[0]["scaling"]["scale_to_zero"] = True
    drv = Driver(_config(models, workers, downscale_delay_s=1.0), {"sd15": 1})
    assert [drv.step({"a": _queued()}).replicas["sd15"] for _ in range(40)][-1] == 0


def test_a_burst_on_one_family_cannot_starve_the_others_minimum():
    models = [
        model("a", "sd15", gpu_fraction=0.5, slo={"interactive_s": 10.0}),
        model("b", "sdxl", gpu_fraction=0.5, slo={"interactive_s": 10.0}),
        model("c", "flux", gpu_fraction=0.5, slo={"interactive_s": 10.0}),
    ]
    workers = {f: {"min_replicas": 1, "max_replicas": 20} for f in ("sd15", "sdxl", "flux")}
    cfg = _config(models, workers, gpus=4)  # room for 8 replicas of half a GPU
    drv = Driver(cfg, {"sd15": 1, "sdxl": 1, "flux": 1})
    d = drv.step({"a": _queued(interactive=10_000)})
    assert d.replicas == {"sd15": 6, "sdxl": 1, "flux": 1}
    assert "GPU budget allows 6 of 20" in d.reasons["sd15"]
    # a second family bursts too: the room above the minimums is shared in turn
    d = drv.step({"a": _queued(interactive=10_000), "b": _queued(interactive=10_000)})
    # (the family with less per replica goes first in each turn)
    assert d.replicas["flux"] == 1 and sorted((d.replicas["sd15"], d.replicas["sdxl"])) == [3, 4]


def test_interactive_pressure_goes_first_when_the_budget_is_short():
    models = [
        model("a", "sd15", gpu_fraction=1.0, memory_gb=10, slo={"interactive_s": 10.0}),
        model("b", "sdxl", gpu_fraction=1.0, memory_gb=10, slo={"interactive_s": 10.0}),
    ]
    workers = {f: {"min_replicas": 0, "max_replicas": 5} for f in ("sd15", "sdxl")}
    cfg = _config(models, workers, gpus=1)
    drv = Driver(cfg, {"sd15": 0, "sdxl": 0})
    d = drv.step({"a": _queued(batch=100), "b": _queued(interactive=100)})
    assert d.replicas == {"sd15": 0, "sdxl": 1}


# --------------------------------------------------------------------------------------------
# Offered load: arrival rates from the scheduler's admitted-work counter
# --------------------------------------------------------------------------------------------


def test_rate_estimate_follows_a_counter_and_its_trend():
    est = RateEstimate(0.0, 0.0)
    for t in range(2, 121, 2):  # 5 units/s
        est = est.update(float(t), 5.0 * t, window_s=10.0, sample_s=2.0)
    assert est.level == pytest.approx(5.0, rel=1e-3) and abs(est.trend) < 1e-3
    assert est.update(121.0, 1000.0, 10.0, 2.0) is est  # closer than sample_s: unchanged
    # a linear ramp, 5 units/s more every 10 s: the forecast looks ahead along the trend
    counter = 600.0
    for t in range(122, 241, 2):
        counter += 2 * (5.0 + 0.5 * (t - 120))
        est = est.update(float(t), counter, 10.0, 2.0)
    now_rate = 5.0 + 0.5 * 120
    assert est.level == pytest.approx(now_rate, rel=0.05)
    assert est.forecast(30.0) == pytest.approx(now_rate + 0.5 * 30, rel=0.05)
    # the scheduler restarted: its counter went back; the rate is kept, the series restarts
    reset = est.update(242.0, 3.0, 10.0, 2.0)
    assert (reset.counter, reset.level, reset.trend) == (3.0, est.level, 0.0)
    # the first rate is taken as it is: no slow start from zero
    first = RateEstimate(0.0, 0.0).update(2.0, 10.0, 10.0, 2.0)
    assert (first.level, first.trend) == (5.0, 0.0)
    # a falling trend is not extrapolated
    assert RateEstimate(0.0, 0.0, level=4.0, trend=-1.0).forecast(30.0) == 4.0


def _arrivals(drv: Driver, rate_units: float, seconds: int, **load) -> Decision:
    """``rate_units`` of interactive work admitted per second for ``seconds``."""
    d = None
    for _ in range(seconds):
        drv.admitted += rate_units
        d = drv.step({"a": ModelLoad(admitted_units={"interactive": drv.admitted}, **load)})
    return d


def test_a_steady_stream_gets_headroom_from_its_slack_and_the_rate_error():
    cfg = _config(
        [model("a", slo={"interactive_s": 10.0})], {"sd15": {"max_replicas": 100}}, gpus=100
    )
    drv = Driver(cfg, {"sd15": 1})
    # 400 units/s x 0.1 s/unit = 40 replicas busy; a job takes s = 0.262 s of a 10 s target:
    # slack headroom s / (T - s) * ln(100) = 0.124, rate error 2 * sqrt(40 * s / 10) = 2.05
    d = _arrivals(drv, 400.0, 120)
    assert d.replicas == {"sd15": 43}


def test_in_flight_work_does_not_feed_back_into_demand():
    """More replicas carry more in-flight work; sizing from it grew replicas without end. The
    same arrivals with ten times the in-flight work ask for the same replicas."""
    cfg = _config(
        [model("a", slo={"interactive_s": 10.0})], {"sd15": {"max_replicas": 500}}, gpus=500
    )
    sizes = []
    for inflight in (40.0, 400.0):
        drv = Driver(cfg, {"sd15": 1})
        sizes.append(_arrivals(drv, 400.0, 120, inflight_units=inflight).replicas["sd15"])
    assert sizes == [43, 43]


def test_batch_work_runs_near_full_utilisation():
    cfg = _config(
        [model("a", slo={"interactive_s": 10.0, "batch_s": 600.0})],
        {"sd15": {"max_replicas": 100}},
        gpus=100,
    )
    drv = Driver(cfg, {"sd15": 1})
    admitted = 0.0
    for _ in range(120):
        admitted += 400.0  # 40 replicas busy, all batch
        d = drv.step({"a": ModelLoad(admitted_units={"batch": admitted})})
    assert d.replicas == {"sd15": 42}  # 40 / 0.97 = 41.2


def test_interactive_need_is_granted_before_any_batch_rest():
    models = [
        model("a", "sd15", gpu_fraction=1.0, memory_gb=10, slo={"interactive_s": 10.0}),
        model("b", "sdxl", gpu_fraction=1.0, memory_gb=10, slo={"batch_s": 100.0}),
    ]
    workers = {f: {"min_replicas": 1, "max_replicas": 50} for f in ("sd15", "sdxl")}
    drv = Driver(_config(models, workers, gpus=20), {"sd15": 1, "sdxl": 1})
    admitted = {"a": 0.0, "b": 0.0}
    for _ in range(60):
        admitted["a"] += 60.0  # 6 replicas of interactive work (+ headroom 0.92: 7)
        admitted["b"] += 400.0  # 40 replicas of batch work: more than the 20 GPUs
        d = drv.step(
            {
                "a": ModelLoad(admitted_units={"interactive": admitted["a"]}),
                "b": ModelLoad(admitted_units={"batch": admitted["b"]}),
            }
        )
    assert d.replicas == {"sd15": 7, "sdxl": 13}
    assert "GPU budget allows 13" in d.reasons["sdxl"]


def test_policy_knobs_have_defaults_and_refuse_unknown_or_out_of_range():
    knobs = policy_knobs(replica_start_s=30)
    assert knobs["replica_start_s"] == 30.0 and knobs["down_utilisation"] == 0.9
    with pytest.raises(ValueError, match=r"unknown autoscaling knob\(s\) \['down_util'\]"):
        policy_knobs(down_util=0.5)
    with pytest.raises(ValueError, match=r"batch_utilisation must be in \(0, 1\], got 1.5"):
        policy_knobs(batch_utilisation=1.5)
    with pytest.raises(ValueError, match="rate_window_s must be > 0"):
        PolicyConfig.from_catalog(catalog([model("a")]), 1, 80, rate_window_s=0)
    with pytest.raises(ValueError, match=r"min_replica_gain must be in \(0, 1\], got 1.5"):
        policy_knobs(min_replica_gain=1.5)
    with pytest.raises(ValueError, match="slowdown_memory_s must be >= 0"):
        policy_knobs(slowdown_memory_s=-1)


def test_capacity_of_replicas_that_slow_each_other():
    assert [capacity(n, 0.0) for n in (0, 1, 4)] == [0.0, 1.0, 4.0]
    assert capacity(2, 1.0) == 1.0 and capacity(3, 0.5) == 1.5  # a shared device: no gain
    # each added replica must add half a replica: 2 / 1.2 - 1 = 0.67, 3 / 1.4 - 1.67 = 0.48
    assert useful_replicas(0.2, 0.5, limit=10) == 2
    assert useful_replicas(0.64, 0.5, limit=10) == 1  # 2 / 1.64 - 1 = 0.22
    assert useful_replicas(0.0, 0.5, limit=10) == 10
    assert replicas_for(2.5, 0.0, 10) == 3
    assert replicas_for(2.5, 0.1, 10) == 3  # 3 / 1.2 = 2.5
    assert replicas_for(2.6, 0.1, 10) == 4  # 4 / 1.3 = 3.08
    assert replicas_for(5.0, 0.5, 10) == 10  # capacity never reaches 2: as many as allowed


def _one_model(**knobs) -> PolicyConfig:
    """One sd15 model with a 10 s interactive target, 1..10 replicas."""
    return _config(
        [model("a", slo={"interactive_s": 10.0})],
        {"sd15": {"min_replicas": 1, "max_replicas": 10}},
        **knobs,
    )


def _contended(slowdown, age_s=1.0, interactive=300.0) -> ModelLoad:
    return ModelLoad({"interactive": interactive}, 0.0, slowdown=slowdown, slowdown_age_s=age_s)


def test_replicas_that_add_no_capacity_are_neither_added_nor_kept():
    cfg = _one_model()
    drv = Driver(cfg, {"sd15": 1})
    assert drv.step({"a": _queued(interactive=300)}).replicas == {"sd15": 4}  # as measured
    # now the scheduler measures each call 0.64 of its solo time slower per call beside it:
    d = drv.step({"a": _contended(0.64)})
    assert d.replicas == {"sd15": 1}  # at once, without the downscale delay
    assert "replicas beyond 1 add under 0.5 of a replica" in d.reasons["sd15"]
    assert drv.step({"a": _contended(0.64, interactive=3000)}).replicas == {"sd15": 1}


def test_a_small_slowdown_is_met_with_more_replicas():
    cfg = _config(
        [model("a", slo={"interactive_s": 10.0})], {"sd15": {"max_replicas": 10}}, gpus=10
    )
    drv = Driver(cfg, {"sd15": 1})
    # 250 units: 2.57 replicas of solo capacity, ceil 3; with 0.1 per concurrent call 3 give
    # only 2.5, 4 give 3.08
    assert drv.step({"a": _contended(0.1, interactive=250)}).replicas == {"sd15": 4}
    drv = Driver(cfg, {"sd15": 1})
    # 400 units want 4.1; a fifth replica would add 3.57 - 3.08 = 0.49 < 0.5 of a replica
    assert drv.step({"a": _contended(0.1, interactive=400)}).replicas == {"sd15": 4}


def test_an_old_slowdown_measurement_is_dropped_so_the_policy_tries_again():
    cfg = _one_model(slowdown_memory_s=120)
    drv = Driver(cfg, {"sd15": 1})
    assert drv.step({"a": _contended(0.64, age_s=100)}).replicas == {"sd15": 1}
    assert drv.step({"a": _contended(0.64, age_s=121)}).replicas == {"sd15": 4}


def test_a_cut_holds_while_its_measurement_is_remembered():
    cfg = _one_model(slowdown_memory_s=120)
    drv = Driver(cfg, {"sd15": 3})
    assert drv.step({"a": _contended(0.40)}).replicas == {"sd15": 1}  # 2 / 1.4 - 1 = 0.43
    # the next reading lands just under the threshold (2 / 1.3 - 1 = 0.54): held at 1
    d = drv.step({"a": _contended(0.30)}, dt=60)
    assert d.replicas == {"sd15": 1}
    assert drv.step({"a": _queued(interactive=300)}, dt=50).replicas == {"sd15": 1}
    # the hold is as old as a measurement the policy forgets: it tries again
    assert drv.step({"a": _queued(interactive=300)}, dt=11).replicas == {"sd15": 4}
    # a deeper cut is taken at once, hold or not
    assert drv.step({"a": _contended(0.10)}).replicas == {"sd15": 4}
    assert drv.step({"a": _contended(0.64)}).replicas == {"sd15": 1}
