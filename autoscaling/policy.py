"""SLO-aware scaling policy, pure: a snapshot of queued work in, replicas per family out.

Called by the Ray Serve adapter (``serve_adapter.py``) on the controller about every 0.1 s and
by the load-test simulator with its own clock; both hand it a ``Snapshot`` (queued and in-flight
work per model and class, measured service and load times, current replicas, ``now``) and the
``FamilyState`` it returned last time. Nothing here reads a clock or imports Ray.

- Offered load: each model's admitted work per class (a counter the scheduler keeps) becomes a
  rate by a trend-following moving average (``RateEstimate``), forecast one cold start plus
  ``forecast_margin_s`` ahead; times the measured seconds per unit it is the replicas that class
  keeps busy. It does not grow with the replicas, unlike in-flight work, which every added
  replica adds to.
- Demand: interactive work gets its offered load ``a`` plus headroom from its latency slack (an
  M/M/n wait-tail bound: ``s / (T - s) * ln(1 / interactive_late_share)`` replicas for service
  time ``s`` and target ``T``) plus ``rate_noise_z`` standard errors of the rate estimate
  (``sqrt(a * s / rate_window_s)``), plus its queued work over the drain window ``T - s``; all
  work together, at ``batch_utilisation``, plus all queued work over the batch target's window.
  The larger wins.
- Capacity: replicas that share a device slow each other down. Where the scheduler measured
  it (``deployments/scheduler/contention.py``: wall seconds per unit grow by ``b`` of the solo
  time for
  every call computing beside), ``n`` replicas give ``n / (1 + b (n - 1))`` replicas of
  capacity; the demand is met with that capacity, and a replica that would add less than
  ``min_replica_gain`` of one is not added (one that did is removed at once, and the count is
  held there). A measurement, and a hold, older than ``slowdown_memory_s`` is dropped, so the
  policy tries again.
- Damping: up at once (latency matters); down only to what the work needs at
  ``down_utilisation`` of the replicas (hysteresis), after the demand stayed that low for
  ``downscale_delay_s`` and at least that long after the last change (cooldown).
- Scale to zero: only for a family with ``min_replicas: 0`` whose models all let it (cold start
  within the interactive target, or ``scaling.scale_to_zero`` set), after it was idle as long as
  a cold start costs (rent-or-buy: keeping a replica that long costs at most what a cold start
  does), and never sooner than ``downscale_delay_s``.
- One GPU budget: minimums are placed first, then what interactive work needs, then the rest,
  one replica per family in turn and most interactive pressure first (``placement.allocate``),
  so a burst cannot starve the rest and batch work cannot crowd out interactive work.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import cast

from genmedia.autoscaling.placement import GpuPool, ReplicaShape, allocate, replica_shapes
from genmedia.models.catalog import Catalog, ModelEntry

CLASSES = ("interactive", "batch")


@dataclass(frozen=True)
class ModelTargets:
    """A model's static facts from the catalog: targets and cost estimates."""

    model_id: str
    interactive_s: float
    batch_s: float
    seconds_per_unit: float
    load_s: float
    job_units: float  # work units of a request with the default parameters
    scale_to_zero: bool

    @classmethod
    def of(cls, m: ModelEntry) -> ModelTargets:
        p = m.parameters
        units = p.num_images.default * p.steps.default * p.width.default * p.height.default / 1e6
        return cls(
            m.id,
            m.slo.interactive_s,
            m.slo.batch_s,
            m.scaling.seconds_per_unit,
            m.scaling.load_s,
            units,
            m.scaling.scale_to_zero,
        )


