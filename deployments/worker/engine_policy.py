"""The step engine's policy: who is in the running set, who joins and who leaves, step by step.

Sits in the family worker (``serve/worker.py``, ``worker/batch.py``) when a family's worker runs
``engine: step``: the jobs of the calls the scheduler sent are members waiting here (one member
per job: ``step_loop.py``); at every denoising-step boundary the engine asks ``boundary`` which
members join the running set (one model forward covers them all) and drops cancelled ones; after
every step ``step_done`` records what the step cost and returns the members that finished (they
leave: decode and store while the others go on). Pure: no torch, no Ray, ``now`` passed in, so
the simulator can drive the same rules.

Join rule, at a step boundary, waiting members in (priority rank, arrival) order:

- compatible: the same ``CompatKey`` as the running set (model, resolution bucket, adapter set
  and scales, task and strength, guidance on/off); an empty set takes the first waiter's key;
- no overtaking of an incompatible waiter: the first incompatible waiter stops the joins, so the
  set drains and the next key gets its turn (no starvation by a stream of compatible work);
  nor of an interactive waiter that does not fit yet (other than by the deadline check): it
  joins next;
- the set's rows (outputs) stay within the per-model bound (``set_bound``: the catalog's
  ``max_batch_size`` within ``MAX_SET_ROWS``; the scheduler sizes a replica's slots from it);
- while the set holds interactive members, a batch-class member joins only while the cost
  model (seconds per step ≈ a·n + b for n rows, fitted from the steps observed) keeps the
  set's step within ``JOIN_SLOWDOWN`` times theirs alone, the bound the entry rule let them in
  with: the set does not fill up with bulk rows around them (it refills when they leave);
- the cost model does not push an interactive member that would meet its deadline past it (a
  member refused by this check alone is listed in ``Boundary.deadline_refused``: it may join
  one step later).

Entry rule, before a call becomes a member (``EnginePolicy.accepts``: ``StepLoop.accepts`` in
the worker, ``StepWorkers.enter`` in the simulator): a call of another key than a running set
takes the request path (the replica's ``StepGate``: an interactive one preempts the set at its
next step boundary and runs alone). Of the set's key, or with no set, a call becomes a member,
except an interactive call that cannot join a batch-class set now (no room for its rows, or
``joins_running_set``: its step there would cost more than ``JOIN_SLOWDOWN`` times its step
alone) where interactive calls do not gain from sharing steps (``sets_pay`` false: the step's
cost grows with its rows, as SDXL's and Flux's on a GPU): it takes the request path too.

Park rule, at a step boundary: when the first waiting interactive member has the key of a
running set that holds no interactive member and cannot join it, the batch-class members are
parked: they go back to waiting with their progress (the worker keeps their sampler states),
the interactive members form a set of their own, and interactive calls that arrive meanwhile
join it instead of queuing at the gate one at a time. No batch-class member joins until the
interactive member the set was parked for left; then the parked ones (first, by arrival) and
the others join by the rules above (within the slowdown bound while interactive members still
run), so a stream of interactive calls holds them out for one call's steps at most. No park
while another call waits for the replica's gate (the set drains then): an interactive call that
would need one then takes the request path (``accepts``). While the set waits for the gate, it
ranks as its best member, a waiting one of its key included (``StepLoop``: the gate reads the
rank again when poked).

Guidance scale, scheduler (sampler), step count, seed and prompt are per member and not part of
the key: each member keeps its own sampler state and applies its own guidance.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from genmedia.models.params import GenerationJob

COST_WINDOW = 64  # step observations kept per cost key
COST_MIN_SPREAD = 2  # distinct batch sizes needed before the intercept b is fitted
MAX_SET_ROWS = 64  # the engine's own bound on a running set's rows, whatever the catalog says
# An interactive call joins a running batch-class set only when the cost model predicts its step
# there, a·(n + r) + b for the set's n rows and its own r, costs at most this many times its step
# alone, a·r + b; otherwise it parks the set and runs without it (``joins_running_set``). 1.5 lets
# it into a set where the fixed part b of a step dominates (SD1.5-like: a 1-row set when b ≈ 1.4 a)
# and keeps it out of sets whose step time grows with their rows (SDXL, Flux). Simulated on 1,000
# GPUs (benchmarks/bench_sim_engine.py, 2026-12-03): 1.2 decided as 1.5 did; 2.0 let SDXL and Flux
# calls into 1-row sets and roughly doubled the interactive p99 at and past saturation.
JOIN_SLOWDOWN = 1.5


def set_bound(max_batch_size: int) -> int:
    """Rows (outputs) a model's running set may hold: its catalog ``max_batch_size``, within
    the engine's ``MAX_SET_ROWS``. The scheduler sizes a step-engine replica's slots from it
    (``scheduler/dispatcher.py``: ``step_rows_per_replica``)."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    return min(max_batch_size, MAX_SET_ROWS)


