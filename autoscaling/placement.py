"""GPU placement, pure: which family worker replicas share which GPU.

Sits before deployment (``genmedia plan``, ``genmedia render``) and inside the autoscaler (the
one GPU budget across families). A family worker replica asks Ray for the sum of its models'
``gpu_fraction`` and holds at most ``max_loaded_models`` of them in memory; Ray packs replicas by
fraction only, so the planner also checks that each replica's share of a GPU's memory holds its
models (the worker caps its process at that share). Packing is first-fit decreasing on
(fraction, memory); minimum replicas must fit, replicas above the minimum are added round-robin
across families in the order asked, so one family cannot take the GPUs the others need.
No Ray, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genmedia.models.catalog import Catalog

EPS = 1e-9


@dataclass(frozen=True)
class ReplicaShape:
    """What one replica of a family worker needs from a GPU."""

    family: str
    model_ids: tuple[str, ...]
    gpu_fraction: float
    memory_gb: float  # worst case: its largest loadable models
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class PlacementIssue:
    """Why a catalog cannot be placed, naming the model and the catalog field."""

    model_id: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"model {self.model_id!r}: {self.field}: {self.message}"


class PlacementError(Exception):
    """The catalog does not fit the GPUs; ``issues`` name every model concerned."""

    def __init__(self, issues: list[PlacementIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass
class Gpu:
    """One GPU's bookkeeping: replicas placed on it and what they use."""

    index: int
    fraction: float = 0.0
    memory_gb: float = 0.0
    replicas: list[tuple[str, int]] = field(default_factory=list)  # (family, replica number)


class GpuPool:
    """First-fit over ``count`` GPUs of ``memory_gb`` each; only partly used GPUs are scanned."""

    def __init__(self, count: int, memory_gb: float):
        self.count = count
        self.memory_gb = memory_gb
        self.gpus: list[Gpu] = []  # opened so far, in index order
        self._open: list[Gpu] = []

    def place(self, shape: ReplicaShape, number: int) -> int | None:
        """Put one replica on the first GPU it fits; its index, or None when none has room."""
        for gpu in self._open:
            if self._fits(gpu, shape):
                return self._put(gpu, shape, number)
        if len(self.gpus) >= self.count:
            return None
        gpu = Gpu(len(self.gpus))
        self.gpus.append(gpu)
        self._open.append(gpu)
        if not self._fits(gpu, shape):
            return None
        return self._put(gpu, shape, number)

    def _fits(self, gpu: Gpu, shape: ReplicaShape) -> bool:
        return (
            gpu.fraction + shape.gpu_fraction <= 1.0 + EPS
            and gpu.memory_gb + shape.memory_gb <= self.memory_gb + EPS
        )

    def _put(self, gpu: Gpu, shape: ReplicaShape, number: int) -> int:
        gpu.fraction += shape.gpu_fraction
        gpu.memory_gb += shape.memory_gb
        gpu.replicas.append((shape.family, number))
        if gpu.fraction >= 1.0 - EPS or gpu.memory_gb >= self.memory_gb - EPS:
            self._open.remove(gpu)
        return gpu.index


def replica_shapes(catalog: Catalog) -> dict[str, ReplicaShape]:
    """Per family: the GPU ask and worst-case memory of one worker replica, and its bounds."""
    shapes = {}
    for family, entries in catalog.families().items():
        ws = catalog.worker(family)
        largest = sorted((e.memory_gb for e in entries), reverse=True)[: ws.max_loaded_models]
        shapes[family] = ReplicaShape(
            family=family,
            model_ids=tuple(e.id for e in entries),
            gpu_fraction=round(min(1.0, sum(e.gpu_fraction for e in entries)), 6),
            memory_gb=round(sum(largest), 6),
            min_replicas=ws.min_replicas,
            max_replicas=ws.max_replicas,
        )
    return shapes