@dataclass(frozen=True)
class PolicyConfig:
    """Everything static the policy needs: families, models, GPUs and damping knobs."""

    shapes: dict[str, ReplicaShape]
    models: dict[str, dict[str, ModelTargets]]  # family -> model id -> targets
    gpu_count: int
    gpu_memory_gb: float
    # knobs (``policy_knobs``): damping, then sizing
    downscale_delay_s: float = 30.0
    down_utilisation: float = 0.9
    replica_start_s: float = 5.0  # process start + Serve registration, before model loads
    interactive_late_share: float = 0.01  # may wait past their slack (queueing headroom)
    rate_noise_z: float = 2.0  # standard deviations of the rate estimate kept as headroom
    forecast_margin_s: float = 20.0  # the rate is forecast this far beyond one cold start
    batch_utilisation: float = 0.97  # of the replicas, for all offered work together
    rate_window_s: float = 10.0  # time constant of the arrival-rate average
    rate_sample_s: float = 2.0  # rates are updated at most this often (metrics arrive ~1 s)
    min_replica_gain: float = 0.5  # replicas of capacity an added replica must add
    slowdown_memory_s: float = 600.0  # a slowdown measurement is trusted this long

    @classmethod
    def from_catalog(
        cls, catalog: Catalog, gpu_count: int, gpu_memory_gb: float, **knobs: float
    ) -> PolicyConfig:
        models = {
            f: {m.id: ModelTargets.of(m) for m in entries}
            for f, entries in catalog.families().items()
        }
        return cls(
            replica_shapes(catalog), models, gpu_count, gpu_memory_gb, **policy_knobs(**knobs)
        )


KNOBS = tuple(f.name for f in fields(PolicyConfig) if f.default is not MISSING)


def policy_knobs(**overrides: float) -> dict[str, float]:
    """Every knob of the policy at its default, with ``overrides``; an unknown name or a value
    out of range is a ``ValueError`` naming it."""
    defaults = {f.name: cast(float, f.default) for f in fields(PolicyConfig) if f.name in KNOBS}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown autoscaling knob(s) {unknown}; known: {sorted(defaults)}")
    out = {**defaults, **{k: float(v) for k, v in overrides.items()}}
    for name in (
        "down_utilisation",
        "batch_utilisation",
        "interactive_late_share",
        "min_replica_gain",
    ):
        if not 0 < out[name] <= 1:
            raise ValueError(f"autoscaling knob {name} must be in (0, 1], got {out[name]}")
    for name in ("rate_window_s", "rate_sample_s"):
        if out[name] <= 0:
            raise ValueError(f"autoscaling knob {name} must be > 0, got {out[name]}")
    for name in (
        "downscale_delay_s",
        "replica_start_s",
        "rate_noise_z",
        "forecast_margin_s",
        "slowdown_memory_s",
    ):
        if out[name] < 0:
            raise ValueError(f"autoscaling knob {name} must be >= 0, got {out[name]}")
    return out


@dataclass(frozen=True)
class ModelLoad:
    """One model's work right now, in work units (images x steps x megapixels)."""

    queued_units: dict[str, float] = field(default_factory=dict)  # per class
    inflight_units: float = 0.0
    seconds_per_unit: float | None = None  # measured device seconds (EWMA); None: catalog
    load_s: float | None = None  # measured cold load; None: use the catalog's
    # work admitted per class since the scheduler started (a counter); None: not reported
    admitted_units: dict[str, float] | None = None
    # share of its solo time a call loses per call of the family computing beside it, and
    # how old that measurement is; None: not measured
    slowdown: float | None = None
    slowdown_age_s: float | None = None