def joins_running_set(
    rank: int,
    rows: int,
    set_rows: int,
    set_rank: int | None,
    coefficients: tuple[float, float] | None,
    slowdown: float = JOIN_SLOWDOWN,
) -> bool:
    """Whether a call of a running set's key joins the set (True) or, interactive, parks it
    at the next step boundary (False: ``EnginePolicy``'s park rule) and runs without it.
    ``rank``/``rows``: the call's priority rank and rows;
    ``set_rows``/``set_rank``: the running set's rows and best member rank (None: empty);
    ``coefficients``: the set's cost model ``(a, b)``, None before a step was observed.

    Batch-class calls, an empty set, a set holding an interactive member and an unknown cost
    join; an interactive call otherwise joins when ``a·(n + r) + b <= slowdown · (a·r + b)``."""
    if slowdown < 1.0:
        raise ValueError(f"slowdown must be at least 1.0, got {slowdown}")
    if rank != 0 or set_rank is None or set_rows == 0 or set_rank == 0 or coefficients is None:
        return True
    return within_slowdown(coefficients, set_rows + rows, rows, slowdown)


def within_slowdown(
    coefficients: tuple[float, float], rows: int, own_rows: int, slowdown: float
) -> bool:
    """Whether a step of ``rows`` rows costs at most ``slowdown`` times a step of ``own_rows``
    alone, by the cost model ``a·n + b`` (``coefficients``): the bound of the entry rule and of
    batch-class joins around interactive members."""
    a, b = coefficients
    return a * rows + b <= slowdown * (a * own_rows + b)


def sets_pay(coefficients: tuple[float, float], rows: int, slowdown: float) -> bool:
    """Whether interactive calls gain from a set of their own: a second call of ``rows`` rows
    shares a step within ``slowdown`` times the step alone (a step's fixed part matters, as
    for a small model). Where the cost grows with the rows (SDXL, Flux on a GPU), they would
    only slow each other, so an interactive call that cannot join a batch-class set takes
    the request path instead of parking it (simulated on 1,000 GPUs, the flux interactive
    p99 went from 9.1 to 15 s at 1,200 req/s with parking for every model)."""
    return within_slowdown(coefficients, 2 * rows, rows, slowdown)


@dataclass(frozen=True)
class CompatKey:
    """What members must share to run in one model forward."""

    model_id: str  # one set of weights
    bucket: tuple[int, ...]  # (width, height[, frames]) or (audio seconds * 1000,)
    adapters: tuple[tuple[str, float], ...]  # LoRA (id, scale): loaded into shared modules
    task: str  # text-to-image, image-to-image, ...
    strength: float | None  # image-to-image / inpainting: where the schedule starts
    guidance: bool  # classifier-free guidance on (two rows per output) or off
    negative: bool = False  # a negative prompt is set (families where None differs from "")

    @property
    def cost_key(self) -> tuple[str, tuple[int, ...], bool]:
        """What a step's cost depends on besides the number of rows."""
        return (self.model_id, self.bucket, self.guidance)


def compat_key(
    job: GenerationJob, *, guidance_threshold: float = 1.0, negative_matters: bool = False
) -> CompatKey:
    """The key of a job. Guidance is on when ``guidance_scale > guidance_threshold`` (diffusers'
    rule for classifier-free guidance); ``negative_matters`` for families that encode a missing
    negative prompt differently from an empty one (SDXL, Flux)."""
    p = job.params
    if p.duration_s is not None:
        bucket: tuple[int, ...] = (round(p.duration_s * 1000),)
    elif p.num_frames is not None:
        bucket = (p.width, p.height, p.num_frames)
    else:
        bucket = (p.width, p.height)
    return CompatKey(
        model_id=p.model_id,
        bucket=bucket,
        adapters=tuple(p.adapters),
        task=p.task,
        strength=p.strength,
        guidance=p.guidance_scale > guidance_threshold,
        negative=negative_matters and job.negative_prompt is not None,
    )


