"""Scheduler estimates, pure: seconds per work unit per model and when a queued job starts.

The scheduler answers ``eta_s`` in a job's status and admission checks a deadline against the
predicted start; both read these with ``now`` passed in. The simulator runs the same code.
"""

from __future__ import annotations

from genmedia.deployments.scheduler.queues import QueuedJob


class ServiceTimeEstimator:
    """Per-model seconds per work unit, EWMAs of observed pipeline calls: wall seconds (what a
    call takes, for ETAs) and device seconds (what it costs its device, for the autoscaler;
    ``deployments/worker/device_time.py``)."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.per_cost: dict[str, float] = {}  # wall seconds per work unit
        self.device_per_cost: dict[str, float] = {}  # device seconds per work unit
        self.per_call: dict[str, float] = {}  # fixed seconds per call

    def observe(
        self, model_id: str, cost: float, seconds: float, device_seconds: float | None = None
    ) -> None:
        """One call of ``cost`` units took ``seconds``, of which its device spent
        ``device_seconds`` (None: not measured, taken as ``seconds``)."""
        if cost <= 0 or seconds <= 0:
            return
        self._update(self.per_cost, model_id, seconds / cost)
        if device_seconds is None or device_seconds <= 0:
            device_seconds = seconds
        self._update(self.device_per_cost, model_id, min(device_seconds, seconds) / cost)

    def _update(self, ewma: dict[str, float], model_id: str, rate: float) -> None:
        old = ewma.get(model_id)
        ewma[model_id] = rate if old is None else old + self.alpha * (rate - old)

    def seconds(self, model_id: str, cost: float) -> float | None:
        rate = self.per_cost.get(model_id)
        return None if rate is None else rate * cost


def eta_seconds(
    ahead: list[QueuedJob],
    est: ServiceTimeEstimator,
    capacity: int,
    slot_free_in_s: float | None = 0.0,
) -> float | None:
    """Predicted wait until a job starts: until a slot frees (``slot_free_in_s``, 0 when one is
    free now), plus the work queued ahead of it over the family's capacity. None when a needed
    estimate is missing."""
    if slot_free_in_s is None:
        return None
    total = 0.0
    for j in ahead:
        s = est.seconds(j.model_id, j.cost)
        if s is None:
            return None
        total += s
    return slot_free_in_s + total / max(1, capacity)


def slot_free_in(ends: list[float | None], capacity: int, now: float) -> float | None:
    """Seconds until one of ``capacity`` slots frees, given the expected end of each running
    call (None: no estimate). 0 when a slot is free now."""
    if len(ends) < capacity:
        return 0.0
    known = [e for e in ends if e is not None]
    if not known:
        return None
    return max(0.0, min(known) - now)
