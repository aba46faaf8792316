"""Devices and host of the simulated cluster: each replica's step gate, calls sharing a GPU, and
the control plane's servers with the host contention of a CPU-only profile.

The engine (``engine.py``) routes calls to replicas and these methods run them. Each replica
mirrors ``deployments/worker/gate.py``: one piece of work (a call, or a step engine's running
set) computes at a time, the best waiter (``PriorityClass.rank``, then arrival at the gate) goes
next, and a running batch-class piece pauses at its next step boundary when a better one waits.
Work of replicas packed on one GPU shares it (``FamilyCost.device_share``).

The control plane (proxy, gateway, scheduler, the client) is ``control_plane_servers`` servers
that take each request's measured work per phase (``Profile.control_plane``), each piece on the
server free first. Where the devices are the host's CPU cores (``Profile.host_contention``),
every computing call slows down by the measured factor while that server is busy: a busy period
starts when work is queued on an idle control plane (for a submit, when its work starts) and
ends when the queue is empty. No Ray imports.
"""

from __future__ import annotations

import heapq
import itertools
import random

from genmedia.loadtests.sim.cluster import Cluster, Gpu, Replica
from genmedia.loadtests.sim.costs import Profile
from genmedia.loadtests.sim.empirical import draw
from genmedia.loadtests.sim.state import ADMIT, CALL, CP_IDLE, CP_START, EPS, Work
from genmedia.loadtests.sim.workload import SimRequest