class StepCostModel:
    """Seconds per engine step for ``n`` rows, ``a·n + b``, least squares over the last
    ``window`` observations. With one batch size seen, ``b`` is 0 and ``a`` the mean per row
    (it over-estimates larger sets: joins are refused early rather than late). Unknown until a
    step was observed, unless a prior ``(a, b)`` is given."""

    def __init__(self, prior: tuple[float, float] | None = None, window: int = COST_WINDOW):
        self.prior = prior
        self.samples: deque[tuple[int, float]] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None

    def observe(self, rows: int, seconds: float) -> None:
        if rows <= 0 or seconds < 0:
            raise ValueError(
                f"step observation needs rows > 0 and seconds >= 0, got {rows}, {seconds}"
            )
        self.samples.append((rows, seconds))
        self._fit = None

    @property
    def coefficients(self) -> tuple[float, float] | None:
        """``(a, b)``, or None when nothing is known."""
        if not self.samples:
            return self.prior
        if self._fit is None:
            self._fit = _least_squares(self.samples)
        return self._fit

    def predict(self, rows: int) -> float | None:
        """Seconds of one step with ``rows`` rows; None when unknown."""
        ab = self.coefficients
        if ab is None:
            return None
        a, b = ab
        return max(0.0, a * rows + b)


def _least_squares(samples: Iterable[tuple[int, float]]) -> tuple[float, float]:
    xs, ys = zip(*samples, strict=True)
    n = len(xs)
    if len(set(xs)) < COST_MIN_SPREAD:
        return sum(ys) / sum(xs), 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    a = sxy / sxx
    b = my - a * mx
    if a < 0 or b < 0:  # noise: keep a non-negative slope and intercept
        a = max(a, 0.0)
        b = max(0.0, my - a * mx)
    return a, b


@dataclass
class Member:
    """One call in the engine: waiting, then running, until it finishes or is cancelled."""

    id: str  # the caller's id (a batch id)
    key: CompatKey
    rows: int  # outputs it adds to the forward
    rank: int  # priority: lower runs first (``PriorityClass.rank``)
    steps: int  # denoising steps it runs in all
    deadline: float | None = None  # interactive: when it must be done (same clock as ``now``)
    done: int = 0  # steps run
    seq: int = 0  # arrival order (set on submit)
    cancelled: bool = False
    started: bool = False  # joined a set before: its state is kept while it is parked

    @property
    def left(self) -> int:
        return self.steps - self.done


@dataclass
class Boundary:
    """What changed at a step boundary."""

    joined: list[Member] = field(default_factory=list)  # entered the running set
    cancelled: list[Member] = field(default_factory=list)  # removed (running or waiting)
    refused: dict[str, str] = field(default_factory=dict)  # waiting member id -> why not now
    deadline_refused: list[str] = field(default_factory=list)  # of those, by the deadline check
    parked: list[Member] = field(default_factory=list)  # batch-class members sent back to wait
    resumed: list[str] = field(default_factory=list)  # joined ids that had run before (parked)