def allocate(
    shapes: dict[str, ReplicaShape],
    floor: dict[str, int],
    want: dict[str, int],
    pool: GpuPool,
    order: list[str] | None = None,
    first: dict[str, int] | None = None,
) -> dict[str, int]:
    """Place ``floor`` replicas per family (largest first), then one more replica per family in
    turn, in ``order``, while a family wants more and it fits: up to ``first`` (the part of the
    want that goes before any family's rest) and then up to ``want``. Returns the replicas
    placed."""
    granted = dict.fromkeys(shapes, 0)
    by_size = sorted(shapes.values(), key=lambda s: (-s.memory_gb, -s.gpu_fraction, s.family))
    for shape in by_size:
        for _ in range(floor.get(shape.family, 0)):
            if pool.place(shape, granted[shape.family] + 1) is None:
                break
            granted[shape.family] += 1
    turn = [f for f in (order or sorted(shapes)) if f in shapes]
    stages = [want]
    if first is not None:
        stages.insert(0, {f: min(first.get(f, 0), want.get(f, 0)) for f in shapes})
    for stage in stages:
        grew = True
        while grew:
            grew = False
            for family in turn:
                if granted[family] < stage.get(family, 0):
                    if pool.place(shapes[family], granted[family] + 1) is None:
                        continue
                    granted[family] += 1
                    grew = True
    return granted


@dataclass(frozen=True)
class Placement:
    """A packing of the catalog's minimum replicas, and how far each family can grow."""

    gpu_count: int
    gpu_memory_gb: float
    shapes: dict[str, ReplicaShape]
    gpus: list[Gpu]  # GPUs holding the minimum replicas
    reachable_max: dict[str, int]  # replicas per family that fit when all grow in turn


def _shape_issues(
    shapes: dict[str, ReplicaShape], catalog: Catalog, gpu_memory_gb: float
) -> list[PlacementIssue]:
    issues: list[PlacementIssue] = []
    entries = {m.id: m for m in catalog.models}
    for shape in shapes.values():
        for mid in shape.model_ids:
            m = entries[mid]
            if m.memory_gb > gpu_memory_gb + EPS:
                issues.append(
                    PlacementIssue(
                        mid,
                        "memory_gb",
                        f"{m.memory_gb:g} GiB is more than one GPU's {gpu_memory_gb:g} GiB",
                    )
                )
        share = shape.gpu_fraction * gpu_memory_gb
        if shape.memory_gb > share + EPS:
            for mid in shape.model_ids:
                issues.append(
                    PlacementIssue(
                        mid,
                        "gpu_fraction",
                        f"the {shape.family} worker ({', '.join(shape.model_ids)}) asks for "
                        f"{shape.gpu_fraction:g} GPU = {share:.3g} GiB of a {gpu_memory_gb:g} GiB "
                        f"GPU but holds up to {shape.memory_gb:g} GiB of weights; Ray packs by "
                        "fraction, so raise gpu_fraction or lower max_loaded_models",
                    )
                )
    return issues


def plan_placement(catalog: Catalog, gpus: int, gpu_memory_gb: float) -> Placement:
    """Pack the catalog's minimum replicas onto ``gpus`` GPUs; raise PlacementError naming the
    models when a replica cannot hold its models in its share or the minimums do not fit."""
    if gpus < 0 or gpu_memory_gb <= 0:
        raise ValueError("gpus must be >= 0 and gpu_memory_gb > 0")
    shapes = replica_shapes(catalog)
    issues = _shape_issues(shapes, catalog, gpu_memory_gb)
    if issues:
        raise PlacementError(issues)
    floor = {f: s.min_replicas for f, s in shapes.items()}
    pool = GpuPool(gpus, gpu_memory_gb)
    granted = allocate(shapes, floor, {}, pool)
    short = [f for f in shapes if granted[f] < floor[f]]
    if short:
        need = sum(s.gpu_fraction * s.min_replicas for s in shapes.values())
        for family in short:
            shape = shapes[family]
            for mid in shape.model_ids:
                issues.append(
                    PlacementIssue(
                        mid,
                        f"workers.{family}.min_replicas",
                        f"only {granted[family]} of the {shape.min_replicas} minimum replica(s) "
                        f"of the {family} worker ({shape.gpu_fraction:g} GPU, "
                        f"{shape.memory_gb:g} GiB each) fit on {gpus} GPU(s) of "
                        f"{gpu_memory_gb:g} GiB; the minimums ask for {need:.3g} GPU(s) in all",
                    )
                )
        raise PlacementError(issues)
    grow = GpuPool(gpus, gpu_memory_gb)
    reachable = allocate(shapes, floor, {f: s.max_replicas for f, s in shapes.items()}, grow)
    return Placement(gpus, gpu_memory_gb, shapes, pool.gpus, reachable)
