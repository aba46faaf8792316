"""The step engine of a family worker replica (``workers.<family>.engine: step``).

Sits where ``worker/batch.py``'s gated call sits in a request's way: the worker deployment
(``serve/worker.py``) hands a call whose jobs the family's step engine runs
(``models/step_engine.py``) to ``run_step_call``, which submits it here and waits. Each job of a
call is a member of its own, so a call's jobs fill whatever room the running set has and a wide
call never leaves rows empty. One thread runs the running set: at every step boundary the policy
(``engine_policy.py``) drops the jobs of cancelled calls and jobs cancelled on their own, and
lets compatible waiting jobs join (their prompts encoded together, under the gate, with the
set's adapters active, and with those of the waiting jobs of the set's key next in line, which
then join with nothing left to prepare); a batch-class set that an interactive job of its key
cannot join is parked (its jobs wait with their sampler states and resume later without a
second prepare); one denoiser forward runs over every member; the jobs that are done are
decoded together, in one VAE forward where the family batches it (batch-class jobs wait a step
or two for others to finish: ``DECODE_GROUP_ROWS``), and a call whose last job is
decoded is handed back (its own thread stores it while the others go on). The loop holds the
replica's ``StepGate`` while its set runs, at the rank of its best member: an incompatible
interactive call (request path) still preempts it at a step boundary, and while another call
waits for the gate the set takes no new members, so it drains.
No Ray imports; torch loads through the family's engine.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genmedia.deployments.protocol import BatchRequest, ProgressEvent
from genmedia.deployments.worker.batch import (
    CallTimes,
    Emit,
    ProgressThrottle,
    WorkerContext,
    read_inputs,
)
from genmedia.deployments.worker.device_time import timed
from genmedia.deployments.worker.engine_policy import (
    EnginePolicy,
    Member,
    compat_key,
    set_bound,
)
from genmedia.deployments.worker.gate import Cancelled

if TYPE_CHECKING:
    import numpy as np

    from genmedia.models.runner import LoadedModel
    from genmedia.models.step_engine import MemberState, StepEngine

logger = logging.getLogger(__name__)

# A batch-class job that finished while the set goes on waits up to DECODE_WAIT_STEPS steps for
# others, so its VAE decode is batched: in a running set jobs finish one or two a step, and the
# tiny SD1.5's decode costs 6.1 ms an image alone, 4.2 by two, 3.6 by eight (1 CPU thread).
# Interactive jobs, a set that empties and a call waiting for the gate decode at once.
DECODE_GROUP_ROWS = 4
DECODE_WAIT_STEPS = 2


@dataclass
class StepCall:
    """A call in the step engine: its request, its jobs' sampler states, what it measured.
    Each job is a member of its own (``member_ids``): it joins the running set when the set
    has room for its outputs, and leaves when it is done, so a call's jobs may run in
    different sets; the call ends when its last job is decoded (or with its first error)."""

    model: LoadedModel
    req: BatchRequest
    files: dict[str, Path]  # its adapters' local files
    cancel: threading.Event
    emit: Emit
    submitted: float = field(default_factory=time.perf_counter)
    inputs: list[dict[str, Any]] | None = None  # per job, its input images (image-to-image)
    states: list[MemberState | None] = field(default_factory=list)  # per job, once it joined
    times: CallTimes = field(default_factory=CallTimes)
    throttle: ProgressThrottle = field(default_factory=ProgressThrottle)
    started_wall: float = 0.0  # unix time its first job joined the running set
    outputs: list[list[np.ndarray]] | None = None  # per job, once all are decoded
    decoded: dict[int, list[np.ndarray]] = field(default_factory=dict)  # job index -> outputs
    parked_at: dict[int, float] = field(default_factory=dict)  # job index -> when it was parked
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return sum(j.num_images for j in self.req.jobs)

    @property
    def member_ids(self) -> list[str]:
        return [member_id(self.req.batch_id, i) for i in range(len(self.req.jobs))]

    def progress(self) -> tuple[int, int]:
        """(steps done, steps in all) of its least advanced job (0 for one still waiting)."""
        done = min((s.done if s is not None else 0) for s in self.states)
        total = max((s.total for s in self.states if s is not None), default=1)
        return done, total

    def end(self, error: BaseException | None = None) -> None:
        if error is None:
            self.outputs = [self.decoded[i] for i in range(len(self.req.jobs))]
        self.error = error
        self.times.span = (self.started_wall or time.time(), time.time())
        self.finished.set()


def member_id(batch_id: str, index: int) -> str:
    """The engine member of a call's job ``index``."""
    return f"{batch_id}/{index}"


