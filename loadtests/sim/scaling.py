"""The simulator's hook for scaling policies: every ``interval_s`` the engine hands a ``Scaler``
a snapshot of the cluster and applies the replicas per family it returns (added replicas are
placed on free GPU room and become ready after start-up and model loads; removed ones stop
taking work and leave when idle). Autoscaling policies of ``genmedia.autoscaling`` plug in here
through a small adapter from this snapshot to their own input. No Ray imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from genmedia.models.catalog import Catalog


@dataclass(frozen=True)
class FamilySnapshot:
    """What a scaling policy sees of one family worker at one tick."""

    family: str
    replicas: int  # ready and taking work
    starting: int  # placed, not ready yet
    queued: dict[str, int]  # jobs waiting per class
    queued_cost: dict[str, float]  # work units waiting per class
    running_calls: int  # pipeline calls routed to replicas (main + preempt slots)
    busy_replicas: int  # replicas whose step gate is held
    arrivals: int  # jobs admitted since the last tick
    completed: int  # jobs completed since the last tick
    oldest_wait_s: dict[str, float]  # age of the oldest queued job per class (0 if none)
    running_jobs: int = 0  # jobs in the running calls (a batched call serves several)


@dataclass(frozen=True)
class ModelSnapshot:
    """One model's work at one tick, in work units (images x steps x megapixels)."""

    queued_units: dict[str, float]  # per class
    inflight_units: float  # of the calls dispatched and not finished
    seconds_per_unit: float | None  # the scheduler's estimate (EWMA of observed calls)
    load_s: float  # cost of loading it into a replica
    admitted_units: dict[str, float] = field(default_factory=dict)  # per class, since the start


@dataclass(frozen=True)
class ClusterSnapshot:
    """The cluster at one tick."""

    now: float
    interval_s: float
    gpus: int
    free_gpu: float  # unreserved GPU fractions summed over devices
    families: dict[str, FamilySnapshot]
    models: dict[str, ModelSnapshot] = field(default_factory=dict)
    occupied_gpus: int = 0  # GPUs holding at least one replica (starting, ready or draining)


Scaler = Callable[[ClusterSnapshot], dict[str, int]]
"""Desired replicas per family (families left out keep theirs)."""


def autoscaling_scaler(
    catalog: Catalog, gpus: int, gpu_memory_gb: float = 80.0, **knobs: float
) -> Scaler:
    """The SLO-aware policy of ``genmedia.autoscaling.policy`` as a simulator ``Scaler``: this
    snapshot in its ``Snapshot``, its ``Decision`` replicas out, its damping state kept between
    ticks (the simulated clock is its ``now``). ``knobs`` are the policy's (``policy_knobs``);
    pass the profile's ``replica_start_s`` so that it plans with the simulated start time."""
    from genmedia.autoscaling.policy import ModelLoad, PolicyConfig, Snapshot, decide

    config = PolicyConfig.from_catalog(catalog, gpus, gpu_memory_gb, **knobs)
    state: dict = {}

    def scale(snap: ClusterSnapshot) -> dict[str, int]:
        nonlocal state
        decision = decide(
            config,
            Snapshot(
                now=snap.now,
                replicas={f: s.replicas + s.starting for f, s in snap.families.items()},
                models={
                    mid: ModelLoad(
                        queued_units=dict(m.queued_units),
                        inflight_units=m.inflight_units,
                        seconds_per_unit=m.seconds_per_unit,
                        load_s=m.load_s,
                        admitted_units=dict(m.admitted_units),
                    )
                    for mid, m in snap.models.items()
                },
            ),
            state,
        )
        state = decision.state
        return decision.replicas

    return scale
