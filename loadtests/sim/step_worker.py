"""The step engine of a simulated worker replica (``workers.<family>.engine: step``).

Mirrors ``deployments/worker/step_loop.py`` and drives the worker's own policy object
(``deployments/worker/engine_policy.py``: ``EnginePolicy``, ``Member``, ``set_bound``; each
request's ``compat_key`` is resolved in ``workload.py``). A call routed to a step replica that
``EnginePolicy.accepts`` (as ``StepLoop.accepts``: the running set is empty, or of its key, and an
interactive call that cannot join a batch-class set only where ``sets_pay``) waits there as a
member, and a set waiting for the gate then ranks as its best member; at every step boundary
``EnginePolicy.boundary`` parks a batch-class set that a waiting interactive member of its key
cannot join (its step there would cost more than ``join_slowdown`` times its step alone, or the set
is full), then lets members join (same key, no overtaking of an incompatible waiter, the per-model
set bound, parked members wait for the interactive ones to leave, the slowdown bound around
interactive members, the deadline-aware cost check); a parked member keeps its progress and rejoins
without preparing again. ``step_done`` advances the set, records the step's seconds in the policy's
own ``a·n + b`` cost model and returns the members that finished: they decode on the set's time and
leave (their outputs are stored after the gate, as a call's are). A call of another key than the
running set (or an interactive call kept out) takes the request path (``device.py``: the replica's
gate, computed alone); while it waits the set takes no new members (``admit=False``: the set drains,
then releases the gate), and when it ranks better than every member (an interactive call) the set
pauses at its next step boundary, as ``StepGate.checkpoint`` does.

Time: one engine step over ``n`` rows (images) of one key costs ``a·n + b`` seconds, where
``FamilyCost.step_coefficients`` reads the profile's batch cost as a line in the batch size:
``a = step_per_image_s · cfg_multiplier (guidance on) · (mp / ref_megapixels) ** pixel_exponent``
and ``b = step_fixed_s``, times the run's per-family duration noise drawn per segment. A joining
call adds its ``call_overhead_s`` (text encoders, sampler set-up: ``StepEngine.prepare``, and a
model load when its replica had to load one) before the next step; members that finish add
their VAE decode after their last step; both on the set's time, as the loop thread runs them.

Like a call, a set runs between events, never one event per step: a segment starts at a
boundary and runs ``min(steps left)`` steps, unless something waits for the next boundary (a new
member, a gate waiter that ranks better, a member the deadline check refused,
``Boundary.deadline_refused``: then one step).
Not modelled: cancels (traces have none), adapter loads, the worker's ``supports`` (every job of
a step family runs step-level), and the worker's batched prepare (``StepLoop._ahead``: jobs next
in line prepare with a joiner): every joining call pays its whole ``call_overhead_s``.
No Ray imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genmedia.deployments.worker.engine_policy import (
    JOIN_SLOWDOWN,
    Boundary,
    EnginePolicy,
    Member,
    set_bound,
)
from genmedia.loadtests.sim.cluster import Replica
from genmedia.loadtests.sim.state import EPS, Call, Work

if TYPE_CHECKING:
    from genmedia.loadtests.sim.engine import Simulation


class SetRun(Work):
    """One step replica's running set on its gate and device, with the policy that decides it.
    Its work is the current segment: ``pre`` (joiners' preparation), ``steps`` steps of
    ``step`` seconds, then the decode of the members that finish at its last step."""

    __slots__ = ("calls", "in_gate", "joiners", "policy")

    def __init__(self, rep: Replica, policy: EnginePolicy):
        super().__init__(priority=1 << 30)
        self.replica = rep
        self.policy = policy
        self.calls: dict[str, Call] = {}  # member id -> its call (waiting or running)
        self.joiners: list[str] = []  # members that joined at the segment's start
        self.in_gate = False  # holding the replica's gate, or waiting for it

    def next_boundary(self) -> float:
        """As a call's, but the last step's boundary is the end: the decode of the members
        that finish there runs on without a checkpoint, as in the worker's loop."""
        at = super().next_boundary()
        if at >= self.pre + self.steps * self.step - EPS:
            return self.total
        return at


class StepWorkers:
    """The step engines of a simulation's step replicas (see the module docstring)."""

    def __init__(self, sim: Simulation, join_slowdown: float = JOIN_SLOWDOWN):
        self.sim = sim
        self.join_slowdown = join_slowdown  # the policy's entry rule bound
        self.joins = 0  # calls that joined a running set
        self.request_path = 0  # calls not accepted (another key), computed alone through the gate
        self.parks = 0  # boundaries that parked a batch-class set for an interactive member

    def run_of(self, rep: Replica) -> SetRun:
        run = rep.set_run
        if run is None:
            bounds = {
                m.id: set_bound(m.max_batch_size) for m in self.sim.catalog.families()[rep.family]
            }
            policy = EnginePolicy(bounds, join_slowdown=self.join_slowdown)
            run = rep.set_run = SetRun(rep, policy)
        return run

    def enter(self, rep: Replica, call: Call) -> None:
        """A call routed to a step replica: a member of its set when the policy accepts it
        (``StepLoop.accepts``), else the request path."""
        sim = self.sim
        run = self.run_of(rep)
        first = sim.reqs[int(call.jobs[0].id)]
        key = first.compat
        assert key is not None  # resolved for every valid request
        if not run.policy.accepts(key, call.images, call.priority, admit=not rep.waiting):
            self.request_path += 1
            sim._gate_enter(rep, call)
            return
        deadline = None
        if call.priority == 0:  # interactive: its model's target, from its earliest submit
            slo = sim.entries[call.model_id].slo.interactive_s
            deadline = min(sim.reqs[int(j.id)].t for j in call.jobs) + slo
        member = Member(str(call.id), key, call.images, call.priority, first.steps, deadline)
        run.policy.submit(member)
        run.calls[member.id] = call
        if run in rep.waiting and call.priority < run.priority:
            run.priority = call.priority  # the set waits for the gate at its best member's rank
        if not run.in_gate:
            self._start(run)
        elif not run.preempt:  # stop at the next boundary so it can join
            run.preempt = True
            if rep.holder is run:
                sim._advance(run)
                sim._schedule(run)

    def _start(self, run: SetRun) -> None:
        """An empty set takes its first members, then asks for the gate at their rank."""
        rep = run.replica
        assert rep is not None
        joined = run.policy.boundary(self.sim.now, admit=not rep.waiting)
        run.share = self._segment(run, joined)
        run.in_gate = True
        self.sim._gate_enter(rep, run)

    def on_boundary(self, run: SetRun) -> None:
        """The set reached the step boundary it ran to (a CALL event)."""
        sim, policy, rep = self.sim, run.policy, run.replica
        assert rep is not None
        now = sim.now
        sim._advance(run)
        run.done = run.target
        run.preempt = False
        finished = self._account(run)
        done = [run.calls.pop(m.id) for m in finished]
        if not policy.running:  # between sets the gate goes to a waiting call first
            sim._release(rep, run)
            run.in_gate = False
            sim._grant(rep)
            if policy.waiting:
                self._start(run)
        else:
            share = self._segment(run, policy.boundary(now, admit=not rep.waiting))
            best = min(rep.waiting, key=lambda w: (w.priority, w.ticket), default=None)
            if best is not None and best.priority < run.priority:  # StepGate.checkpoint yields
                sim.preemptions += 1
                sim._release(rep, run)
                run.share = share
                run.ticket = next(sim.tickets)
                rep.waiting.append(run)
                sim._grant(rep)
            else:
                run.held_since = now
                self._reshare(run, share)
        for call in done:
            sim._complete(call, call.compute, now + call.store)

    def _account(self, run: SetRun) -> list[Member]:
        """The segment that ended now: its steps through ``step_done`` (one observation each,
        at the wall seconds one took), each member's share of its wall time, first steps."""
        policy = run.policy
        ended = run.done >= run.total - EPS
        steps = run.steps if ended else round((run.done - run.pre) / run.step)
        wall = self.sim.now - run.held_since
        rows = policy.rows
        for mid, m in policy.running.items():
            run.calls[mid].compute += wall * m.rows / rows
        first = run.held_since + (run.pre + run.step) / run.rate
        for mid in run.joiners:
            run.calls[mid].first_step_at = first
        run.joiners = []
        return policy.step_done(run.step / run.rate, steps) if steps > 0 else []

    def _segment(self, run: SetRun, b: Boundary) -> float:
        """The next segment of a set after boundary ``b``: its work and priority (the best
        member's rank); returns its device share."""
        sim, policy = self.sim, run.policy
        run.joiners = [m.id for m in b.joined if m.id not in b.resumed]  # parked ones: prepared
        self.joins += len(run.joiners)
        self.parks += bool(b.parked)
        members = list(policy.running.values())
        first = sim.reqs[int(run.calls[members[0].id].jobs[0].id)]
        family = first.family
        cost = sim.costs[family]
        k = sim._duration_factor(family)
        a, b0 = cost.step_coefficients(first.megapixels, first.cfg)
        rows = policy.rows
        left = min(m.left for m in members)
        # a member refused only by the deadline check may join one step later: stop there
        steps = 1 if b.deadline_refused else left
        ending = sum(m.rows for m in members if m.left == steps)
        run.pre = sum(run.calls[mid].pre for mid in run.joiners)
        run.step = (a * rows + b0) * k
        run.steps = steps
        run.total = run.pre + steps * run.step + cost.decode_s(ending, first.megapixels) * k
        run.done = 0.0
        waiting = [m.rank for m in policy.waiting.values() if m.key == members[0].key]
        run.priority = min([m.rank for m in members] + waiting)  # as StepLoop._hold_gate
        return cost.share(rows, first.megapixels, first.cfg)

    def _reshare(self, run: SetRun, share: float) -> None:
        """A set that keeps the gate starts its next segment: its device share may change."""
        sim, rep = self.sim, run.replica
        assert rep is not None
        gpu = rep.gpu
        if len(gpu.replicas) == 1:
            gpu.load += share - run.share
            run.share = share
            run.since = sim.now
            sim._schedule(run)
            return
        sim._advance_gpu(gpu)
        gpu.load += share - run.share
        run.share = share
        sim._rerate(gpu, run)
