"""The step engine of a family worker replica (``workers.<family>.engine: step``).

Sits where ``worker/batch.py``'s gated call sits in a request's way: the worker deployment
(``serve/worker.py``) hands a call whose jobs the family's step engine runs
(``models/step_engine.py``) to ``run_step_call``, which submits it here and waits. One thread
runs the running set: at every step boundary the policy (``engine_policy.py``) drops cancelled
calls and lets compatible waiting calls join; one denoiser forward runs over every member; the
calls whose members are done are decoded together, in one VAE forward where the family batches
it, and handed back (each call's own thread stores it while the others go on). The loop holds
the replica's ``StepGate`` while its set runs, at the rank of its best member: an incompatible
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


@dataclass
class StepCall:
    """A call in the step engine: its request, its members' sampler states, what it measured."""

    model: LoadedModel
    req: BatchRequest
    files: dict[str, Path]  # its adapters' local files
    cancel: threading.Event
    emit: Emit
    submitted: float = field(default_factory=time.perf_counter)
    inputs: list[dict[str, Any]] | None = None  # per job, its input images (image-to-image)
    states: list[MemberState] = field(default_factory=list)  # one per job
    times: CallTimes = field(default_factory=CallTimes)
    throttle: ProgressThrottle = field(default_factory=ProgressThrottle)
    started_wall: float = 0.0  # unix time it joined the running set
    outputs: list[list[np.ndarray]] | None = None  # per job, once decoded
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return sum(j.num_images for j in self.req.jobs)

    def end(self, error: BaseException | None = None) -> None:
        self.error = error
        self.times.span = (self.started_wall or time.time(), time.time())
        self.finished.set()


