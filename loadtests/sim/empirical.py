"""Measured distributions for the simulator's cost profiles: equally spaced quantiles.

``calibrate.py`` turns raw samples into a short quantile list (``quantiles_of``) that lands in a
profile file; the engine draws from it by inverse transform with linear interpolation (``draw``)
with its own seeded generator. No Ray, no torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

DEFAULT_POINTS = 21  # 0 %, 5 %, ..., 100 %


def check_quantiles(values: Sequence[float]) -> list[float]:
    """A usable quantile list: at least two finite values, not negative, not decreasing.
    Raises ``ValueError`` with what is wrong (pydantic reports it under the field's name)."""
    out = [float(v) for v in values]
    if len(out) < 2:
        raise ValueError("needs at least 2 quantiles (the 0 % and the 100 % point)")
    for i, v in enumerate(out):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"quantile {i} is {v}: must be a finite number >= 0")
        if i and v < out[i - 1]:
            raise ValueError(f"quantile {i} ({v}) is below quantile {i - 1} ({out[i - 1]})")
    return out


def draw(quantiles: Sequence[float], u: float) -> float:
    """The value at probability ``u`` in [0, 1) of equally spaced ``quantiles``."""
    pos = u * (len(quantiles) - 1)
    i = int(pos)
    if i >= len(quantiles) - 1:
        return quantiles[-1]
    lo = quantiles[i]
    return lo + (quantiles[i + 1] - lo) * (pos - i)


def mean_of(quantiles: Sequence[float]) -> float:
    """Mean of the piecewise-linear distribution ``draw`` samples from."""
    pairs = itertools.pairwise(quantiles)
    return sum((a + b) / 2 for a, b in pairs) / (len(quantiles) - 1)


def quantiles_of(samples: Sequence[float], points: int = DEFAULT_POINTS) -> list[float]:
    """``points`` equally spaced quantiles of ``samples`` (linear interpolation between order
    statistics, the minimum and the maximum included)."""
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    xs = sorted(float(s) for s in samples)
    if not xs:
        raise ValueError("no samples")
    out = []
    for k in range(points):
        pos = k / (points - 1) * (len(xs) - 1)
        i = int(pos)
        j = min(i + 1, len(xs) - 1)
        out.append(xs[i] + (xs[j] - xs[i]) * (pos - i))
    return out


def normalised(quantiles: Sequence[float]) -> list[float]:
    """The same shape scaled to mean 1 (a duration factor)."""
    m = mean_of(quantiles)
    if m <= 0:
        raise ValueError("quantiles with mean 0 cannot be normalised")
    return [q / m for q in quantiles]