class Devices:
    """The clock, the replicas' gates, the GPUs and the control plane of one run."""

    cluster: Cluster  # placed when the run starts (the engine's _build_cluster)

    def __init__(self, profile: Profile, seed: int):
        self.profile = profile
        self.heap: list = []
        self.seq = itertools.count()
        self.tickets = itertools.count()
        self.now = 0.0
        self.preemptions = 0
        self.placed = False  # the initial placement is done: replicas now come from the scaler
        # when each of the control plane's servers is next free (profile.control_plane[_s])
        self.cp_frees = [0.0] * profile.control_plane_servers
        self.cp = profile.control_plane  # measured per-phase cost, or None
        self.cp_rng = random.Random(f"{seed}:control-plane")
        # Host contention: computing calls run at host_rate (1 / slowdown) while the control
        # plane is busy, which it is until cp_busy_until (None: the term is off).
        hc = profile.host_contention
        self.slowdown = hc.compute_slowdown if hc is not None and hc.compute_slowdown > 1 else None
        self.host_rate = 1.0
        self.cp_busy_until = 0.0
        # ... and control-plane work that starts while a call computes takes cp_stretch longer
        self.cp_stretch = hc.cp_factor if hc is not None and hc.cp_factor > 1 else None
        self.computing = 0  # calls computing on the host (any device)
        self.rng = random.Random(seed)

    def _push(self, t: float, kind: int, a=None, b=None) -> None:
        heapq.heappush(self.heap, (t, kind, next(self.seq), a, b))

    # -- the step gate of a replica (deployments/worker/gate.py) -----------------------------
    def _gate_enter(self, rep: Replica, call: Work) -> None:
        call.ticket = next(self.tickets)
        if rep.holder is None and not rep.waiting:
            self._hold(rep, call)
            return
        rep.waiting.append(call)
        holder = rep.holder
        if holder is not None and call.priority < holder.priority and not holder.preempt:
            holder.preempt = True
            self._advance(holder)
            self._schedule(holder)

    def _hold(self, rep: Replica, call: Work) -> None:
        now = self.now
        rep.holder = call
        call.held_since = now
        call.since = now
        gpu = rep.gpu
        self.computing += 1
        if len(gpu.replicas) == 1:  # alone on its device: one call computes, at full speed
            gpu.active.append(call)
            gpu.load += call.share
            call.rate = self.host_rate
            self._schedule(call)
        else:
            self._advance_gpu(gpu)
            gpu.active.append(call)
            gpu.load += call.share
            self._rerate(gpu, call)
        if call.first_step_at is None:
            call.first_step_at = now + max(0.0, call.pre + call.step - call.done) / call.rate

    def _release(self, rep: Replica, call: Work) -> None:
        gpu = rep.gpu
        call.compute += self.now - call.held_since
        rep.holder = None
        self.computing -= 1
        if len(gpu.replicas) == 1:
            gpu.active.remove(call)
            gpu.load -= call.share
            return
        self._advance_gpu(gpu)
        gpu.active.remove(call)
        gpu.load -= call.share
        self._rerate(gpu, None)

    def _grant(self, rep: Replica) -> None:
        if rep.holder is not None or not rep.waiting:
            return
        best = min(rep.waiting, key=lambda c: (c.priority, c.ticket))
        rep.waiting.remove(best)
        self._hold(rep, best)

    # -- device sharing ----------------------------------------------------------------------
    def _advance(self, call: Work) -> None:
        call.done += (self.now - call.since) * call.rate
        call.since = self.now

    def _advance_gpu(self, gpu: Gpu) -> None:
        for c in gpu.active:
            self._advance(c)

    def _rerate(self, gpu: Gpu, new: Work | None) -> None:
        """Rates after the set of computing calls changed; reschedules whose rate moved."""
        rate = self.host_rate / max(1.0, gpu.load)
        for c in gpu.active:
            if c is new or abs(c.rate - rate) > EPS:
                c.rate = rate
                self._schedule(c)

    # -- host contention (Profile.host_contention) -------------------------------------------
    def _cp_busy(self, until: float) -> None:
        """Control-plane work is queued until ``until``: an idle control plane turns busy (every
        computing call slows down) and its end is watched."""
        if until <= self.now + EPS or until <= self.cp_busy_until:
            return
        idle = self.cp_busy_until <= self.now + EPS
        self.cp_busy_until = until
        if idle:
            assert self.slowdown is not None  # called only with host contention on
            self._push(until, CP_IDLE)
            self._set_host_rate(1.0 / self.slowdown)

    def _cp_idle(self) -> None:
        if self.cp_busy_until > self.now + EPS:  # more work came in meanwhile
            self._push(self.cp_busy_until, CP_IDLE)
            return
        self._set_host_rate(1.0)

    def _set_host_rate(self, rate: float) -> None:
        """Every computing call's speed after the control plane turned busy or idle."""
        if rate == self.host_rate:
            return
        self.host_rate = rate
        for gpu in self.cluster.gpus:
            if gpu.active:
                self._advance_gpu(gpu)
                self._rerate(gpu, None)

    def _schedule(self, call: Work) -> None:
        call.version += 1
        call.target = call.next_boundary() if call.preempt else call.total
        t = self.now + max(0.0, call.target - call.done) / call.rate
        heapq.heappush(self.heap, (t, CALL, next(self.seq), call, call.version))

    def _respond(self, stored: float) -> float:
        """When the client learns a job's end, its outputs stored at ``stored`` (a completion
        costs the control plane too)."""
        at = stored + self.profile.respond_s
        cp_s = self._stretch(self._cp_work("done"))
        if cp_s:
            server = self._cp_server()
            start = max(at, self.cp_frees[server])
            at = free = start + cp_s
            if self.cp is not None:  # reading the result after the final status
                free += self._stretch(self._cp_work("after"))
            self.cp_frees[server] = free
            self._cp_works(start, free)
        return at

    def _cp_submit(self, r: SimRequest, sent: float, work: float) -> None:
        server = self._cp_server()
        start = max(sent, self.cp_frees[server])
        at = self.cp_frees[server] = start + self._stretch(work)
        self._push(at, ADMIT, r)
        self._cp_works(start, at)

    def _cp_works(self, start: float, end: float) -> None:
        """The control plane works from ``start`` to ``end`` (host contention): busy from now on,
        or from ``start`` when that comes after an idle gap."""
        if self.slowdown is None:
            return
        if start > max(self.now, self.cp_busy_until) + EPS:
            self._push(start, CP_START, end)
        else:
            self._cp_busy(end)

    def _stretch(self, work: float) -> float:
        """Control-plane seconds of ``work`` CPU seconds placed now: stretched while a call
        computes on the host (``HostContention.control_plane_slowdown``), whose state when the
        work is placed stands for its state while the work runs."""
        if self.cp_stretch is None or not self.computing or not work:
            return work
        return work * self.cp_stretch

    def _cp_server(self) -> int:
        """The control plane's server that is free first (the one of a single server)."""
        frees = self.cp_frees
        if len(frees) == 1:
            return 0
        return min(range(len(frees)), key=frees.__getitem__)

    def _cp_work(self, phase: str) -> float:
        """Control-plane CPU seconds of one request's ``phase`` (submit, follow, done, after):
        drawn from the profile's measured distribution, or its one ``control_plane_s`` for
        submits and completions."""
        if self.cp is None:
            return self.profile.control_plane_s if phase in ("submit", "done") else 0.0
        return draw(getattr(self.cp, f"{phase}_s"), self.cp_rng.random())
