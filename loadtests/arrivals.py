"""Arrival processes of a load-test scenario: when the requests of one stream arrive.

Each process is a described pydantic spec (the ``arrival`` block of a stream in a scenario YAML)
and a pure generator ``arrival_times(spec, duration_s, rng)`` → sorted seconds in
``[0, duration_s)``. Same spec and seed, same times. ``scenarios.py`` turns the times into trace
records; no HTTP, no Ray.

- ``poisson(rate)``: independent arrivals, exponential gaps (coefficient of variation 1).
- ``gamma(rate, cv)``: renewal process with gamma gaps; ``cv`` > 1 is burstier than Poisson,
  < 1 more regular (vLLM's ``--burstiness`` is 1 / cv²).
- ``ramp(from_rate, to_rate)``: Poisson with a rate moving linearly over the window.
- ``diurnal(mean_rate, amplitude, period_s, phase)``: Poisson with a sinusoidal rate
  ``mean · (1 + amplitude · sin(2π (t / period + phase)))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Poisson(_Spec):
    """Independent arrivals at a constant mean rate."""

    process: Literal["poisson"] = Field(description="Process name.")
    rate: float = Field(gt=0, description="Mean arrivals per second.")


class Gamma(_Spec):
    """Renewal process with gamma-distributed gaps: bursts when cv > 1."""

    process: Literal["gamma"] = Field(description="Process name.")
    rate: float = Field(gt=0, description="Mean arrivals per second.")
    cv: float = Field(
        gt=0,
        le=20,
        description="Coefficient of variation of the gaps: 1 is Poisson, above 1 is bursty, "
        "below 1 is more regular.",
    )


class Ramp(_Spec):
    """Poisson arrivals whose rate moves linearly from ``from_rate`` to ``to_rate``."""

    process: Literal["ramp"] = Field(description="Process name.")
    from_rate: float = Field(ge=0, description="Arrivals per second at the start of the window.")
    to_rate: float = Field(ge=0, description="Arrivals per second at the end of the window.")
    duration_s: float = Field(
        default=0,
        ge=0,
        description="Seconds the ramp lasts (0: the whole window); the rate then stays at to_rate.",
    )


class Diurnal(_Spec):
    """Poisson arrivals with a sinusoidal daily (or shorter) rate cycle."""

    process: Literal["diurnal"] = Field(description="Process name.")
    mean_rate: float = Field(gt=0, description="Mean arrivals per second over a period.")
    amplitude: float = Field(
        ge=0, le=1, description="Relative swing: the rate goes from mean·(1-a) to mean·(1+a)."
    )
    period_s: float = Field(gt=0, description="Seconds per cycle (86400 for a real day).")
    phase: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Where in the cycle the run starts, as a fraction of the period (0.25 "
        "starts at the peak, 0.75 at the trough).",
    )


ArrivalSpec = Poisson | Gamma | Ramp | Diurnal
Arrival = Annotated[ArrivalSpec, Field(discriminator="process")]


def rate_at(spec: ArrivalSpec, t: np.ndarray | float, duration_s: float) -> np.ndarray:
    """The process's mean rate (arrivals per second) at time(s) ``t`` of a window."""
    t = np.asarray(t, dtype=float)
    if isinstance(spec, Poisson | Gamma):
        return np.full_like(t, spec.rate)
    if isinstance(spec, Ramp):
        span = spec.duration_s or duration_s
        return spec.from_rate + (spec.to_rate - spec.from_rate) * np.minimum(1.0, t / span)
    w, p = 2 * math.pi / spec.period_s, 2 * math.pi * spec.phase
    return spec.mean_rate * (1.0 + spec.amplitude * np.sin(w * t + p))


def expected_count(spec: ArrivalSpec, duration_s: float) -> float:
    """Mean number of arrivals of the process in ``[0, duration_s)``."""
    if isinstance(spec, Poisson | Gamma):
        return spec.rate * duration_s
    if isinstance(spec, Ramp):
        span = min(spec.duration_s or duration_s, duration_s)
        end = float(rate_at(spec, span, duration_s))
        return (spec.from_rate + end) / 2 * span + spec.to_rate * (duration_s - span)
    # Diurnal: mean over the window of the sinusoid, in closed form.
    w = 2 * math.pi / spec.period_s
    p = 2 * math.pi * spec.phase
    integral = (math.cos(p) - math.cos(w * duration_s + p)) / w
    return spec.mean_rate * (duration_s + spec.amplitude * integral)


def _poisson(rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    n = rng.poisson(rate * duration_s)
    return np.sort(rng.uniform(0.0, duration_s, n))


def _gamma(rate: float, cv: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    # First arrival from the stationary (equilibrium) start, so a short window is not biased by
    # a burst that always begins at t = 0: a uniform fraction of one gap.
    chunks = [rng.uniform() * rng.gamma(shape, scale, 1)]
    total = float(chunks[0][-1])
    batch = max(16, int(rate * duration_s * 1.1) + 16)
    while total < duration_s:
        gaps = rng.gamma(shape, scale, batch)
        chunk = total + np.cumsum(gaps)
        chunks.append(chunk)
        total = float(chunk[-1])
    times = np.concatenate(chunks)
    return times[times < duration_s]


def _thinned(
    rate_fn: Callable[[np.ndarray], np.ndarray],
    max_rate: float,
    duration_s: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A non-homogeneous Poisson process by thinning (Lewis and Shedler)."""
    if max_rate <= 0:
        return np.empty(0)
    candidates = _poisson(max_rate, duration_s, rng)
    keep = rng.uniform(0.0, max_rate, len(candidates)) < rate_fn(candidates)
    return candidates[keep]


def arrival_times(spec: ArrivalSpec, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted arrival times in ``[0, duration_s)`` of one process; pure given the rng."""
    if duration_s <= 0:
        return np.empty(0)
    if isinstance(spec, Poisson):
        return _poisson(spec.rate, duration_s, rng)
    if isinstance(spec, Gamma):
        return _gamma(spec.rate, spec.cv, duration_s, rng)
    if isinstance(spec, Ramp):
        peak = max(spec.from_rate, spec.to_rate)
    else:
        peak = spec.mean_rate * (1.0 + spec.amplitude)
    return _thinned(lambda t: rate_at(spec, t, duration_s), peak, duration_s, rng)