class StepLoop:
    """One replica's running set and the thread that steps it."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.policy = EnginePolicy()
        self.calls: dict[str, StepCall] = {}  # by batch id
        self.jobs: dict[str, tuple[StepCall, int]] = {}  # member id -> its call, job index
        self._engines: dict[int, StepEngine] = {}  # id(LoadedModel) -> its engine
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._ticket: int | None = None
        self._finished: list[tuple[StepCall, int, int]] = []  # (call, job, steps since) to decode
        self._rank = 1 << 30  # the best rank among the set's members, waiting ones included

    def accepts(self, model: LoadedModel, req: BatchRequest) -> bool:
        """Whether a call runs here: its jobs run step-level, and the policy accepts it (the
        running set is empty or of its key: ``EnginePolicy.accepts``; an interactive call that
        cannot join a batch-class set parks it at the next boundary). Otherwise it takes the
        gate (request path), where an interactive call preempts the set at its next step
        boundary. A stale answer only makes the call wait for the set to drain, or run alone."""
        from genmedia.models.step_engine import supports

        if not req.jobs or not all(supports(model, j) for j in req.jobs):
            return False
        rows = sum(j.num_images for j in req.jobs)
        with self._cond:
            admit = self.ctx.gate.waiters == 0  # as the loop's boundaries
            return self.policy.accepts(
                compat_key(req.jobs[0]), rows, req.priority.rank, admit=admit
            )

    def submit(
        self,
        model: LoadedModel,
        req: BatchRequest,
        files: dict[str, Path],
        cancel: threading.Event,
        emit: Emit,
    ) -> StepCall:
        """Queue a call's jobs for the next step boundary; ``finished`` is set when the call
        is done. Its input images (image-to-image) are read here, on the caller's thread."""
        call = StepCall(model, req, files, cancel, emit)
        call.inputs = read_inputs(self.ctx.storage, req.jobs)
        call.states = [None] * len(req.jobs)
        entry = model.entry
        deadline = None
        if req.priority.rank == 0 and req.jobs[0].submitted_at > 0:
            deadline = min(j.submitted_at for j in req.jobs) + entry.slo.interactive_s
        rank = req.priority.rank
        members = [  # steps: set again once a job is prepared (its schedule's length)
            Member(
                mid, compat_key(job), job.num_images, rank, job.params.num_inference_steps, deadline
            )
            for mid, job in zip(call.member_ids, req.jobs, strict=True)
        ]
        widest = max(j.num_images for j in req.jobs)
        with self._cond:
            self.policy.max_rows[req.model_id] = max(set_bound(entry.max_batch_size), widest)
            for i, member in enumerate(members):
                self.policy.submit(member)
                self.jobs[member.id] = (call, i)
            self.calls[req.batch_id] = call
            self._rank = min(self._rank, rank)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="step-engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        self.ctx.gate.poke()  # a set waiting for the gate now ranks as its best member
        return call

    # -- the loop thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self.policy.running:  # between sets a call waiting for the gate goes first
                self._flush()
                self._release()
            with self._cond:
                while self.policy.idle:
                    self._release()
                    self._cond.wait()
                self._cancel_marked()
                boundary = self.policy.boundary(time.time(), admit=self.ctx.gate.waiters == 0)
            self._cancelled(boundary.cancelled)
            self._parked(boundary.parked, boundary.resumed)
            if not self.policy.running:
                self._release()
                continue
            running = self._running()
            try:  # joiners prepare with the set's adapters, under the gate like its steps
                if self.ctx.gate.waiters:
                    self._flush()  # before the set may yield the gate
                self._hold_gate(running)
                self._use_adapters(running[0][0])
            except Exception as e:
                logger.exception("step engine could not take the gate or load adapters")
                for call in _calls(running):
                    self._fail(call, e)
                continue
            resumed = set(boundary.resumed)
            joined = [m.id for m in boundary.joined if m.id in self.jobs and m.id not in resumed]
            if joined:
                self._join(joined)
            running = self._running()
            if not running:
                continue
            try:
                self._step(running)
            except Exception as e:  # one forward: every call with a job in it fails
                logger.exception("step engine forward failed")
                for call in _calls(running):
                    self._fail(call, e)

    def _cancel_marked(self) -> None:
        """Mark for the boundary (lock held) the jobs of cancelled calls and the jobs cancelled
        on their own (``WorkerContext.cancelled_jobs``)."""
        for call in self.calls.values():
            dropped = self.ctx.cancelled_jobs.get(call.req.batch_id) or ()
            for i, mid in enumerate(call.member_ids):
                if call.cancel.is_set() or call.req.jobs[i].request_id in dropped:
                    self.policy.cancel(mid)

    def _cancelled(self, members: list[Member]) -> None:
        """Members the boundary removed: a cancelled call ends with ``Cancelled``; a job
        cancelled on its own leaves with no outputs (its call stores nothing for it)."""
        for member in members:
            owner = self.jobs.get(member.id)
            if owner is None:
                continue  # its call ended with another of its jobs
            call, i = owner
            if call.cancel.is_set():
                self._fail(call, Cancelled())
            else:
                self._done(call, i, [])

    def _parked(self, parked: list[Member], resumed: list[str]) -> None:
        """Members parked at this boundary keep their sampler states; those resuming count
        the time they were parked as paused. A park counts as one of the replica's preemptions
        (batch-class work paused for interactive work), as the gate's do."""
        now = time.perf_counter()
        if parked:
            self.ctx.gate.count_preemption()
        for member in parked:
            owner = self.jobs.get(member.id)
            if owner is not None:
                owner[0].parked_at[owner[1]] = now
        for mid in resumed:
            owner = self.jobs.get(mid)
            if owner is not None:
                call, i = owner
                call.times.paused_s += now - call.parked_at.pop(i, now)

    def _running(self) -> list[tuple[StepCall, int]]:
        """The running set's jobs: (call, job index), in the set's order."""
        return [self.jobs[mid] for mid in self.policy.running]

    def _fail(self, call: StepCall, error: BaseException) -> None:
        """A call ends with ``error``: its jobs leave the engine, running or waiting."""
        with self._cond:
            if self.calls.pop(call.req.batch_id, None) is None:
                return  # ended already
            for mid in call.member_ids:
                self.policy.remove(mid)
                self.jobs.pop(mid, None)
        call.end(error)

    def _done(self, call: StepCall, index: int, outputs: list[np.ndarray]) -> None:
        """A job was decoded; its call ends with its last job."""
        call.decoded[index] = outputs
        with self._cond:
            self.jobs.pop(member_id(call.req.batch_id, index), None)
            last = len(call.decoded) == len(call.req.jobs)
            if last:
                self.calls.pop(call.req.batch_id, None)
        if last:
            call.end(None)

    def _release(self) -> None:
        if self._ticket is not None:
            self.ctx.gate.release(self._ticket)
            self._ticket = None

    def _engine(self, model: LoadedModel) -> StepEngine:
        from genmedia.models.step_engine import engine_for

        engine = self._engines.get(id(model))
        if engine is None:
            engine = engine_for(model)
            if engine is None:
                raise ValueError(f"model {model.entry.id!r} has no step engine")
            self._engines = {id(model): engine}  # the models of the running set only
        return engine

    def _join(self, joined: list[str]) -> None:
        """The jobs joining at this boundary: their wait ends; those not prepared yet (prompts,
        samplers, latents) prepare now, together with the waiting jobs of the set's key next
        in line (``_ahead``)."""
        now, wall = time.perf_counter(), time.time()
        for mid in joined:
            call, _ = self.jobs[mid]
            if not call.started_wall:
                call.times.wait_s = now - call.submitted
                call.started_wall = wall
        todo = [mid for mid in joined if _unprepared(self.jobs[mid])]
        if todo:
            self._prepare(todo + self._ahead(todo))

    def _batches_prepare(self, mid: str) -> bool:
        """Whether the family's engine of job ``mid`` prepares jobs in one batch
        (``prepare_many``); one that prepares job by job gains nothing from ``_ahead`` and would
        only put later joiners' prepare time on this step."""
        try:
            engine = self._engine(self.jobs[mid][0].model)
        except Exception:  # no step engine: ``_prepare`` fails the call
            return False
        return getattr(engine, "prepare_many", None) is not None

    def _ahead(self, todo: list[str]) -> list[str]:
        """Waiting jobs of the running set's key, not prepared yet, next in the join order, up
        to the set's bound of rows with ``todo``'s, where the family's engine prepares in one
        batch: prepared in ``todo``'s batch, they join later with nothing left to do. A full
        set whose jobs leave one or two a step would otherwise encode prompts one or two at a
        time (the tiny SD1.5's prepare costs 4.2 ms a job alone, 2.1 a job by eight, on one CPU
        thread)."""
        key = self.policy.key
        if key is None or not self._batches_prepare(todo[0]):
            return []
        with self._cond:
            rows = sum(self.policy.running[m].rows for m in todo if m in self.policy.running)
            bound = self.policy.bound(key.model_id)
            out = []
            for member in sorted(self.policy.waiting.values(), key=lambda m: (m.rank, m.seq)):
                owner = self.jobs.get(member.id)
                if member.key != key or member.cancelled or owner is None:
                    continue
                if not _unprepared(owner):
                    continue
                if rows + member.rows > bound:
                    break
                rows += member.rows
                out.append(member.id)
        return out

    def _prepare(self, mids: list[str]) -> None:
        """Prepare jobs in one batch where the family's engine batches it
        (``prepare_members``); when that fails, call by call, so a failure fails only its own
        call."""
        from genmedia.models.step_engine import prepare_members

        jobs = [self.jobs[mid] for mid in mids]
        try:
            engine = self._engine(jobs[0][0].model)
            sources = [call.inputs[i] if call.inputs is not None else None for call, i in jobs]
            states = prepare_members(engine, [c.req.jobs[i] for c, i in jobs], sources)
        except Exception as e:
            calls = _calls(jobs)
            if len(calls) == 1:
                self._fail(calls[0], e)
                return
            for call in calls:
                self._prepare([m for m in mids if self.jobs.get(m, (None,))[0] is call])
            return
        with self._cond:
            for mid, (call, i), state in zip(mids, jobs, states, strict=True):
                call.states[i] = state
                member = self.policy.running.get(mid) or self.policy.waiting.get(mid)
                if member is not None:  # its schedule's length (a strength shortens it)
                    member.steps = state.total

    def _use_adapters(self, call: StepCall) -> None:
        """Load and activate the running set's adapters (one set per running set: its key)."""
        model = call.model
        adapters = model.adapters
        if call.files or adapters.loaded:
            pinned = self.ctx.pins.others(model.entry.id, call.req.batch_id)
            loaded, _, _ = timed(adapters.ensure, model.pipe, call.files, pinned)
            call.times.adapter_load_s += loaded
            adapters.activate(model.pipe, call.req.adapters)

    def _hold_gate(self, running: list[tuple[StepCall, int]]) -> None:
        """Take the gate, or yield it at this boundary to a better-ranked waiting call."""
        calls = _calls(running)
        with self._cond:  # its best member's rank, a waiting one of its key included
            key = self.policy.key
            waiting = [m.rank for m in self.policy.waiting.values() if m.key == key]
            rank = min([c.req.priority.rank for c in calls] + waiting)
            self._rank = rank  # a job joining its key's members meanwhile ranks it up
        before = time.perf_counter()
        gate, best = self.ctx.gate, self._best_rank
        if self._ticket is None:
            self._ticket = gate.acquire(rank, rank=best)
        else:
            self._ticket = gate.checkpoint(self._ticket, rank, rank=best)
        paused = time.perf_counter() - before
        for call in calls:
            if call.started_wall:  # a call joining at this boundary counts it as waiting
                call.times.paused_s += paused

    def _best_rank(self) -> int:
        """The rank the set waits for the gate at: its best member's, a waiting one included
        (an interactive job of its key parks the set once it holds the gate)."""
        return self._rank

    def _step(self, running: list[tuple[StepCall, int]]) -> None:
        """One engine step over the running set (the gate held, its adapters active); jobs
        that are done are decoded, and a call ends with its last job."""
        engine = self._engine(running[0][0].model)
        states = [_state(call, i) for call, i in running]
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        engine.step(states)
        wall = time.perf_counter() - wall0
        cpu = min(wall, (time.thread_time() - cpu0) * self.ctx.threads)
        rows = sum(s.rows for s in states)
        with self._cond:
            finished = {m.id for m in self.policy.step_done(wall)}
        for (call, _), state in zip(running, states, strict=True):
            call.times.compute_s += wall * state.rows / rows
            call.times.device_s += cpu * state.rows / rows
        for call in _calls(running):
            step, total = call.progress()
            if call.throttle.due(step, total, time.perf_counter()):
                call.emit(ProgressEvent(step=step, total=total))
        done = [job for job in running if member_id(job[0].req.batch_id, job[1]) in finished]
        self._finished = [(c, i, waited + 1) for c, i, waited in self._finished]
        self._finished += [(c, i, 0) for c, i in done]
        if self._finished and self._decode_now():
            self._flush()

    def _decode_now(self) -> bool:
        """Whether the finished jobs decode at this step (see ``DECODE_GROUP_ROWS``)."""
        jobs = self._finished
        return (
            not self.policy.running
            or sum(c.req.jobs[i].num_images for c, i, _ in jobs) >= DECODE_GROUP_ROWS
            or any(c.req.priority.rank == 0 or waited >= DECODE_WAIT_STEPS for c, _, waited in jobs)
        )

    def _flush(self) -> None:
        """Decode the finished jobs whose calls did not end meanwhile (cancelled, failed)."""
        jobs = [(c, i) for c, i, _ in self._finished if member_id(c.req.batch_id, i) in self.jobs]
        self._finished = []
        if jobs:
            self._decode(self._engine(jobs[0][0].model), jobs)

    def _decode(self, engine: StepEngine, jobs: list[tuple[StepCall, int]]) -> None:
        """Decode finished jobs in one batch (``decode_members``), each
        taking its rows' share of the time; when that fails, call by call, so a failure fails
        only its own call."""
        from genmedia.models.step_engine import decode_members

        wall0, cpu0 = time.perf_counter(), time.thread_time()
        states = [_state(call, i) for call, i in jobs]
        try:
            outputs = decode_members(engine, states)
        except Exception as e:
            calls = _calls(jobs)
            if len(calls) == 1:
                self._fail(calls[0], e)
                return
            for call in calls:  # alone, so one failure fails one call
                self._decode(engine, [job for job in jobs if job[0] is call])
            return
        wall = time.perf_counter() - wall0
        cpu = min(wall, (time.thread_time() - cpu0) * self.ctx.threads)
        rows = sum(s.rows for s in states)
        for (call, i), state, images in zip(jobs, states, outputs, strict=True):
            call.times.compute_s += wall * state.rows / rows
            call.times.device_s += cpu * state.rows / rows
            self._done(call, i, images)


def _calls(jobs: list[tuple[StepCall, int]]) -> list[StepCall]:
    """The calls of ``jobs``, each once, in order."""
    return list({id(call): call for call, _ in jobs}.values())


def _unprepared(job: tuple[StepCall, int]) -> bool:
    call, index = job
    return call.states[index] is None


def _state(call: StepCall, index: int) -> MemberState:
    state = call.states[index]
    if state is None:
        raise RuntimeError(f"job {index} of call {call.req.batch_id!r} runs before it joined")
    return state
