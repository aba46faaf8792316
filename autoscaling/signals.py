"""The autoscaling signals the scheduler records and the adapter reads, as flat metrics.

Ray Serve carries a deployment's ``record_autoscaling_stats()`` to the controller as a mapping
of metric name to number; the scheduler (``deployments/serve/scheduler.py``) encodes its queues with
``encode`` and the adapter (``serve_adapter.py``) decodes them into the policy's ``ModelLoad``.
Each family worker replica reports the load time it measured per model (``encode_load_times``);
the adapter keeps the latest per model (``decode_load_times``, ``with_load_times``), which
replaces the catalog's ``scaling.load_s`` guess in the policy's cold-start figure. Pure; no Ray.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace

from genmedia.autoscaling.policy import CLASSES, ModelLoad

SEP = "|"


def encode(
    queued: Iterable[tuple[str, str, float]],
    running: Iterable[tuple[str, float]],
    seconds_per_unit: Mapping[str, float],
    models: Iterable[str],
    admitted: Mapping[tuple[str, str], float] | None = None,
    slowdown: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """Metrics from queued jobs (model, class, units), running calls (model, units), measured
    seconds per unit, the units admitted per (model, class) so far (a counter) and, where
    measured, each model's slowdown per concurrent call with its age in seconds; every model
    gets its zeros, so idle is a value, not a gap."""
    out: dict[str, float] = {}
    for m in models:
        for cls in CLASSES:
            out[f"queued{SEP}{m}{SEP}{cls}"] = 0.0
            out[f"admitted{SEP}{m}{SEP}{cls}"] = 0.0
        out[f"inflight{SEP}{m}"] = 0.0
    for (m, cls), units in (admitted or {}).items():
        out[f"admitted{SEP}{m}{SEP}{cls}"] = float(units)
    for m, cls, units in queued:
        key = f"queued{SEP}{m}{SEP}{cls}"
        out[key] = out.get(key, 0.0) + units
    for m, units in running:
        key = f"inflight{SEP}{m}"
        out[key] = out.get(key, 0.0) + units
    for m, rate in seconds_per_unit.items():
        out[f"rate{SEP}{m}"] = float(rate)
    for m, (per_call, age_s) in (slowdown or {}).items():
        out[f"slowdown{SEP}{m}"] = float(per_call)
        out[f"slowdown_age{SEP}{m}"] = float(age_s)
    return out


def decode(metrics: Mapping[str, float]) -> dict[str, ModelLoad]:
    """Per model load from ``encode``'s metrics (unknown names are ignored)."""
    queued: dict[str, dict[str, float]] = defaultdict(dict)
    admitted: dict[str, dict[str, float]] = defaultdict(dict)
    inflight: dict[str, float] = {}
    rate: dict[str, float] = {}
    slowdown: dict[str, float] = {}
    slowdown_age: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split(SEP)
        if parts[0] == "queued" and len(parts) == 3:
            queued[parts[1]][parts[2]] = float(value)
        elif parts[0] == "admitted" and len(parts) == 3:
            admitted[parts[1]][parts[2]] = float(value)
        elif parts[0] == "inflight" and len(parts) == 2:
            inflight[parts[1]] = float(value)
        elif parts[0] == "rate" and len(parts) == 2 and value > 0:
            rate[parts[1]] = float(value)
        elif parts[0] == "slowdown" and len(parts) == 2 and value >= 0:
            slowdown[parts[1]] = float(value)
        elif parts[0] == "slowdown_age" and len(parts) == 2 and value >= 0:
            slowdown_age[parts[1]] = float(value)
    return {
        m: ModelLoad(
            dict(queued.get(m, {})),
            inflight.get(m, 0.0),
            rate.get(m),
            admitted_units=dict(admitted[m]) if m in admitted else None,
            slowdown=slowdown.get(m),
            slowdown_age_s=slowdown_age.get(m, 0.0) if m in slowdown else None,
        )
        for m in set(queued) | set(inflight) | set(rate) | set(admitted)
    }


def encode_load_times(load_s: Mapping[str, float]) -> dict[str, float]:
    """A worker replica's measured load seconds per model, as metrics (``load|<model>``)."""
    return {f"load{SEP}{m}": float(s) for m, s in load_s.items()}


def decode_load_times(metrics: Mapping[str, float]) -> dict[str, float]:
    """Model -> measured load seconds from ``encode_load_times``'s metrics (others ignored)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split(SEP)
        if parts[0] == "load" and len(parts) == 2 and value > 0:
            out[parts[1]] = float(value)
    return out


def with_load_times(
    models: Mapping[str, ModelLoad], load_s: Mapping[str, float]
) -> dict[str, ModelLoad]:
    """``models`` with each measured load time set (a model without a load entry gets one)."""
    out = dict(models)
    for m, seconds in load_s.items():
        out[m] = replace(out.get(m, ModelLoad()), load_s=seconds)
    return out