@dataclass(frozen=True)
class RateEstimate:
    """A counter turned into a rate: the last sample, the smoothed rate and its trend."""

    t: float
    counter: float
    level: float = 0.0  # units per second
    trend: float = 0.0  # units per second, per second
    warm: bool = False  # a first rate was observed

    def update(self, now: float, counter: float, window_s: float, sample_s: float) -> RateEstimate:
        """Holt's linear smoothing of the counter's rate, from the first observed rate on; a
        counter that went back (the scheduler restarted) restarts the series and keeps the
        level."""
        if counter < self.counter:
            return RateEstimate(now, counter, self.level, 0.0, self.warm)
        dt = now - self.t
        if dt < sample_s:
            return self
        observed = (counter - self.counter) / dt
        if not self.warm:
            return RateEstimate(now, counter, observed, 0.0, True)
        a = 1.0 - math.exp(-dt / window_s)
        level = max(0.0, (1 - a) * (self.level + self.trend * dt) + a * observed)
        trend = (1 - a) * self.trend + a * (level - self.level) / dt
        return RateEstimate(now, counter, level, trend, True)

    def forecast(self, ahead_s: float) -> float:
        """The rate ``ahead_s`` from the last sample; a falling trend is not extrapolated."""
        return self.level + max(0.0, self.trend) * ahead_s


@dataclass(frozen=True)
class Snapshot:
    """What the policy sees at ``now``: current (target) replicas and each model's load."""

    now: float
    replicas: dict[str, int]
    models: dict[str, ModelLoad]


@dataclass(frozen=True)
class FamilyState:
    """Damping memory of one family between decisions."""

    low_since: float | None = None  # demand below the current replicas since
    last_change: float | None = None
    idle_since: float | None = None  # no queued or in-flight work since
    rates: dict[str, RateEstimate] = field(default_factory=dict)  # "<model>|<class>"
    # cut back to this many replicas since ``held_since`` because more added too little
    held: int | None = None
    held_since: float | None = None


@dataclass(frozen=True)
class FamilyDemand:
    """A family's demand in replicas: to scale up (``up``) and to stay at (``keep``)."""

    up: int
    keep: int
    interactive: float  # replicas the interactive class alone needs
    busy: bool
    useful: int | None = None  # replicas worth having (each adds min_replica_gain); None: any
    slowdown: float = 0.0  # the family's measured slowdown per concurrent call


@dataclass(frozen=True)
class Decision:
    """Replicas per family, the state to pass back next time, and why."""

    replicas: dict[str, int]
    state: dict[str, FamilyState]
    reasons: dict[str, str]


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def capacity(replicas: int, slowdown: float) -> float:
    """Replicas of solo capacity that ``replicas`` busy replicas give when each call loses
    ``slowdown`` of its solo time per call computing beside it."""
    return replicas / (1.0 + slowdown * (replicas - 1)) if replicas > 0 else 0.0


def useful_replicas(slowdown: float, min_gain: float, limit: int) -> int:
    """The most replicas (at least 1, at most ``limit``) each of which adds ``min_gain`` of a
    replica's capacity (the gain falls with every replica, so the first short one ends it)."""
    n = 1
    while n < limit and capacity(n + 1, slowdown) - capacity(n, slowdown) >= min_gain - 1e-9:
        n += 1
    return n


def replicas_for(demand: float, slowdown: float, limit: int) -> int:
    """The fewest replicas whose capacity meets ``demand`` (replicas of solo capacity), at most
    ``limit``; with no slowdown, ``ceil(demand)``."""
    if slowdown <= 0:
        return _ceil(demand)
    n = 0
    while n < limit and capacity(n, slowdown) < demand - 1e-9:
        n += 1
    return n


def family_slowdown(config: PolicyConfig, family: str, snap: Snapshot) -> float | None:
    """The largest fresh slowdown measured on the family's models (None: none measured)."""
    measured = [
        load.slowdown
        for mid in config.models[family]
        if (load := snap.models.get(mid)) is not None
        and load.slowdown is not None
        and (load.slowdown_age_s or 0.0) <= config.slowdown_memory_s
    ]
    return max(measured) if measured else None


def update_rates(
    config: PolicyConfig, family: str, snap: Snapshot, rates: dict[str, RateEstimate]
) -> dict[str, RateEstimate]:
    """This family's arrival-rate estimates after the snapshot's counters (a new dict)."""
    out = dict(rates)
    for mid in config.models[family]:
        admitted = snap.models.get(mid, ModelLoad()).admitted_units
        if admitted is None:
            continue
        for cls in CLASSES:
            key, counter = f"{mid}|{cls}", admitted.get(cls, 0.0)
            prev = out.get(key)
            out[key] = (
                RateEstimate(snap.now, counter)
                if prev is None
                else prev.update(snap.now, counter, config.rate_window_s, config.rate_sample_s)
            )
    return out