class EnginePolicy:
    """The running set and the waiting members of one engine; see the module docstring.

    ``max_rows``: the per-model bound (catalog ``max_batch_size``), by model id, ``default_rows``
    for the others; ``cost_prior``: ``(a, b)`` used before a step was observed;
    ``join_slowdown``: the entry rule's bound (``JOIN_SLOWDOWN``)."""

    def __init__(
        self,
        max_rows: dict[str, int] | None = None,
        *,
        default_rows: int = 4,
        cost_prior: tuple[float, float] | None = None,
        join_slowdown: float = JOIN_SLOWDOWN,
    ) -> None:
        if default_rows < 1 or any(v < 1 for v in (max_rows or {}).values()):
            raise ValueError("a batch bound must be at least 1 row")
        if join_slowdown < 1.0:
            raise ValueError(f"join_slowdown must be at least 1.0, got {join_slowdown}")
        self.join_slowdown = join_slowdown
        self.max_rows = dict(max_rows or {})
        self.default_rows = default_rows
        self.cost_prior = cost_prior
        self.running: dict[str, Member] = {}
        self.waiting: dict[str, Member] = {}
        self.costs: dict[tuple[str, tuple[int, ...], bool], StepCostModel] = {}
        self._seq = itertools.count()
        self._parked_for: str | None = None  # the interactive member the set was parked for

    # -- membership -------------------------------------------------------------------------

    @property
    def key(self) -> CompatKey | None:
        """The running set's key (None when it is empty)."""
        return next(iter(self.running.values())).key if self.running else None

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.running.values())

    def bound(self, model_id: str) -> int:
        return self.max_rows.get(model_id, self.default_rows)

    def submit(self, member: Member) -> None:
        """A member waits for the next step boundary."""
        if member.id in self.running or member.id in self.waiting:
            raise ValueError(f"member {member.id!r} is already in the engine")
        if member.rows < 1 or member.steps < 1:
            raise ValueError(f"member {member.id!r} needs rows >= 1 and steps >= 1")
        if member.rows > self.bound(member.key.model_id):
            raise ValueError(
                f"member {member.id!r} has {member.rows} rows, above the bound "
                f"{self.bound(member.key.model_id)} of model {member.key.model_id!r}"
            )
        member.seq = next(self._seq)
        self.waiting[member.id] = member

    def cancel(self, member_id: str) -> bool:
        """Mark a member cancelled; it leaves at the next boundary. False if unknown."""
        member = self.running.get(member_id) or self.waiting.get(member_id)
        if member is None:
            return False
        member.cancelled = True
        return True

    def accepts(self, key: CompatKey, rows: int, rank: int, *, admit: bool = True) -> bool:
        """Whether a call becomes a member here (it waits for a step boundary) rather than
        taking the request path through the replica's gate: the running set is empty or of its
        ``key``, and, for an interactive call that cannot join a batch-class set now (no room,
        or ``joins_running_set`` says no), only where ``sets_pay`` and ``admit`` (no other call
        waits for the replica's gate: the set then drains instead of parking, and the call
        waits at the gate to preempt it): it parks the set at the next boundary (see the module
        docstring). ``rows`` and ``rank`` are the call's."""
        own = self.key
        if own is None:
            return True
        if key != own:
            return False
        if rank != 0 or any(m.rank == 0 for m in self.running.values()):
            return True
        if self._joins_batch_set(key, rows):
            return True
        coefficients = self.cost(key).coefficients
        return (
            admit and coefficients is not None and sets_pay(coefficients, rows, self.join_slowdown)
        )

    def _joins_batch_set(self, key: CompatKey, rows: int) -> bool:
        """Whether an interactive call of ``rows`` rows joins the running batch-class set of
        its ``key`` now: room for its rows and ``joins_running_set`` (else it parks the set or
        takes the request path)."""
        if self.rows + rows > self.bound(key.model_id):
            return False
        set_rank = min(m.rank for m in self.running.values())
        coefficients = self.cost(key).coefficients
        return joins_running_set(0, rows, self.rows, set_rank, coefficients, self.join_slowdown)

    def cost(self, key: CompatKey) -> StepCostModel:
        model = self.costs.get(key.cost_key)
        if model is None:
            model = self.costs[key.cost_key] = StepCostModel(self.cost_prior)
        return model

    # -- the step loop ----------------------------------------------------------------------

    def boundary(self, now: float, *, admit: bool = True) -> Boundary:
        """At a step boundary: drop cancelled members, then let waiting ones join. ``admit``
        False lets none join a running set (the engine drains it: another call waits for the
        device); an empty set still takes the first waiter."""
        out = Boundary()
        for pool in (self.running, self.waiting):
            for mid in [m for m, member in pool.items() if member.cancelled]:
                out.cancelled.append(pool.pop(mid))
        if not admit and self.running:
            return out
        out.parked = self._park()
        for cand in sorted(self.waiting.values(), key=lambda m: (m.rank, m.seq)):
            key = self.key
            if key is not None and cand.key != key:
                out.refused[cand.id] = "incompatible with the running set"
                break  # no overtaking: the set drains, then this key gets its turn
            why = (
                self._bound_refusal(cand)
                or self._parked_refusal(cand)
                or self._slowdown_refusal(cand)
            )
            if why is None:
                why = self._deadline_refusal(cand, now)
                if why is not None:
                    out.deadline_refused.append(cand.id)
            if why is not None:
                out.refused[cand.id] = why
                if cand.rank == 0 and cand.id not in out.deadline_refused:
                    break  # no overtaking of a waiting interactive member: it goes next
                continue
            self.running[cand.id] = self.waiting.pop(cand.id)
            out.joined.append(cand)
            if cand.started:
                out.resumed.append(cand.id)
            cand.started = True
        return out

    def _park(self) -> list[Member]:
        """Send a batch-class set back to wait when the first waiting interactive member has
        its key and cannot join it (see the module docstring); returns the parked members."""
        if not self.running or any(m.rank == 0 for m in self.running.values()):
            return []
        fast = [m for m in self.waiting.values() if m.rank == 0 and not m.cancelled]
        if not fast:
            return []
        cand = min(fast, key=lambda m: m.seq)
        if cand.key != self.key or self._joins_batch_set(cand.key, cand.rows):
            return []
        parked = list(self.running.values())
        for m in parked:
            self.waiting[m.id] = self.running.pop(m.id)
        self._parked_for = cand.id
        return parked

    def _bound_refusal(self, cand: Member) -> str | None:
        """Why ``cand`` does not fit the running set's row bound (None: it fits)."""
        bound = self.bound(cand.key.model_id)
        if self.rows + cand.rows > bound:
            return f"batch bound: {self.rows} + {cand.rows} rows > {bound}"
        return None

    def _parked_refusal(self, cand: Member) -> str | None:
        """Why batch-class ``cand`` waits while the interactive member a set was parked for
        runs or waits: the parked members, and the batch class, join once it left, then by the
        slowdown rule around any interactive members still running (so a stream of interactive
        calls never holds them out for more than one call's steps). None: it may join by the
        other rules."""
        holder = self._parked_for
        if cand.rank == 0 or holder is None:
            return None
        if holder in self.running or holder in self.waiting:
            return "a parked set resumes when the interactive member it was parked for leaves"
        self._parked_for = None
        return None

    def _slowdown_refusal(self, cand: Member) -> str | None:
        """Why batch-class ``cand`` may not join a set holding interactive members: by the cost
        model, its rows would make the set's step cost more than ``join_slowdown`` times the
        interactive members' step alone (the entry rule's bound, kept while they run); None
        when it may, or when the cost is unknown."""
        if cand.rank == 0:
            return None
        fast = sum(m.rows for m in self.running.values() if m.rank == 0)
        coefficients = self.cost(cand.key).coefficients
        if not fast or coefficients is None:
            return None
        if not within_slowdown(coefficients, self.rows + cand.rows, fast, self.join_slowdown):
            return f"would slow the set's interactive members past {self.join_slowdown}x"
        return None

    def _deadline_refusal(self, cand: Member, now: float) -> str | None:
        """Why ``cand`` joining would push a running interactive member that meets its
        deadline past it, by the cost model (None: it would not, or the cost is unknown)."""
        if not self.running:
            return None
        model = self.cost(cand.key)
        now_s, after_s = model.predict(self.rows), model.predict(self.rows + cand.rows)
        if now_s is None or after_s is None:
            return None
        for m in self.running.values():
            if m.deadline is None:
                continue
            meets = now + m.left * now_s <= m.deadline
            if meets and now + m.left * after_s > m.deadline:
                return f"would push {m.id!r} past its deadline"
        return None

    def step_done(self, seconds: float, steps: int = 1) -> list[Member]:
        """After ``steps`` engine steps over the running set, each of ``seconds``: record
        their cost, advance every member; returns those that finished (they left the set).
        No member may have fewer than ``steps`` steps left (a segment ends where one does)."""
        if not self.running:
            return []
        if steps < 1 or steps > min(m.left for m in self.running.values()):
            raise ValueError(
                f"steps must be within 1 and the fewest steps a member has left, got {steps}"
            )
        key = self.key
        assert key is not None
        model = self.cost(key)
        for _ in range(min(steps, model.samples.maxlen or steps)):
            model.observe(self.rows, seconds)
        finished = []
        for member in self.running.values():
            member.done += steps
            if member.left <= 0:
                finished.append(member)
        for member in finished:
            del self.running[member.id]
        return finished

    def remove(self, member_id: str) -> Member | None:
        """Take a member out at once (its step failed); None if unknown."""
        return self.running.pop(member_id, None) or self.waiting.pop(member_id, None)

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting
