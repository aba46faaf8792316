"""The one place the scaling policy meets Ray Serve: an application-level autoscaling policy.

Ray Serve's controller calls ``GenmediaAutoscaler`` about every 0.1 s with an
``AutoscalingContext`` per deployment that has an autoscaling config. The scheduler deployment
reports its queues through ``record_autoscaling_stats`` (``signals.encode``); the adapter reads
the latest report, turns it into a ``policy.Snapshot`` (current replicas = Serve's target, clock
= the context's ``current_time``), runs ``policy.decide`` over all worker families at once (one
GPU budget) and returns replicas per worker deployment. The policy's damping state travels in
Serve's per-deployment ``policy_state``. Serve's own delays are set to zero in the rendered
config (``infra/serve_config.py``) so that only this policy damps.

Each worker replica reports the load time it measured per model through its own
``record_autoscaling_stats`` (``signals.encode_load_times``); the adapter keeps the latest per
model (the largest over a deployment's replicas; remembered while the family is at zero), and
the policy's cold-start figure uses it instead of the catalog's ``scaling.load_s``.

Wired by configuration, not code: ``autoscaling_policy.policy_function`` names this class and
``policy_kwargs`` carry the catalog, the GPU budget and the damping knobs (JSON).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.serve.config import AutoscalingContext

from genmedia.autoscaling.policy import Decision, FamilyState, PolicyConfig, Snapshot, decide
from genmedia.autoscaling.signals import decode, decode_load_times, with_load_times
from genmedia.models.catalog import parse_catalog

logger = logging.getLogger("ray.serve")

SCHEDULER_DEPLOYMENT = "scheduler"
WORKER_PREFIX = "worker-"
STATE_KEY = "genmedia"


def replica_metrics(ctx: AutoscalingContext) -> list[dict[str, float]]:
    """The newest value of every custom metric, per replica."""
    per: dict[Any, dict[str, float]] = {}
    for name, by_replica in (ctx.raw_metrics or {}).items():
        for replica, series in by_replica.items():
            if series:
                per.setdefault(replica, {})[name] = float(series[-1].value)
    return list(per.values())


def measured_load_times(ctx: AutoscalingContext) -> dict[str, float]:
    """Model -> load seconds a worker deployment's replicas measured (the largest)."""
    out: dict[str, float] = {}
    for metrics in replica_metrics(ctx):
        for model, seconds in decode_load_times(metrics).items():
            out[model] = max(seconds, out.get(model, 0.0))
    return out


def latest_metrics(ctx: AutoscalingContext) -> dict[str, float]:
    """The newest value of every custom metric (summed over replicas; the scheduler has one)."""
    out: dict[str, float] = {}
    raw = ctx.raw_metrics or {}
    for name, per_replica in raw.items():
        values = [series[-1].value for series in per_replica.values() if series]
        if values:
            out[name] = float(sum(values))
    if not out:
        for name, by_replica in (ctx.aggregated_metrics or {}).items():
            out[name] = float(sum(by_replica.values()))
    return out


class GenmediaAutoscaler:
    """Application-level policy: replicas of every ``worker-<family>`` from the scheduler's
    queued work. ``catalog`` is the catalog as JSON data; ``gpus`` and ``gpu_memory_gb`` the
    budget; other keyword arguments are ``PolicyConfig`` knobs."""

    def __init__(
        self, catalog: dict[str, Any], gpus: int, gpu_memory_gb: float, **knobs: float
    ) -> None:
        self.config = PolicyConfig.from_catalog(
            parse_catalog(catalog, "<autoscaling policy_kwargs>"), gpus, gpu_memory_gb, **knobs
        )
        self.last: Decision | None = None
        self.load_s: dict[str, float] = {}  # model -> the latest measured load seconds

    def __call__(
        self, contexts: dict[Any, AutoscalingContext]
    ) -> tuple[dict[Any, int], dict[Any, dict[str, Any]]]:
        workers = {
            ctx.deployment_name.removeprefix(WORKER_PREFIX): (dep_id, ctx)
            for dep_id, ctx in contexts.items()
            if ctx.deployment_name.startswith(WORKER_PREFIX)
            and ctx.deployment_name.removeprefix(WORKER_PREFIX) in self.config.shapes
        }
        sched = next(
            (c for c in contexts.values() if c.deployment_name == SCHEDULER_DEPLOYMENT), None
        )
        states = {dep_id: dict(ctx.policy_state or {}) for dep_id, ctx in contexts.items()}
        if sched is None or not workers:
            return {}, states
        now = next((c.current_time for c in contexts.values() if c.current_time), None)
        for _, ctx in workers.values():
            self.load_s.update(measured_load_times(ctx))
        snap = Snapshot(
            now=now if now is not None else time.time(),
            replicas={f: ctx.target_num_replicas for f, (_, ctx) in workers.items()},
            models=with_load_times(decode(latest_metrics(sched)), self.load_s),
        )
        previous = {
            f: FamilyState(**states[dep_id][STATE_KEY])
            for f, (dep_id, _) in workers.items()
            if isinstance(states[dep_id].get(STATE_KEY), dict)
        }
        decision = decide(self.config, snap, previous)
        out = {}
        for f, (dep_id, ctx) in workers.items():
            n = decision.replicas[f]
            states[dep_id][STATE_KEY] = vars(decision.state[f]).copy()
            out[dep_id] = n
            if n != ctx.target_num_replicas:
                logger.info(
                    "genmedia autoscaler: worker-%s %d -> %d (%s)",
                    f,
                    ctx.target_num_replicas,
                    n,
                    decision.reasons[f],
                )
        self.last = decision
        return out, states
