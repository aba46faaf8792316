"""The simulator's hook for scaling policies: every ``interval_s`` the engine hands a ``Scaler``
a snapshot of the cluster and applies the replicas per family it returns (added replicas are
placed on free GPU room and become ready after start-up and model loads; removed ones stop
taking work and leave when idle). Autoscaling policies of ``genmedia.autoscaling`` plug in here
through a small adapter from this snapshot to their own input. No Ray imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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


@dataclass(frozen=True)
class ClusterSnapshot:
    """The cluster at one tick."""

    now: float
    interval_s: float
    gpus: int
    free_gpu: float  # unreserved GPU fractions summed over devices
    families: dict[str, FamilySnapshot]


Scaler = Callable[[ClusterSnapshot], dict[str, int]]
"""Desired replicas per family (families left out keep theirs)."""


def fixed_replicas(snapshot: ClusterSnapshot) -> dict[str, int]:
    """The default: keep every family at what it has."""
    return {f: s.replicas + s.starting for f, s in snapshot.families.items()}
