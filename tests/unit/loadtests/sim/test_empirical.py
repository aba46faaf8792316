"""Measured distributions in the simulator: the quantile helpers, their profile fields (bad
input names the file and the field), and the engine drawing call durations and per-phase
control-plane work from them."""

from __future__ import annotations

import statistics

import pytest
import yaml

from genmedia.loadtests.sim.costs import FamilyCost, Profile, ProfileError, load_profile
from genmedia.loadtests.sim.empirical import (
    check_quantiles,
    draw,
    mean_of,
    normalised,
    quantiles_of,
)
from tests.unit.loadtests.sim.test_engine import ONE_SECOND_STEP, latency, req, run


def test_quantiles_of_known_samples_and_draw_interpolates():
    q = quantiles_of([4.0, 0.0, 2.0], points=5)  # order statistics 0, 2, 4
    assert q == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    assert draw(q, 0.0) == 0.0
    assert draw(q, 0.5) == pytest.approx(2.0)
    assert draw(q, 0.625) == pytest.approx(2.5)  # between two quantiles
    assert draw(q, 0.999999) == pytest.approx(4.0, abs=1e-4)
    assert mean_of(q) == pytest.approx(2.0)
    assert mean_of(normalised(q)) == pytest.approx(1.0)


def test_drawing_many_times_reproduces_the_samples_mean_and_range():
    import random

    samples = [0.8, 0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 1.3, 2.4]  # a long right tail
    q = quantiles_of(samples)
    rng = random.Random(3)
    xs = [draw(q, rng.random()) for _ in range(20_000)]
    assert statistics.fmean(xs) == pytest.approx(mean_of(q), rel=0.01)
    assert min(xs) >= 0.8 and max(xs) <= 2.4
    assert sorted(xs)[int(0.99 * len(xs))] > 1.8  # the tail survives


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ([1.0], "at least 2"),
        ([0.5, -1.0], "quantile 1 is -1.0"),
        ([1.0, 0.5], "quantile 1 (0.5) is below quantile 0"),
        ([0.5, float("nan")], "finite"),
    ],
)
def test_bad_quantiles_say_what_is_wrong(values, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_quantiles(values)


def test_quantiles_of_refuses_no_samples_or_too_few_points():
    with pytest.raises(ValueError, match="no samples"):
        quantiles_of([])
    with pytest.raises(ValueError, match="at least 2"):
        quantiles_of([1.0], points=1)


CP = {"submit_s": [0.1, 0.1], "follow_s": [0.2, 0.2], "done_s": [0.3, 0.3], "after_s": [0, 0]}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"families": {"sd15": {**ONE_SECOND_STEP, "duration_quantiles": [1.2, 0.8]}}},
         "families.sd15.duration_quantiles", "below quantile 0"),
        ({"families": {"sd15": {**ONE_SECOND_STEP, "duration_quantiles": [1.0, 3.0]}}},
         "families.sd15.duration_quantiles", "must have mean 1"),
        ({"families": {"sd15": {**ONE_SECOND_STEP, "cv": 0.3, "duration_quantiles": [0.5, 1.5]}}},
         "families.sd15.duration_quantiles", "cv is set too"),
        ({"control_plane": {**CP, "done_s": [0.3]}}, "control_plane.done_s", "at least 2"),
        ({"control_plane": {k: v for k, v in CP.items() if k != "after_s"}},
         "control_plane.after_s", "field required"),
        ({"control_plane": CP, "control_plane_s": 0.02}, "control_plane",
         "control_plane_s is set too"),
    ],
)  # fmt: skip
def test_bad_measured_fields_name_the_file_and_the_field(tmp_path, change, field, words):
    assert_profile_refused(tmp_path, change, field, words)


def assert_profile_refused(tmp_path, change: dict, field: str, words: str) -> None:
    """A one-family profile with ``change`` is refused naming its file and ``field``."""
    data = {"name": "x", "device": "d", "families": {"sd15": ONE_SECOND_STEP}, **change}
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as e:
        load_profile(f)
    assert e.value.file == str(f) and e.value.field == field
    assert words in str(e.value).lower() and str(f) in str(e.value)


def test_the_calibrated_profile_carries_measured_distributions():
    prof = load_profile("tiny-cpu")
    assert prof.control_plane is not None and prof.control_plane_s == 0
    for fam in ("sd15", "sdxl", "flux"):
        q = prof.cost(fam).duration_quantiles
        assert q is not None and mean_of(q) == pytest.approx(1.0, abs=0.02)


def test_call_durations_follow_the_measured_quantiles_seeded():
    fam = {**ONE_SECOND_STEP, "duration_quantiles": [0.5, 0.75, 1.0, 1.25, 1.5]}
    prof = Profile(name="t", device="t", families={"sd15": fam})
    trace = [req(float(i) * 10, num_inference_steps=4) for i in range(300)]  # never queued
    a, b = run(trace, prof=prof, seed=1), run(trace, prof=prof, seed=1)
    assert a.records == b.records
    assert a.records != run(trace, prof=prof, seed=2).records
    lat = [latency(a, i) for i in range(300)]
    assert statistics.fmean(lat) == pytest.approx(4.0, rel=0.05)
    assert 2.0 <= min(lat) < 2.3 and 5.7 < max(lat) <= 6.0  # 4 s x [0.5, 1.5]


def test_control_plane_phases_queue_one_piece_at_a_time():
    cp = {"submit_s": [0.1, 0.1], "follow_s": [0.2, 0.2], "done_s": [0.3, 0.3],
          "after_s": [0.4, 0.4]}  # fmt: skip
    prof = Profile(name="t", device="t", control_plane=cp, families={"sd15": ONE_SECOND_STEP})
    one = run([req(0.0, num_inference_steps=1)], prof=prof)
    r = one.records[0]
    assert r.t_admitted == pytest.approx(0.1)  # its submit
    assert r.t_done == pytest.approx(0.1 + 1.0 + 0.3)  # compute, then its done phase
    # Two at once: the second's submit waits for the first's submit and follow work.
    two = run([req(0.0, num_inference_steps=1), req(0.0, num_inference_steps=1)], prof=prof)
    assert [x.t_admitted for x in two.records] == pytest.approx([0.1, 0.4])
    # A request sent just after another's final status waits for that one's after work.
    late = run([req(0.0, num_inference_steps=1), req(1.45, num_inference_steps=1)], prof=prof)
    assert late.records[1].t_admitted == pytest.approx(1.4 + 0.4 + 0.1)


def test_family_cost_without_measured_noise_keeps_its_defaults():
    c = FamilyCost(**ONE_SECOND_STEP)
    assert c.duration_quantiles is None and c.cv == 0.0
