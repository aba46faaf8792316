"""How much a family's replicas slow each other down: the autoscaler's capacity signal.

The scheduler (``deployments/serve/scheduler.py``) hands every finished pipeline call's compute span
(the worker's wall clock, its replica, its cost) to a ``ContentionTracker``. Once every call
that could have overlapped it has finished too, the tracker counts how many of the family's
calls on *other* replicas computed beside it (time-averaged over the call) and files its wall
seconds per work unit as a solo sample (almost nobody beside it) or a contended one. Per model
and batch size it keeps both as moving averages; their ratio gives the slowdown per concurrent
call ``b`` of ``wall(x) = solo * (1 + b * x)``.

Replicas on their own devices have ``b`` near 0: an added replica adds a replica of capacity.
Replicas that share one device (fractional GPUs packed together, or CPU workers on the cores
the control plane also needs) have ``b`` near 1: an added replica adds almost none, it only
stretches the others. The policy (``autoscaling/policy.py``) reads ``b`` through
``record_autoscaling_stats`` and stops adding replicas whose added capacity is too small.
Pure; the caller passes the times.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

MAX_SPANS = 10_000  # per family, whatever the clocks say


@dataclass(frozen=True)
class ComputeSpan:
    """One pipeline call's compute, as the worker reported it."""

    call_id: str
    replica: str
    model_id: str
    images: int
    start: float  # wall clock (``time.time()``) when the call took its replica's step gate
    end: float  # wall clock when the last step finished
    seconds_per_unit: float  # wall compute seconds (pauses excluded) per work unit


@dataclass
class _Samples:
    """Moving averages of one (model, batch size)'s solo and contended seconds per unit."""

    solo: float = 0.0
    solo_n: int = 0
    contended: float = 0.0
    beside: float = 0.0  # how many calls computed beside the contended ones, on average
    contended_n: int = 0
    contended_at: float = 0.0  # wall clock of the last contended sample

    def add(
        self, x: float, spu: float, t: float, alpha: float, solo_below: float, over: float
    ) -> None:
        def ewma(old: float, new: float, n: int) -> float:
            return new if n == 0 else old + max(alpha, 1.0 / (n + 1)) * (new - old)

        if x < solo_below:
            self.solo, self.solo_n = ewma(self.solo, spu, self.solo_n), self.solo_n + 1
        elif x >= over:
            self.contended = ewma(self.contended, spu, self.contended_n)
            self.beside = ewma(self.beside, x, self.contended_n)
            self.contended_n += 1
            self.contended_at = t


@dataclass(frozen=True)
class Slowdown:
    """A model's slowdown per concurrent call, the evidence behind it and its age."""

    per_call: float  # b: each call computing beside one adds this share of its solo time
    evidence: int  # contended samples it rests on
    age_s: float  # since the last contended sample


class ContentionTracker:
    """Per family: open calls, finished spans not yet judged, recent spans; per model and batch
    size the solo and contended samples."""

    def __init__(
        self,
        alpha: float = 0.05,
        solo_below: float = 0.2,
        contended_over: float = 0.5,
        min_samples: int = 8,
    ):
        self.alpha, self.solo_below, self.contended_over = alpha, solo_below, contended_over
        self.min_samples = min_samples
        self.open: dict[str, dict[str, float]] = defaultdict(dict)  # family -> call -> dispatch
        self.pending: dict[str, list[ComputeSpan]] = defaultdict(list)
        self.spans: dict[str, deque[ComputeSpan]] = defaultdict(deque)
        self.samples: dict[tuple[str, int], _Samples] = defaultdict(_Samples)

    def dispatched(self, family: str, call_id: str, now: float) -> None:
        """A call left for a worker at ``now`` (no compute of it starts earlier)."""
        self.open[family][call_id] = now

    def dropped(self, family: str, call_id: str) -> None:
        """A call ended without a span (failed, cancelled): it no longer holds others back."""
        self.open[family].pop(call_id, None)
        self._judge(family)

    def finished(self, family: str, span: ComputeSpan) -> None:
        self.open[family].pop(span.call_id, None)
        if span.end > span.start and span.seconds_per_unit > 0:
            self.spans[family].append(span)
            self.pending[family].append(span)
        self._judge(family)

    def _judge(self, family: str) -> None:
        """File every pending span that no open call can still overlap."""
        watermark = min(self.open[family].values(), default=float("inf"))
        spans = self.spans[family]
        keep = []
        for s in self.pending[family]:
            if s.end > watermark:
                keep.append(s)
                continue
            beside = sum(
                max(0.0, min(s.end, o.end) - max(s.start, o.start))
                for o in spans
                if o.replica != s.replica and o.call_id != s.call_id
            ) / (s.end - s.start)
            self.samples[(s.model_id, s.images)].add(
                beside, s.seconds_per_unit, s.end, self.alpha, self.solo_below, self.contended_over
            )
        self.pending[family] = keep
        # a span that ended before every open call was sent and every unjudged span began
        # can overlap nothing still to be judged
        horizon = min([watermark, *(s.start for s in keep)])
        while spans and (spans[0].end < horizon or len(spans) > MAX_SPANS):
            spans.popleft()

    def slowdown(self, model_id: str, now: float) -> Slowdown | None:
        """The model's slowdown per concurrent call over its batch sizes with enough solo and
        contended samples (weighted by the contended evidence); None without such evidence."""
        total = weight = 0.0
        newest: float | None = None
        for (mid, _), s in self.samples.items():
            if mid != model_id or min(s.solo_n, s.contended_n) < self.min_samples:
                continue
            if s.solo <= 0 or s.beside <= 0:
                continue
            b = max(0.0, (s.contended / s.solo - 1.0) / s.beside)
            total += b * s.contended_n
            weight += s.contended_n
            newest = s.contended_at if newest is None else max(newest, s.contended_at)
        if not weight or newest is None:
            return None
        return Slowdown(total / weight, int(weight), max(0.0, now - newest))
