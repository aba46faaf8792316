"""What the simulator's engine keeps per run, family and pipeline call: its configuration, the
event kinds of its clock, the ``Call`` a replica computes and the ``SimResult`` it returns.

Shared by the engine (``engine.py``), the devices and replicas' gate (``device.py``) and the
step-level worker model (``step_worker.py``). No Ray imports.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from genmedia.deployments.scheduler.dispatcher import RunningBatch
from genmedia.deployments.tenants.schema import TenantsFile
from genmedia.loadtests.records import RequestRecord
from genmedia.loadtests.sim.cluster import Packing
from genmedia.loadtests.sim.scaling import Scaler

if TYPE_CHECKING:
    from genmedia.loadtests.sim.cluster import Replica

UNLIMITED = 10**9
EPS = 1e-9

# Event kinds; at equal times the lower kind goes first (deadlines before dispatches, as the
# real dispatch loop expires jobs before it forms batches).
DEADLINE, CALL, READY, DISPATCH, SCALE, CP_IDLE, CP_START, ADMIT = range(8)

Engine = Literal["request", "step"]


@dataclass(frozen=True)
class SimConfig:
    """How one simulation runs."""

    policy: Literal["priority", "fifo"] = "priority"
    packing: Packing = "fractional"
    gpus: int | None = None  # None: as many as the catalog's replica counts need
    replicas: dict[str, int] | None = None  # initial replicas per family (default: see cluster)
    scaler: Scaler | None = None
    scale_interval_s: float = 10.0
    tenants: TenantsFile | None = None  # weights and quotas; None: no quotas
    weights: dict[str, float] | None = None  # tenant weights without a tenants file (default 1)
    batch_min_share: float | None = None  # default: the catalog's scheduler setting
    seed: int = 0  # of the per-call duration noise and the control plane's per-request cost
    # the workers' engine for every family (``step``: ``step_worker.py``); None: the catalog's
    # ``workers.<family>.engine``
    engine: Engine | None = None


class Work:
    """What computes on a replica's gate and device: a pipeline call, or a step engine's running
    set (``step_worker.SetRun``). Work is counted in seconds at full speed: ``pre`` (not
    preemptible), ``steps`` steps of ``step`` seconds (a step boundary after each), then the rest
    up to ``total``."""

    __slots__ = (
        "compute",
        "done",
        "first_step_at",
        "held_since",
        "pre",
        "preempt",
        "priority",
        "rate",
        "replica",
        "share",
        "since",
        "step",
        "steps",
        "target",
        "ticket",
        "total",
        "version",
    )

    def __init__(self, priority: int):
        self.priority = priority
        self.replica: Replica | None = None
        self.pre = self.step = self.total = 0.0
        self.steps = 0
        self.share = 1.0
        self.done = 0.0  # work done, in seconds at full speed
        self.rate = 1.0
        self.since = 0.0
        self.target = 0.0
        self.version = 0
        self.ticket = 0
        self.preempt = False  # stop at the next step boundary
        self.compute = 0.0  # wall seconds holding the gate (the worker's compute_s)
        self.held_since = 0.0
        self.first_step_at: float | None = None

    def next_boundary(self) -> float:
        """Work position of the next step boundary (a gate checkpoint), or the end."""
        steps_end = self.pre + self.steps * self.step
        if self.done >= steps_end - EPS or self.step <= 0:
            return self.total
        k = max(1, math.floor((self.done - self.pre) / self.step + EPS) + 1)
        return self.pre + k * self.step


class Call(Work):
    """One pipeline call (a formed batch) from dispatch to its result."""

    __slots__ = ("batch", "cost", "family", "id", "images", "jobs", "model_id", "started",
                 "store")  # fmt: skip

    def __init__(self, call_id: int, batch: RunningBatch):
        super().__init__(batch.cls.rank)
        self.id = call_id
        self.batch = batch  # the dispatcher's record: slot, class, jobs
        self.family = batch.family
        self.jobs = batch.jobs
        self.model_id = batch.model_id
        self.images = sum(j.images for j in batch.jobs)
        self.cost = batch.cost
        self.store = 0.0  # encoding and storing the outputs, after the gate
        self.started = 0.0


class FamilyState:
    """The routing view of one family's replicas (its scheduler state is the dispatcher's)."""

    def __init__(self, name: str, slots: int):
        self.name = name
        self.slots = slots  # calls a replica takes at once (Serve's max_ongoing_requests)
        self.ready = 0  # replicas taking work
        self.starting = 0
        self.buckets: list[dict[int, Replica]] = [{} for _ in range(slots)]
        self.unrouted: deque[Call] = deque()  # calls waiting for a replica (caller's queue)
        self.retry_at: float | None = None  # of the DISPATCH event pushed for a batch's wait
        self.arrivals = 0
        self.completed = 0


@dataclass
class SimResult:
    """Records of every request plus what the run cost."""

    records: list[RequestRecord]
    wall_s: float
    events: int
    calls: int
    preemptions: int
    gpus: int
    replicas: dict[str, int]
    sim_end_s: float
    timeline: list[dict] = field(default_factory=list)  # per scale tick, when a scaler runs