def family_demand(
    config: PolicyConfig, family: str, snap: Snapshot, rates: dict[str, RateEstimate]
) -> FamilyDemand:
    offered = dict.fromkeys(CLASSES, 0.0)  # replicas kept busy, per class
    backlog = dict.fromkeys(CLASSES, 0.0)  # replicas to drain the queues in time
    headroom = 0.0  # replicas beyond the interactive load, from the class's latency slack
    svc_i = 0.0  # the longest interactive service time
    busy = False
    for mid, t in config.models[family].items():
        load = snap.models.get(mid, ModelLoad())
        rate = load.seconds_per_unit or t.seconds_per_unit
        service = rate * t.job_units
        ahead = cold_start_s(config, t, load) + config.forecast_margin_s
        q_i = load.queued_units.get("interactive", 0.0) * rate
        q_b = load.queued_units.get("batch", 0.0) * rate
        busy = busy or load.inflight_units > 0 or q_i > 0 or q_b > 0
        est = {cls: rates.get(f"{mid}|{cls}") for cls in CLASSES}
        for cls, e in est.items():
            offered[cls] += e.forecast(ahead) * rate if e is not None else 0.0
        slack = max(t.interactive_s - service, 0.1 * t.interactive_s)
        if est["interactive"] is not None and est["interactive"].level > 0:
            headroom = max(headroom, service / slack * math.log(1 / config.interactive_late_share))
            svc_i = max(svc_i, service)
        backlog["interactive"] += q_i / slack
        backlog["batch"] += (q_i + q_b) / max(t.batch_s - service, 0.1 * t.batch_s)
    a_i = offered["interactive"]
    # the rate estimate of Poisson arrivals over the window has a relative error 1/sqrt(n)
    headroom += config.rate_noise_z * math.sqrt(a_i * svc_i / config.rate_window_s)
    interactive = a_i + headroom + backlog["interactive"]
    overall = (a_i + offered["batch"]) / config.batch_utilisation + backlog["batch"]
    demand = max(interactive, overall)
    floor = 1 if busy else 0
    b = family_slowdown(config, family, snap)
    limit = max(1, config.shapes[family].max_replicas)
    useful = None if b is None else useful_replicas(b, config.min_replica_gain, limit)
    bound = limit if useful is None else useful
    return FamilyDemand(
        up=max(floor, replicas_for(demand, b or 0.0, bound)),
        keep=max(floor, replicas_for(demand / config.down_utilisation, b or 0.0, bound)),
        interactive=interactive,
        busy=busy,
        useful=useful,
        slowdown=b or 0.0,
    )


def cold_start_s(config: PolicyConfig, t: ModelTargets, load: ModelLoad | None) -> float:
    measured = load.load_s if load is not None else None
    return config.replica_start_s + (measured if measured is not None else t.load_s)


def zero_blockers(config: PolicyConfig, family: str, snap: Snapshot | None = None) -> list[str]:
    """Why a family may not scale to zero (empty: it may). Its ``min_replicas`` must be 0, and
    every model's cold start must fit its interactive target unless the model opted in."""
    out = []
    if config.shapes[family].min_replicas > 0:
        out.append(f"min_replicas is {config.shapes[family].min_replicas}")
    for mid, t in config.models[family].items():
        cold = cold_start_s(config, t, snap.models.get(mid) if snap else None)
        if cold > t.interactive_s and not t.scale_to_zero:
            out.append(f"{mid}: cold start {cold:.3g} s > interactive target {t.interactive_s:g} s")
    return out


