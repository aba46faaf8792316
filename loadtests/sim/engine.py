"""Discrete-event engine of the cluster simulator: a heap of events on a virtual clock.

It plays the scheduler deployment's part with the scheduler's own objects: the same
``Dispatcher`` (``deployments/scheduler/dispatcher.py``: per family the fair queues, the batch
class's share, the slots, the running batches, expiry, the admission counts and ETAs) and
``admit`` with the tenant's ``RateLimiter``. Each replica mirrors ``deployments/serve/worker.py``:
at most ``slots_per_replica`` calls routed to it (Serve's ``max_ongoing_requests``), run through
its step gate on its GPU (``device.py``). A family's worker runs request-level batches (one
call computes at a time) or the step engine (``step_worker.py``: calls join a running set at
step boundaries under the worker's own ``EnginePolicy``), per ``SimConfig.engine`` or the
catalog. The cost of each call comes from a ``Profile``; a ``Scaler`` may change replica counts
every ``scale_interval_s``.

Only the events of a call's life are simulated (start, end, a step boundary when it must pause
or a set changes), never every step, so a million requests on a thousand GPUs run in seconds.
No Ray imports.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
import random
import time
from typing import cast

from genmedia.deployments.scheduler.admission import AdmissionInput, admit
from genmedia.deployments.scheduler.dispatcher import (
    Dispatcher,
    Launch,
    ModelLimits,
    slots_per_replica,
)
from genmedia.deployments.scheduler.queues import CLASSES, QueuedJob
from genmedia.deployments.tenants.ratelimit import RateLimiter
from genmedia.loadtests.records import RequestRecord
from genmedia.loadtests.sim.cluster import Cluster, Replica, place, replica_counts
from genmedia.loadtests.sim.costs import FamilyCost, Profile
from genmedia.loadtests.sim.device import Devices
from genmedia.loadtests.sim.empirical import draw
from genmedia.loadtests.sim.scaling import ClusterSnapshot, FamilySnapshot, ModelSnapshot
from genmedia.loadtests.sim.state import (
    ADMIT,
    CALL,
    CP_IDLE,
    CP_START,
    DEADLINE,
    DISPATCH,
    EPS,
    READY,
    SCALE,
    UNLIMITED,
    Call,
    FamilyState,
    SimConfig,
    SimResult,
)
from genmedia.loadtests.sim.step_worker import SetRun, StepWorkers
from genmedia.loadtests.sim.workload import SimRequest
from genmedia.models.catalog import Catalog

__all__ = ["Call", "SimConfig", "SimResult", "Simulation", "simulate"]


class Simulation(Devices):
    """One run of a trace through a simulated cluster (see the module docstring)."""

    def __init__(self, catalog: Catalog, profile: Profile, config: SimConfig | None = None):
        self.config = config or SimConfig()
        super().__init__(profile, self.config.seed)
        self.catalog = catalog
        self.fifo = self.config.policy == "fifo"
        settings = catalog.server.scheduler
        self.batch_min_share = (
            settings.batch_min_share
            if self.config.batch_min_share is None
            else self.config.batch_min_share
        )
        self.model_queue_limit = settings.model_queue_limit
        self.entries = {m.id: m for m in catalog.models}
        tenants = self.config.tenants.tenants if self.config.tenants else []
        self.max_images_of = {m.id: m.max_batch_size for m in catalog.models}
        # Families the profile has no cost model for get no replicas (a trace for them is
        # refused before the run: ``run.run_sim``).
        self.costs: dict[str, FamilyCost] = {
            f: profile.families[f] for f in catalog.families() if f in profile.families
        }
        # each family's worker engine: request-level batches or the step engine
        self.engines = {f: self.config.engine or catalog.worker(f).engine for f in self.costs}
        self.fams = {
            f: FamilyState(f, slots_per_replica(e, max(m.max_batch_size for m in fam)))
            for f, e in self.engines.items()
            if (fam := catalog.families()[f])
        }
        self.dispatcher = Dispatcher(
            {
                m.id: ModelLimits(m.family, m.max_batch_size, m.batch_wait_ms / 1000.0)
                for m in catalog.models
            },
            batch_min_share=self.batch_min_share,
            fifo=self.fifo,
            families=self.costs,
            replicas=0,
            tenant_limits={t.id: t.quotas.max_concurrent_jobs for t in tenants},
            engines=self.engines,
        )
        self.steps = StepWorkers(self)
        self.estimator = self.dispatcher.estimator
        self.weights = {t.id: t.weight for t in tenants} or dict(self.config.weights or {})
        self.quotas = {t.id: t.quotas for t in tenants}
        self.rate = RateLimiter({t.id: t.quotas.requests_per_minute for t in tenants})
        self.call_ids = itertools.count()
        self.events = 0
        self.calls = 0
        self.records: list[RequestRecord] = []
        self.reqs: list[SimRequest] = []
        self.timeline: list[dict] = []
        self.placed = False  # the initial placement is done: replicas now come from the scaler
        self.rng = random.Random(self.config.seed)
        # measured duration factor per family: quantiles drawn by inverse transform
        self.factor_quantiles = {
            f: c.duration_quantiles for f, c in self.costs.items() if c.duration_quantiles
        }
        # log-normal duration factor with mean 1 per family: (mu, sigma)
        self.noise = {
            f: (-math.log(1 + c.cv**2) / 2, math.sqrt(math.log(1 + c.cv**2)))
            for f, c in self.costs.items()
            if c.cv > 0
        }

    # -- set-up ------------------------------------------------------------------------------
    def offered_work(self, requests: list[SimRequest]) -> dict[str, float]:
        """Device-seconds each family's requests need (batch class at full batches)."""
        work = dict.fromkeys(self.fams, 0.0)
        for r in requests:
            if r.error is not None:
                continue
            cost = self.costs[r.family]
            batch = 1 if r.priority == "interactive" else self.max_images_of[r.model_id]
            per_image = cost.call_s(batch, r.megapixels, r.steps, r.cfg) / batch
            work[r.family] += per_image * r.images
        return work

    def _build_cluster(self, requests: list[SimRequest]) -> Cluster:
        cfg = self.config
        counts = cfg.replicas or replica_counts(
            self.catalog, cfg.packing, cfg.gpus, self.offered_work(requests)
        )
        unknown = set(counts) - set(self.catalog.families())
        if unknown:
            raise ValueError(f"replicas for unknown families {sorted(unknown)}")
        counts = {f: n for f, n in counts.items() if f in self.costs}
        cluster = place(self.catalog, cfg.packing, cfg.gpus, counts)
        for fam, reps in cluster.replicas.items():
            for rep in reps:
                for m in self.catalog.families()[fam][: rep.max_loaded]:
                    rep.touch(m.id)
                self._set_ready(rep)
        return cluster

    # -- events ------------------------------------------------------------------------------
    def run(self, requests: list[SimRequest]) -> SimResult:
        # Millions of long-lived small objects and no cycles: the cyclic collector would only
        # rescan them over and over.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(requests)
        finally:
            if was_enabled:
                gc.enable()

    def _run(self, requests: list[SimRequest]) -> SimResult:
        wall = time.perf_counter()
        self.reqs = requests
        self.cluster = self._build_cluster(requests)
        self.placed = True
        if self.config.scaler is not None:
            self._push(self.config.scale_interval_s, SCALE)
        submit_s = self.profile.submit_s
        heap = self.heap
        arrivals = iter(requests)
        nxt = next(arrivals, None)
        nxt_cp = self._cp_work("submit")
        pop = heapq.heappop
        contended = self.slowdown is not None
        servers = len(self.cp_frees) > 1
        while nxt is not None or heap:
            if nxt is not None and servers and nxt_cp:
                # Several control-plane servers: a submit takes the first free one when it is
                # sent, and the request is admitted when that work is done.
                sent = nxt.t + submit_s
                if not heap or heap[0][0] > sent:
                    self.now = max(self.now, sent)
                    self._cp_submit(nxt, sent, nxt_cp)
                    nxt = next(arrivals, None)
                    nxt_cp = self._cp_work("submit")
                    continue
            elif nxt is not None:
                at = nxt.t + submit_s
                if nxt_cp:  # the control plane's first free server takes the submit
                    server = self._cp_server()
                    work = self._stretch(nxt_cp)
                    at = max(at, self.cp_frees[server]) + work
                    # Host contention: the submit's work starts before the arrival is handled
                    # (at its end); the control plane is busy from that start.
                    if contended and at > max(self.cp_busy_until, self.now) + EPS:
                        start = max(at - work, self.now)
                        if not heap or heap[0][0] > start:
                            self.now = start
                            self._cp_busy(at)
                            continue
                if not heap or heap[0][0] > at:
                    self.now = at
                    if nxt_cp:
                        self.cp_frees[server] = at
                        if contended:
                            self._cp_busy(at)
                    self.events += 1
                    self._arrive(nxt)
                    nxt = next(arrivals, None)
                    nxt_cp = self._cp_work("submit")
                    continue
            t, kind, _, a, b = pop(heap)
            self.now = t
            self.events += 1
            if kind == CALL:
                if b == a.version:
                    if a.__class__ is SetRun:
                        self.steps.on_boundary(a)
                    else:
                        self._call_event(a)
            elif kind == DEADLINE:
                self._deadline(a, b)
            elif kind == DISPATCH:
                if a.retry_at == t:
                    a.retry_at = None
                    self._dispatch(a)
            elif kind == READY:
                self._set_ready(a)
                self._route_waiting(self.fams[a.family])
                self._dispatch(self.fams[a.family])
            elif kind == SCALE:
                self._scale_tick(more=nxt is not None)
            elif kind == CP_IDLE:
                self._cp_idle()
            elif kind == CP_START:
                self._cp_busy(a)
            elif kind == ADMIT:
                self._arrive(a)
        replicas = {f: len(r) for f, r in self.cluster.replicas.items()}
        return SimResult(
            records=self.records,
            wall_s=time.perf_counter() - wall,
            events=self.events,
            calls=self.calls,
            preemptions=self.preemptions,
            gpus=len(self.cluster.gpus),
            replicas=replicas,
            sim_end_s=self.now,
            timeline=self.timeline,
        )

    # -- submit ------------------------------------------------------------------------------
    def _arrive(self, r: SimRequest) -> None:
        now = self.now
        rec = RequestRecord(
            index=r.index,
            tenant=r.tenant,
            priority=r.priority,
            model=r.model_id,
            images=r.images,
            steps=r.steps,
            t_scheduled=r.t,
            t_submit=r.t,
        )
        if r.index == len(self.records):
            self.records.append(rec)
        else:  # admitted out of order (several control-plane servers): by index all the same
            holes = [None] * (r.index + 1 - len(self.records))  # filled as those arrive
            self.records.extend(cast(list[RequestRecord], holes))
            self.records[r.index] = rec
        if r.error is not None:
            rec.status, rec.http_status, rec.error = "ERROR", r.error_status, r.error
            rec.t_done = now + self.profile.respond_s
            return
        fs = self.fams[r.family]
        d = self.dispatcher
        quotas = self.quotas.get(r.tenant)
        queued, _, model_queued = d.admission_counts(r.tenant, r.model_id)
        predicted = None
        if r.deadline_s is not None:  # admit reads the ETA only against a deadline
            predicted = d.predicted_start(r.family, r.priority, now)
        rejection = admit(
            AdmissionInput(
                tenant=r.tenant,
                tenant_queued=queued,
                max_queued_jobs=quotas.max_queued_jobs if quotas else UNLIMITED,
                model_queued=model_queued,
                model_queue_limit=self.model_queue_limit,
                rate_wait_s=self.rate.try_acquire(r.tenant, now) if quotas else 0.0,
                predicted_start_s=predicted,
                deadline_in_s=r.deadline_s,
            )
        )
        if rejection is not None:
            rec.status, rec.http_status = "REJECTED", rejection.status
            rec.error = f"{rejection.type}: {rejection.message}"
            rec.t_done = now + self.profile.respond_s
            return
        rec.t_admitted = now
        if self.cp is not None:  # the client follows the job: work queued, nobody waits for it
            server = self._cp_server()
            start = max(self.cp_frees[server], now)
            free = self.cp_frees[server] = start + self._stretch(self._cp_work("follow"))
            self._cp_works(start, free)
        job = QueuedJob(
            id=str(r.index),
            tenant=r.tenant,
            model_id=r.model_id,
            family=r.family,
            priority=d.queue_class(r.priority),
            key=r.key,
            images=r.images,
            cost=r.cost,
            arrived=now,
            weight=self.weights.get(r.tenant, 1.0),
            deadline=None if r.deadline_s is None else now + r.deadline_s,
        )
        d.enqueue(job)
        fs.arrivals += 1
        if job.deadline is not None:
            self._push(job.deadline, DEADLINE, fs, job)
        self._dispatch(fs)

    def _deadline(self, fs: FamilyState, job: QueuedJob) -> None:
        if self.records[int(job.id)].t_started is not None:
            return  # started in time
        self._dispatch(fs)  # the dispatcher expires it first

    # -- dispatch (the scheduler deployment's _dispatch_once, for one family) -----------------
    def _dispatch(self, fs: FamilyState) -> None:
        d = self.dispatcher.dispatch(self.now, fs.name)
        for gone in d.expired:
            rec = self.records[int(gone.id)]
            rec.status, rec.error = "EXPIRED", "deadline_expired"
            rec.t_done = self.now + self.profile.respond_s
        if d.retry_at is not None and (fs.retry_at is None or d.retry_at < fs.retry_at):
            fs.retry_at = d.retry_at
            self._push(d.retry_at, DISPATCH, fs)
        for launch in d.launches:
            self._launch(fs, launch)

    def _launch(self, fs: FamilyState, launch: Launch) -> None:
        now = self.now
        call_id = next(self.call_ids)
        batch = self.dispatcher.started(launch, now, str(call_id))
        assert batch is not None  # every job of a simulated launch starts
        call = Call(call_id, batch)
        self.calls += 1
        for j in batch.jobs:
            self.records[int(j.id)].t_started = now
        r = self.reqs[int(batch.jobs[0].id)]
        cost = self.costs[fs.name]
        k = self._duration_factor(fs.name)
        call.step = cost.step_s(call.images, r.megapixels, r.cfg) * k
        call.steps = r.steps
        call.pre = cost.call_overhead_s * k
        call.share = cost.share(call.images, r.megapixels, r.cfg)
        decode = cost.decode_s(call.images, r.megapixels) * k
        call.total = call.pre + call.steps * call.step + decode
        call.store = cost.store_s(call.images) * k
        call.started = now
        if not self._route(fs, call):
            fs.unrouted.append(call)

    def _duration_factor(self, family: str) -> float:
        """A call's (or a step engine's segment's) duration factor: the family's measured
        quantiles, else its log-normal noise, else 1."""
        if family in self.factor_quantiles:
            return draw(self.factor_quantiles[family], self.rng.random())
        if family in self.noise:
            return self.rng.lognormvariate(*self.noise[family])
        return 1.0

    # -- routing (Serve: multiplexed model first, then least loaded) -------------------------
    def _route(self, fs: FamilyState, call: Call) -> bool:
        rep = None
        for bucket in fs.buckets:
            if not bucket:
                continue
            tried: list[Replica] = []
            while bucket and len(tried) < 8:
                cand = bucket.popitem()[1]
                tried.append(cand)
                if call.model_id in cand.loaded:
                    rep = cand
                    break
            if rep is None:
                rep = tried[0]
            for other in tried:
                if other is not rep:
                    bucket[other.id] = other
            break
        if rep is None:
            return False
        rep.ongoing += 1
        if rep.ongoing < fs.slots:
            fs.buckets[rep.ongoing][rep.id] = rep
        call.replica = rep
        if rep.touch(call.model_id):
            call.pre += self.costs[fs.name].load_s
            call.total += self.costs[fs.name].load_s
        if self.engines[fs.name] == "step":
            self.steps.enter(rep, call)
        else:
            self._gate_enter(rep, call)
        return True

    def _route_waiting(self, fs: FamilyState) -> None:
        while fs.unrouted and self._route(fs, fs.unrouted[0]):
            fs.unrouted.popleft()

    def _call_event(self, call: Call) -> None:
        self._advance(call)
        call.done = call.target
        if call.done >= call.total - EPS:
            self._finish(call)
            return
        rep = call.replica
        assert rep is not None  # a computing call was routed
        # A step boundary with an interactive call waiting: pause (gate.checkpoint).
        call.preempt = False
        self.preemptions += 1
        self._release(rep, call)
        call.ticket = next(self.tickets)
        rep.waiting.append(call)
        self._grant(rep)

    def _finish(self, call: Call) -> None:
        """A call of the request path ends: the gate goes to the next waiter."""
        rep = call.replica
        assert rep is not None  # a computing call was routed
        self._release(rep, call)
        call.preempt = False
        self._grant(rep)
        self._complete(call, call.compute, self.now + call.store)

    def _complete(self, call: Call, compute: float, stored: float) -> None:
        """A call's jobs are done (outputs stored at ``stored``): its replica slot and its
        dispatcher slot are free, its records complete."""
        rep = call.replica
        assert rep is not None  # a computing call was routed
        fs = self.fams[call.family]
        rep.ongoing -= 1
        if rep.ready and not rep.draining:
            if rep.ongoing + 1 < fs.slots:
                fs.buckets[rep.ongoing + 1].pop(rep.id, None)
            fs.buckets[rep.ongoing][rep.id] = rep
        if rep.draining and rep.ongoing == 0:
            self.cluster.remove(rep)
        self.dispatcher.finished(call.batch.id)
        self.estimator.observe(call.model_id, call.cost, compute)
        for j in call.jobs:
            rec = self.records[int(j.id)]
            rec.status = "COMPLETED"
            rec.t_first_progress = call.first_step_at
            rec.t_done = self._respond(stored)
            rec.compute_s = compute * j.images / call.images
            assert rec.t_started is not None and rec.t_admitted is not None
            rec.queue_s = rec.t_started - rec.t_admitted
        fs.completed += len(call.jobs)
        self._route_waiting(fs)
        self._dispatch(fs)

    # -- replicas and scaling ----------------------------------------------------------------
    def _set_ready(self, rep: Replica) -> None:
        fs = self.fams[rep.family]
        if not rep.ready:
            if self.placed:  # added by the scaler (not the initial placement)
                fs.starting -= 1
            rep.ready = True
            fs.ready += 1
            self.dispatcher.set_replicas(fs.name, fs.ready)
            fs.buckets[0][rep.id] = rep

    def _scale_tick(self, more: bool) -> None:
        scaler = self.config.scaler
        assert scaler is not None  # ticks run only with a scaler
        snap = self.snapshot()
        desired = scaler(snap)
        for fam, want in desired.items():
            if fam in self.fams:
                self._resize(self.fams[fam], max(0, int(want)))
        self.timeline.append(
            {
                "t": self.now,
                **{f"replicas.{f}": s.replicas for f, s in snap.families.items()},
                **{f"queued.{f}": sum(s.queued.values()) for f, s in snap.families.items()},
            }
        )
        busy = any(
            s.running_calls or sum(s.queued.values()) or s.starting for s in snap.families.values()
        )
        if more or busy:
            self._push(self.now + self.config.scale_interval_s, SCALE)

    def _resize(self, fs: FamilyState, want: int) -> None:
        have = fs.ready + fs.starting
        cost = self.costs[fs.name]
        while have < want:
            rep = self.cluster.add(fs.name)
            if rep is None:
                break  # no room on any GPU
            fs.starting += 1
            have += 1
            loads = min(rep.max_loaded, len(self.catalog.families()[fs.name]))
            for m in self.catalog.families()[fs.name][: rep.max_loaded]:
                rep.touch(m.id)
            self._push(self.now + self.profile.replica_start_s + loads * cost.load_s, READY, rep)
        if have <= want:
            return
        live = [r for r in self.cluster.replicas[fs.name] if r.ready and not r.draining]
        for rep in sorted(live, key=lambda r: (r.ongoing, -r.id))[: have - want]:
            if fs.ready <= 1 and want > 0:
                break
            rep.draining = True
            fs.ready -= 1
            self.dispatcher.set_replicas(fs.name, fs.ready)
            for bucket in fs.buckets:
                bucket.pop(rep.id, None)
            if rep.ongoing == 0:
                self.cluster.remove(rep)

    def snapshot(self) -> ClusterSnapshot:
        now = self.now
        d = self.dispatcher
        fams = {}
        for name, fs in self.fams.items():
            reps = self.cluster.replicas[name]
            qs = d.queues(name)
            fams[name] = FamilySnapshot(
                family=name,
                replicas=fs.ready,
                starting=fs.starting,
                queued={c.value: len(q) for c, q in qs.items()},
                queued_cost={c.value: sum(j.cost for j in q.jobs) for c, q in qs.items()},
                running_calls=d.running_calls(name),
                busy_replicas=sum(1 for r in reps if r.holder is not None),
                arrivals=fs.arrivals,
                completed=fs.completed,
                oldest_wait_s={
                    c.value: (now - min(j.arrived for j in q.jobs)) if q.jobs else 0.0
                    for c, q in qs.items()
                },
                running_jobs=d.running_jobs(name),
            )
            fs.arrivals = fs.completed = 0
        queued = {m: {c.value: 0.0 for c in CLASSES} for m in self.entries}
        for name in self.fams:
            for q in d.queues(name).values():
                for j in q.jobs:
                    queued[j.model_id][j.priority] += j.cost
        models = {
            m: ModelSnapshot(
                queued_units=queued[m],
                inflight_units=d.running_units.get(m, 0.0),
                seconds_per_unit=self.estimator.device_per_cost.get(m),
                load_s=self.costs[e.family].load_s,
                admitted_units={c.value: d.admitted_units.get((m, c), 0.0) for c in CLASSES},
            )
            for m, e in self.entries.items()
        }
        return ClusterSnapshot(
            now=now,
            interval_s=self.config.scale_interval_s,
            gpus=len(self.cluster.gpus),
            free_gpu=sum(g.free for g in self.cluster.gpus),
            occupied_gpus=sum(1 for g in self.cluster.gpus if g.replicas),
            families=fams,
            models=models,
        )


def simulate(
    catalog: Catalog, profile: Profile, requests: list[SimRequest], config: SimConfig | None = None
) -> SimResult:
    """Run ``requests`` (in arrival order) through a simulated cluster."""
    return Simulation(catalog, profile, config).run(requests)