class StepLoop:
    """One replica's running set and the thread that steps it."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.policy = EnginePolicy()
        self.calls: dict[str, StepCall] = {}
        self._engines: dict[int, StepEngine] = {}  # id(LoadedModel) -> its engine
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._ticket: int | None = None

    def accepts(self, model: LoadedModel, req: BatchRequest) -> bool:
        """Whether a call runs here: its jobs run step-level, and the policy accepts it (the
        running set is empty, or of its key and, for an interactive call, the join rule lets it
        in: ``EnginePolicy.accepts``). Otherwise it takes the gate (request path), where an
        interactive call preempts the set at its next step boundary. A stale answer only makes
        the call wait for the set to drain, or run alone."""
        from genmedia.models.step_engine import supports

        if not req.jobs or not all(supports(model, j) for j in req.jobs):
            return False
        rows = sum(j.num_images for j in req.jobs)
        with self._cond:
            return self.policy.accepts(compat_key(req.jobs[0]), rows, req.priority.rank)

    def submit(
        self,
        model: LoadedModel,
        req: BatchRequest,
        files: dict[str, Path],
        cancel: threading.Event,
        emit: Emit,
    ) -> StepCall:
        """Queue a call for the next step boundary; ``finished`` is set when it is done. Its
        input images (image-to-image) are read here, on the caller's thread."""
        call = StepCall(model, req, files, cancel, emit)
        call.inputs = read_inputs(self.ctx.storage, req.jobs)
        entry = model.entry
        deadline = None
        if req.priority.rank == 0 and req.jobs[0].submitted_at > 0:
            deadline = min(j.submitted_at for j in req.jobs) + entry.slo.interactive_s
        steps = req.jobs[0].params.num_inference_steps  # set exactly once the call joins
        member = Member(req.batch_id, compat_key(req.jobs[0]), call.rows, req.priority.rank,
                        steps, deadline)  # fmt: skip
        with self._cond:
            self.policy.max_rows[req.model_id] = max(set_bound(entry.max_batch_size), call.rows)
            self.policy.submit(member)
            self.calls[req.batch_id] = call
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="step-engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return call

    # -- the loop thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self.policy.running:  # between sets a call waiting for the gate goes first
                self._release()
            with self._cond:
                while self.policy.idle:
                    self._release()
                    self._cond.wait()
                for call in self.calls.values():
                    if call.cancel.is_set():
                        self.policy.cancel(call.req.batch_id)
                boundary = self.policy.boundary(time.time(), admit=self.ctx.gate.waiters == 0)
            for member in boundary.cancelled:
                self._leave(member.id, Cancelled())
            if not self.policy.running:
                self._release()
                continue
            try:  # joiners prepare with the set's adapters, under the gate like its steps
                self._hold_gate([self.calls[mid] for mid in self.policy.running])
                self._use_adapters(self.calls[next(iter(self.policy.running))])
            except Exception as e:
                logger.exception("step engine could not take the gate or load adapters")
                for mid in list(self.policy.running):
                    self._leave(mid, e)
                continue
            if boundary.joined:
                self._join([(self.calls[m.id], m) for m in boundary.joined])
            running = [self.calls[mid] for mid in self.policy.running]
            if not running:
                continue
            try:
                self._step(running)
            except Exception as e:  # one forward: every member of it fails
                logger.exception("step engine forward failed")
                for call in running:
                    self._leave(call.req.batch_id, e)

    def _leave(self, batch_id: str, error: BaseException | None) -> None:
        """A call leaves the engine (an error, or None: done) and its thread goes on."""
        with self._cond:
            self.policy.remove(batch_id)
            call = self.calls.pop(batch_id)
        call.end(error)

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

    def _join(self, joining: list[tuple[StepCall, Member]]) -> None:
        """Prepare the members of the calls joining at this boundary (prompts, samplers,
        latents), in one batch where the family's engine batches it (``prepare_members``);
        when that fails, call by call, so a failure fails only its own call."""
        from genmedia.models.step_engine import prepare_members

        now, wall = time.perf_counter(), time.time()
        for call, _ in joining:
            call.times.wait_s = now - call.submitted
            call.started_wall = wall
        try:
            engine = self._engine(joining[0][0].model)
            jobs = [job for call, _ in joining for job in call.req.jobs]
            sources = [s for call, _ in joining for s in _sources(call)]
            states = prepare_members(engine, jobs, sources)
        except Exception as e:
            if len(joining) == 1:
                self._leave(joining[0][1].id, e)
            else:
                for one in joining:
                    self._join([one])
            return
        start = 0
        for call, member in joining:
            n = len(call.req.jobs)
            call.states, start = states[start : start + n], start + n
            member.steps = max(s.total for s in call.states)

    def _use_adapters(self, call: StepCall) -> None:
        """Load and activate the running set's adapters (one set per running set: its key)."""
        model = call.model
        adapters = model.adapters
        if call.files or adapters.loaded:
            pinned = self.ctx.pins.others(model.entry.id, call.req.batch_id)
            loaded, _, _ = timed(adapters.ensure, model.pipe, call.files, pinned)
            call.times.adapter_load_s += loaded
            adapters.activate(model.pipe, call.req.adapters)

    def _hold_gate(self, running: list[StepCall]) -> None:
        """Take the gate, or yield it at this boundary to a better-ranked waiting call."""
        rank = min(c.req.priority.rank for c in running)
        before = time.perf_counter()
        if self._ticket is None:
            self._ticket = self.ctx.gate.acquire(rank)
        else:
            self._ticket = self.ctx.gate.checkpoint(self._ticket, rank)
        paused = time.perf_counter() - before
        for call in running:
            if call.started_wall:  # a call joining at this boundary counts it as waiting
                call.times.paused_s += paused

    def _step(self, running: list[StepCall]) -> None:
        """One engine step over the running set (the gate held, its adapters active); calls
        that are done are decoded and end."""
        engine = self._engine(running[0].model)
        states = [s for call in running for s in call.states]
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        engine.step(states)
        wall = time.perf_counter() - wall0
        cpu = (time.thread_time() - cpu0) * self.ctx.threads
        rows = sum(c.rows for c in running)
        with self._cond:
            finished = {m.id for m in self.policy.step_done(wall)}
        done = []
        for call in running:
            share = call.rows / rows
            call.times.compute_s += wall * share
            call.times.device_s += min(wall, cpu) * share
            step, total = call.states[0].done, call.states[0].total
            if call.throttle.due(step, total, time.perf_counter()):
                call.emit(ProgressEvent(step=step, total=total))
            if call.req.batch_id in finished:
                done.append(call)
        if done:
            self._decode(engine, done)

    def _decode(self, engine: StepEngine, calls: list[StepCall]) -> None:
        """Decode the calls that finished on this step in one batch (``decode_members``), each
        taking its rows' share of the time; when that fails, call by call, so a failure fails
        only its own call."""
        from genmedia.models.step_engine import decode_members

        wall0, cpu0 = time.perf_counter(), time.thread_time()
        try:
            per_state = decode_members(engine, [s for c in calls for s in c.states])
        except Exception as e:
            if len(calls) == 1:
                self._leave(calls[0].req.batch_id, e)
                return
            for call in calls:  # alone, so one failure fails one call
                self._decode(engine, [call])
            return
        wall = time.perf_counter() - wall0
        cpu = min(wall, (time.thread_time() - cpu0) * self.ctx.threads)
        rows = sum(c.rows for c in calls)
        start = 0
        for call in calls:
            n = len(call.states)
            call.outputs, start = per_state[start : start + n], start + n
            call.times.compute_s += wall * call.rows / rows
            call.times.device_s += cpu * call.rows / rows
            self._leave(call.req.batch_id, None)


def _sources(call: StepCall) -> list[dict[str, Any] | None]:
    """Per job of a call, its input images (image-to-image), else None."""
    if call.inputs is None:
        return [None] * len(call.req.jobs)
    return list(call.inputs)
