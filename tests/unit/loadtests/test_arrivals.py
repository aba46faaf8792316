"""Arrival processes: rates, burstiness and shapes are statistically right for a fixed seed."""

from __future__ import annotations

import numpy as np
import pytest

from genmedia.loadtests.arrivals import (
    Diurnal,
    Gamma,
    Poisson,
    Ramp,
    arrival_times,
    expected_count,
    rate_at,
)


def rng(seed: int = 1) -> np.random.Generator:
    return np.random.default_rng(seed)


def gaps_cv(times: np.ndarray) -> float:
    gaps = np.diff(times)
    return float(gaps.std() / gaps.mean())


def dispersion(times: np.ndarray, duration: float, window: float = 2.0) -> float:
    """Variance / mean of counts per window: 1 for Poisson, about cv² for a renewal process."""
    counts, _ = np.histogram(times, bins=np.arange(0, duration + window, window))
    return float(counts.var() / counts.mean())


def test_poisson_rate_and_exponential_gaps():
    t = arrival_times(Poisson(process="poisson", rate=5.0), 2000.0, rng())
    assert abs(len(t) - 10_000) < 400  # 4 sigma
    assert np.all(np.diff(t) >= 0) and t.min() >= 0 and t.max() < 2000
    assert gaps_cv(t) == pytest.approx(1.0, abs=0.05)
    assert dispersion(t, 2000) == pytest.approx(1.0, abs=0.15)


def test_gamma_keeps_the_rate_and_is_bursty_with_cv_above_one():
    spec = Gamma(process="gamma", rate=5.0, cv=3.0)
    t = arrival_times(spec, 2000.0, rng())
    assert len(t) / 2000 == pytest.approx(5.0, rel=0.1)
    assert gaps_cv(t) == pytest.approx(3.0, rel=0.1)
    assert dispersion(t, 2000) > 4  # far burstier than Poisson (about 1)


def test_gamma_with_cv_below_one_is_regular():
    t = arrival_times(Gamma(process="gamma", rate=5.0, cv=0.3), 2000.0, rng())
    assert len(t) / 2000 == pytest.approx(5.0, rel=0.02)
    assert gaps_cv(t) == pytest.approx(0.3, rel=0.1)
    assert dispersion(t, 2000) < 0.3


def test_ramp_rate_grows_linearly():
    spec = Ramp(process="ramp", from_rate=0.0, to_rate=10.0)
    t = arrival_times(spec, 1000.0, rng())
    counts, _ = np.histogram(t, bins=[0, 250, 500, 750, 1000])
    expected = np.array([312.5, 937.5, 1562.5, 2187.5])  # ∫ rate over each quarter
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected))
    assert len(t) == pytest.approx(expected_count(spec, 1000.0), rel=0.03)


def test_ramp_with_its_own_duration_then_holds():
    spec = Ramp(process="ramp", from_rate=10.0, to_rate=2.0, duration_s=100.0)
    assert float(rate_at(spec, 50.0, 1000.0)) == pytest.approx(6.0)
    assert float(rate_at(spec, 500.0, 1000.0)) == pytest.approx(2.0)
    t = arrival_times(spec, 1000.0, rng())
    late = np.sum(t >= 100.0)
    assert late == pytest.approx(2.0 * 900, rel=0.1)
    assert np.sum(t < 100.0) == pytest.approx(600, rel=0.15)


def test_diurnal_follows_the_sinusoid():
    spec = Diurnal(process="diurnal", mean_rate=4.0, amplitude=0.8, period_s=500.0, phase=0.25)
    t = arrival_times(spec, 2000.0, rng())
    assert len(t) == pytest.approx(expected_count(spec, 2000.0), rel=0.03)
    edges = np.linspace(0, 2000, 41)
    counts, _ = np.histogram(t, bins=edges)
    mid = (edges[:-1] + edges[1:]) / 2
    expected = rate_at(spec, mid, 2000.0) * np.diff(edges)
    assert np.corrcoef(counts, expected)[0, 1] > 0.95
    # phase 0.25 starts at the peak (7.2/s); half a period later is the trough (0.8/s)
    assert np.sum(t < 50) > 4 * np.sum((t >= 225) & (t < 275))


def test_expected_count_matches_the_integral_of_the_rate():
    spec = Diurnal(process="diurnal", mean_rate=2.0, amplitude=0.5, period_s=300.0, phase=0.6)
    grid = np.linspace(0, 700, 700_001)
    numeric = np.trapezoid(rate_at(spec, grid, 700.0), grid)
    assert expected_count(spec, 700.0) == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize(
    "spec",
    [
        Poisson(process="poisson", rate=3.0),
        Gamma(process="gamma", rate=3.0, cv=2.0),
        Ramp(process="ramp", from_rate=1.0, to_rate=5.0),
        Diurnal(process="diurnal", mean_rate=3.0, amplitude=0.5, period_s=60.0),
    ],
)
def test_same_seed_same_times(spec):
    a = arrival_times(spec, 100.0, rng(7))
    b = arrival_times(spec, 100.0, rng(7))
    c = arrival_times(spec, 100.0, rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(arrival_times(spec, 0.0, rng())) == 0