def _family_step(
    config: PolicyConfig, family: str, snap: Snapshot, st: FamilyState, d: FamilyDemand
) -> tuple[int, FamilyState, str]:
    now = snap.now
    shape = config.shapes[family]
    current = snap.replicas.get(family, shape.min_replicas)
    idle_since = None if d.busy else (st.idle_since if st.idle_since is not None else now)
    st = replace(st, idle_since=idle_since)
    floor = max(shape.min_replicas, 1)
    if shape.min_replicas == 0 and not d.busy and not zero_blockers(config, family, snap):
        keep_warm = max(
            config.downscale_delay_s,
            max(
                cold_start_s(config, t, snap.models.get(mid))
                for mid, t in config.models[family].items()
            ),
        )
        if idle_since is not None and now - idle_since >= keep_warm:
            floor = 0
    cap = shape.max_replicas
    held = st.held
    if held is not None and now - (st.held_since or now) >= config.slowdown_memory_s:
        held, st = None, replace(st, held=None, held_since=None)  # forgotten: try again
    if d.useful is not None or held is not None:
        # a cut holds while its measurement is remembered: the next reading near the
        # threshold must not add back what the last one removed
        useful = min(d.useful or cap, held or cap)
        cap = min(cap, max(floor, useful))
        if current > cap:  # the replicas beyond add little capacity and slow the others
            return (
                cap,
                replace(st, low_since=None, last_change=now, held=cap, held_since=now),
                f"replicas beyond {cap} add under {config.min_replica_gain:g} of a replica "
                f"each (slowdown {d.slowdown:.2f} per concurrent call)",
            )
    up = min(cap, max(floor, d.up))
    if up > current:
        return up, replace(st, low_since=None, last_change=now), f"work needs {d.up}"
    target = min(cap, max(floor, d.keep))
    if target >= current:
        return current, replace(st, low_since=None), "steady"
    if target == 0:  # idle for the keep-warm time already (>= downscale_delay_s)
        return 0, replace(st, low_since=None, last_change=now), "idle: scale to zero"
    low_since = st.low_since if st.low_since is not None else now
    settled = st.last_change is None or now - st.last_change >= config.downscale_delay_s
    if now - low_since >= config.downscale_delay_s and settled:
        return (
            target,
            replace(st, low_since=None, last_change=now),
            f"work needs {d.keep} (hysteresis)",
        )
    return current, replace(st, low_since=low_since), "cooling down"


def decide(config: PolicyConfig, snap: Snapshot, state: dict[str, FamilyState]) -> Decision:
    """Replicas per family for this snapshot (pure; ``state`` is the last Decision's)."""
    wanted: dict[str, int] = {}
    reasons: dict[str, str] = {}
    new_state: dict[str, FamilyState] = {}
    pressure: dict[str, float] = {}
    floors: dict[str, int] = {}
    first: dict[str, int] = {}
    for family in config.shapes:
        prev = state.get(family, FamilyState())
        prev = replace(prev, rates=update_rates(config, family, snap, prev.rates))
        d = family_demand(config, family, snap, prev.rates)
        n, st, why = _family_step(config, family, snap, prev, d)
        wanted[family], new_state[family], reasons[family] = n, st, why
        pressure[family] = d.interactive / max(1, snap.replicas.get(family, 1))
        floors[family] = min(n, config.shapes[family].min_replicas)
        first[family] = min(n, _ceil(d.interactive))
    order = sorted(config.shapes, key=lambda f: (-pressure[f], f))
    pool = GpuPool(config.gpu_count, config.gpu_memory_gb)
    granted = allocate(config.shapes, floors, wanted, pool, order, first=first)
    for family, n in granted.items():
        if n < wanted[family]:
            reasons[family] = f"{reasons[family]}; GPU budget allows {n} of {wanted[family]}"
            if n != snap.replicas.get(family):
                new_state[family] = replace(new_state[family], last_change=snap.now)
    return Decision(granted, new_state, reasons)
