"""The load time a family worker replica measured for each model it loaded: the pure part.

Sits beside the worker deployment (``serve/worker.py``): every model load at replica start (or
on demand, LRU) is recorded here once. The figures go three ways: the replica's ready/info
answers (``/readyz`` through the scheduler), its Prometheus registry (``metrics.WorkerMetrics``)
and its ``record_autoscaling_stats`` (``autoscaling/signals.encode_load_times``), from which the
autoscaling policy takes each model's cold-start figure instead of the catalog's guess. No Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from genmedia.autoscaling.signals import encode_load_times
from genmedia.deployments.metrics import WorkerMetrics


class _Loaded(Protocol):
    """What ``runner.LoadedModel`` gives (kept structural so tests can pass a stand-in)."""

    load_s: float
    load_phases: dict


@dataclass(frozen=True)
class LoadTime:
    """One model's latest measured load on this replica."""

    model_id: str
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    bytes: int = 0
    at: float = 0.0  # wall-clock time the load finished

    def as_dict(self) -> dict[str, Any]:
        return {
            "load_s": round(self.seconds, 6),
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "bytes": self.bytes,
            "at": self.at,
        }


class LoadTimes:
    """The replica's measured load times, per model (the latest load wins)."""

    def __init__(self, family: str, metrics: WorkerMetrics | None = None) -> None:
        self.family = family
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.by_model: dict[str, LoadTime] = {}

    def record(self, model_id: str, model: _Loaded, now: float | None = None) -> LoadTime:
        """Note one finished load and update the metrics."""
        raw = dict(model.load_phases or {})
        phases = {
            k: float(v) for k, v in raw.items() if isinstance(v, int | float) and k != "bytes"
        }
        entry = LoadTime(
            model_id,
            float(model.load_s),
            phases,
            int(raw.get("bytes", 0) or 0),
            time.time() if now is None else now,
        )
        self.by_model[model_id] = entry
        m = self.metrics
        m.load_seconds.labels(model_id, self.family).observe(entry.seconds)
        m.last_load_seconds.labels(model_id, self.family).set(entry.seconds)
        m.load_bytes.labels(model_id, self.family).set(entry.bytes)
        for phase, seconds in phases.items():
            m.load_phase_seconds.labels(model_id, self.family, phase).set(seconds)
        return entry

    def seconds(self) -> dict[str, float]:
        return {m: e.seconds for m, e in self.by_model.items()}

    def autoscaling_stats(self) -> dict[str, float]:
        """What the replica's ``record_autoscaling_stats`` returns."""
        return encode_load_times(self.seconds())

    def info(self) -> dict[str, dict[str, Any]]:
        """Model -> its load figures, for the ready/info answers."""
        return {m: e.as_dict() for m, e in self.by_model.items()}
