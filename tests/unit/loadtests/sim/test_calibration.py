"""The calibration's and the validation's pure pieces: CPU attribution to a request's phases,
the profile built from measured samples, and the validation's per-round spread and phase
breakdown. No Ray."""

from __future__ import annotations

import itertools

import pytest

from genmedia.loadtests.records import RequestRecord
from genmedia.loadtests.sim.calibrate import build_profile
from genmedia.loadtests.sim.calibrate_serving import CP_PHASES, phase_windows, window_cpu
from genmedia.loadtests.sim.empirical import mean_of
from genmedia.loadtests.sim.validate import phases, spread

SERIES = [(0.0, 0.0), (1.0, 0.1), (2.0, 0.9), (3.0, 1.0)]  # CPU seconds used, cumulative


def test_window_cpu_interpolates_and_takes_off_the_idle_rate():
    assert window_cpu(SERIES, 1.0, 2.0, 0.0) == pytest.approx(0.8)
    assert window_cpu(SERIES, 1.5, 2.5, 0.0) == pytest.approx(0.45)
    assert window_cpu(SERIES, 1.0, 2.0, 0.1) == pytest.approx(0.7)
    assert window_cpu(SERIES, 0.0, 1.0, 0.5) == 0.0  # never below 0


@pytest.mark.parametrize(("t0", "t1", "words"), [(2.0, 1.0, "ends before"), (2.5, 3.5, "outside")])
def test_window_cpu_refuses_bad_windows(t0, t1, words):
    with pytest.raises(ValueError, match=words):
        window_cpu(SERIES, t0, t1, 0.0)


def test_phase_windows_cut_at_202_first_progress_and_final_status():
    r = RequestRecord(index=0, tenant="t", priority="interactive", model="m", images=1,
                      steps=4, t_scheduled=0.0, t_submit=1.0, t_admitted=1.05,
                      t_first_progress=1.2, t_done=1.4)  # fmt: skip
    w = phase_windows(r, next_submit=1.6)
    assert list(w) == list(CP_PHASES)
    assert w["submit"] == (1.0, 1.05) and w["follow"] == (1.05, 1.2)
    assert w["done"] == (1.2, 1.4) and w["after"] == pytest.approx((1.4, 1.6))  # next request
    assert phase_windows(r, None)["after"] == pytest.approx((1.4, 1.7))


FIT = {"step_fixed_s": 0.01, "step_per_image_s": 0.002, "ref_megapixels": 0.004096,
       "cfg_multiplier": 2.0, "vae_per_image_s": 0.007, "pre_s": 0.02, "post_fixed_s": 0.001,
       "store_per_image_s": 0.003, "load_s": 0.2}  # fmt: skip


def test_profile_from_measured_samples_is_valid_and_normalised():
    serving = {
        "factor": {"sd15": 2.0},
        "durations": {"sd15": [0.7, 0.9, 1.0, 1.0, 1.1, 1.6]},
        "control_plane": {ph: [0.01, 0.02, 0.05] for ph in CP_PHASES},
        "submit_s": 0.01,
        "respond_s": 0.02,
    }
    prof = build_profile({"sd15": FIT}, serving)
    sd15 = prof.cost("sd15")
    assert sd15.step_fixed_s == pytest.approx(0.02)  # stack/bare factor applied
    assert mean_of(sd15.duration_quantiles) == pytest.approx(1.0, abs=1e-3)
    assert sd15.cv == 0
    assert prof.control_plane.done_s[0] == 0.01 and prof.control_plane.done_s[-1] == 0.05
    assert (prof.submit_s, prof.respond_s, prof.control_plane_s) == (0.01, 0.02, 0.0)
    bare = build_profile({"sd15": FIT}, None)  # without --serving: no measured noise
    assert bare.control_plane is None and bare.cost("sd15").duration_quantiles is None


def rec(i, lat, priority="batch", admit=0.05, queue=0.01, compute=0.1):
    return RequestRecord(index=i, tenant="t", priority=priority, model="m", images=1, steps=4,
                         t_scheduled=0.0, t_submit=0.0, t_admitted=admit, t_done=lat,
                         status="COMPLETED", queue_s=queue, compute_s=compute)  # fmt: skip


def test_phase_breakdown_splits_latency_into_admit_queue_compute_rest():
    out = phases([[rec(0, 0.2), rec(1, 0.5, queue=0.2)], [rec(0, 0.3)]])
    assert out["admit"]["p50"] == pytest.approx(0.05)
    assert out["queue"]["max"] == pytest.approx(0.2)
    assert out["rest"]["max"] == pytest.approx(0.5 - 0.05 - 0.2 - 0.1)


def test_spread_over_rounds():
    rounds = [{"all": {"p50_s": p, "p99_s": 2 * p, "throughput_images_per_s": 1.0}}
              for p in (0.1, 0.3, 0.2)]  # fmt: skip
    s = spread(rounds)
    assert s["p99_s"] == {"min": 0.2, "median": 0.4, "max": 0.6}


def test_cpu_sampler_counts_a_process_once_even_when_a_refresh_misses_it():
    import os
    import subprocess
    import sys
    import time

    from genmedia.loadtests.sim.calibrate_serving import CpuSampler

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        include = {"on": True}
        sampler = CpuSampler(os.getpid(), lambda cmd: include["on"] and "process_time" in cmd)
        start = time.monotonic()
        sampler._refresh()
        totals = [sampler._total()]
        for i in range(12):
            time.sleep(0.05)
            include["on"] = i % 3 != 1  # the child drops out of one refresh in three
            sampler._refresh()
            totals.append(sampler._total())
        elapsed = time.monotonic() - start
    finally:
        child.kill()
        child.wait()
    steps = [b - a for a, b in itertools.pairwise(totals)]
    assert min(steps) >= 0.0
    # never more CPU than the machine's cores could give in the time (no double counting)
    assert totals[-1] - totals[0] <= elapsed * (os.cpu_count() or 1) + 0.05
    assert totals[-1] - totals[0] > 0.1  # the busy child was counted


@pytest.mark.parametrize(
    ("title", "on_path"),
    [
        ("ray::ProxyActor", True),
        ("ray::ServeReplica:genmedia:gateway", True),
        ("ray::ServeReplica:genmedia:scheduler.watch", True),
        ("ray::ServeReplica:genmedia:worker-sd15", False),
        ("ray::ServeReplica:genmedia:worker-sd15.handle_request_with_rejection", False),
        ("ray::ServeReplica:genmedia:worker-flux     ", False),
        ("ray::ServeController", False),
        ("/usr/bin/raylet --x", False),
    ],
)
def test_only_serves_proxy_and_non_worker_replicas_are_on_a_requests_way(title, on_path):
    from genmedia.loadtests.sim.calibrate_serving import serve_process_on_path

    workers = ["worker-sd15", "worker-sdxl", "worker-flux"]
    assert serve_process_on_path(title, workers) is on_path
