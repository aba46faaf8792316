"""The simulated cluster: GPUs, family worker replicas placed on them, and how many of each.

The engine (``engine.py``) runs calls on the replicas built here (``device.py``: their gates
and devices; ``step_worker.py``: a step engine's running set). A replica is one family
worker (all models of the family, multiplexed, LRU beyond ``max_loaded_models``) that asks for
the sum of its models' ``gpu_fraction``: ``dedicated`` packing gives every replica a whole GPU,
``fractional`` packs replicas onto GPUs first-fit decreasing, as Ray packs fractional replicas.
No Ray imports.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from genmedia.models.catalog import Catalog

if TYPE_CHECKING:
    from genmedia.loadtests.sim.state import Work
    from genmedia.loadtests.sim.step_worker import SetRun

Packing = Literal["dedicated", "fractional"]
EPS = 1e-9


class Gpu:
    """One device: the replicas placed on it and the calls computing on it now."""

    __slots__ = ("active", "free", "id", "load", "replicas")

    def __init__(self, gpu_id: int):
        self.id = gpu_id
        self.free = 1.0  # unreserved fraction
        self.replicas: list[Replica] = []
        self.active: list[Work] = []  # work holding a replica's gate on this device
        self.load = 0.0  # sum of the active calls' device shares


class Replica:
    """One family worker replica on a GPU (see the module docstring)."""

    __slots__ = (
        "demand",
        "draining",
        "family",
        "gpu",
        "holder",
        "id",
        "loaded",
        "max_loaded",
        "ongoing",
        "ready",
        "set_run",
        "waiting",
    )

    def __init__(self, replica_id: int, family: str, gpu: Gpu, demand: float, max_loaded: int):
        self.id = replica_id
        self.family = family
        self.gpu = gpu
        self.demand = demand
        self.max_loaded = max_loaded
        self.loaded: OrderedDict[str, None] = OrderedDict()  # LRU of loaded model ids
        self.ongoing = 0  # calls routed here and not finished (Serve's max_ongoing_requests)
        self.holder: Work | None = None  # the call (or running set) holding the step gate
        self.waiting: list[Work] = []  # work waiting at the gate
        self.set_run: SetRun | None = None  # the step engine's running set (engine: step)
        self.ready = False
        self.draining = False

    def touch(self, model_id: str) -> bool:
        """Use a model; True when it had to be loaded (LRU eviction beyond max_loaded)."""
        if model_id in self.loaded:
            self.loaded.move_to_end(model_id)
            return False
        self.loaded[model_id] = None
        while len(self.loaded) > self.max_loaded:
            self.loaded.popitem(last=False)
        return True


def replica_demand(catalog: Catalog, family: str, packing: Packing) -> float:
    """GPU share one replica of ``family`` reserves."""
    if packing == "dedicated":
        return 1.0
    return min(1.0, sum(m.gpu_fraction for m in catalog.families()[family]))


@dataclass
class Placement:
    """GPUs and the replicas on them."""

    gpus: list[Gpu]
    replicas: dict[str, list[Replica]]


class Cluster:
    """Builds and grows the placement; ids are stable for determinism."""

    def __init__(self, catalog: Catalog, packing: Packing, gpus: int):
        self.catalog = catalog
        self.packing = packing
        self.gpus = [Gpu(i) for i in range(gpus)]
        self.replicas: dict[str, list[Replica]] = {f: [] for f in catalog.families()}
        self._next_id = 0

    def demand(self, family: str) -> float:
        return replica_demand(self.catalog, family, self.packing)

    def add(self, family: str) -> Replica | None:
        """Place one more replica (first fit); None when no GPU has room."""
        need = self.demand(family)
        for gpu in self.gpus:
            if gpu.free + EPS >= need:
                gpu.free -= need
                rep = Replica(
                    self._next_id,
                    family,
                    gpu,
                    need,
                    self.catalog.worker(family).max_loaded_models,
                )
                self._next_id += 1
                gpu.replicas.append(rep)
                self.replicas[family].append(rep)
                return rep
        return None

    def remove(self, rep: Replica) -> None:
        rep.gpu.free += rep.demand
        rep.gpu.replicas.remove(rep)
        self.replicas[rep.family].remove(rep)


def replica_counts(
    catalog: Catalog, packing: Packing, gpus: int | None, work: dict[str, float]
) -> dict[str, int]:
    """Initial replicas per family. Without ``gpus``: the catalog's ``min_replicas`` (at least
    one). With ``gpus``: the GPUs split across families in proportion to their offered ``work``
    (device-seconds), at least one replica each, as many as fit."""
    families = list(catalog.families())
    if gpus is None:
        return {f: max(1, catalog.worker(f).min_replicas) for f in families}
    total = sum(work.get(f, 0.0) for f in families) or 1.0
    counts = {}
    for f in families:
        capacity = gpus * work.get(f, 0.0) / total  # GPUs' worth for this family
        counts[f] = max(1, int(capacity / replica_demand(catalog, f, packing) + EPS))
    return counts


def needed_gpus(catalog: Catalog, packing: Packing, counts: dict[str, int]) -> int:
    """GPUs first-fit decreasing needs for ``counts`` replicas."""
    free: list[float] = []
    for f in sorted(counts, key=lambda f: -replica_demand(catalog, f, packing)):
        need = replica_demand(catalog, f, packing)
        for _ in range(counts[f]):
            for i, room in enumerate(free):
                if room + EPS >= need:
                    free[i] -= need
                    break
            else:
                free.append(1.0 - need)
    return len(free)


def place(catalog: Catalog, packing: Packing, gpus: int | None, counts: dict[str, int]) -> Cluster:
    """A cluster of ``gpus`` GPUs (default: as many as the counts need) holding the replicas,
    largest demand first; replicas that do not fit are dropped from the largest family."""
    counts = dict(counts)
    if gpus is None:
        gpus = needed_gpus(catalog, packing, counts)
    while needed_gpus(catalog, packing, counts) > gpus:
        biggest = max(counts, key=lambda f: counts[f])
        if counts[biggest] <= 1:
            raise ValueError(
                f"{gpus} GPU(s) cannot hold one replica of every family "
                f"({packing} packing needs {needed_gpus(catalog, packing, counts)})"
            )
        counts[biggest] -= 1
    cluster = Cluster(catalog, packing, gpus)
    order = sorted(counts, key=lambda f: -replica_demand(catalog, f, packing))
    for f in order:
        for _ in range(counts[f]):
            cluster.add(f)
    return cluster
