"""One batch call on a family worker replica: the pure part, without Ray.

Sits after the scheduler in a request's way: the worker deployment (``serve/worker.py``) takes a
``BatchRequest`` off a streaming call, gets the model's pipeline and runs ``run_batch_call`` in a
thread of its own. Here the call reads its input images, takes the replica's ``StepGate``, sets
its LoRA adapters whenever it (re)takes the gate, yields to an interactive call or stops for a
cancel at every step boundary, reports progress (throttled), stores the outputs (not those of
jobs the scheduler cancelled while the batch ran) and builds the ``WorkerResult`` with its
timings. Nothing here imports Ray; torch and PIL load on first use.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genmedia.deployments.protocol import (
    BatchRequest,
    JobOutputs,
    Preview,
    ProgressEvent,
    StoredOutput,
    WorkerResult,
    WorkerTimings,
)
from genmedia.deployments.store.outputs import store_outputs
from genmedia.deployments.store.storage import Storage
from genmedia.deployments.worker.device_time import DeviceClock, timed
from genmedia.deployments.worker.gate import Cancelled, StepGate
from genmedia.models.params import AdapterUse, GenerationJob

if TYPE_CHECKING:
    import numpy as np

    from genmedia.deployments.worker.step_loop import StepLoop
    from genmedia.models.runner import LoadedModel

logger = logging.getLogger(__name__)

PROGRESS_HZ = 2.0  # progress events a second at most, besides the first and the last step
PREVIEW_HZ = 2.0  # preview events a second at most per call, besides the first and last step
LOGGED_WAIT_S = 0.05  # a wait at the gate (or a pause) shorter than this is not logged

Emit = Callable[[ProgressEvent], None]  # hands an event to the replica's event loop


def torch_threads_for(num_cpus: float, host_cores: int | None = None, reserved: int = 0) -> int:
    """Torch intra-op threads for a replica with ``num_cpus`` Ray CPUs: its whole CPUs (at
    least one), and on a host of ``host_cores`` cores at most those ``reserved`` leaves
    (``server.reserved_cpus``: the control plane's, so threads never wait behind it)."""
    threads = max(1, int(num_cpus))
    if host_cores is not None:
        threads = min(threads, max(1, host_cores - reserved))
    return threads


class ProgressThrottle:
    """Which steps are reported. Each event costs the replica's event loop (and the GIL) a
    message: at most ``hz`` a second, and always the first and the last step."""

    def __init__(self, hz: float = PROGRESS_HZ) -> None:
        self.min_gap_s = 1.0 / hz
        self.last = 0.0  # perf_counter time of the last event sent

    def due(self, step: int, total: int, now: float) -> bool:
        """Whether step ``step`` of ``total``, reached at ``now``, is sent (and note it)."""
        if step in (1, total) or now - self.last >= self.min_gap_s:
            self.last = now
            return True
        return False


class CallPreviews:
    """Live previews of a call's jobs that asked for them (``"preview": true``): each job's
    first output, from the latents of the step callback (``models/previews.py``), throttled
    to ``PREVIEW_HZ`` a call, PNG-encoded here and emitted as a progress event."""

    def __init__(self, family: str, req: BatchRequest, emit: Emit) -> None:
        self.family, self.emit = family, emit
        self.first_output: dict[str, int] = {}  # job id -> index of its first output
        k = 0
        for job in req.jobs:
            if job.extra.get("preview"):
                self.first_output[job.request_id] = k
            k += job.num_images
        params = req.jobs[0].params
        self.width, self.height = params.width, params.height
        self.total = params.num_inference_steps
        self.throttle = ProgressThrottle(PREVIEW_HZ)

    @classmethod
    def of(cls, family: str, req: BatchRequest, emit: Emit) -> CallPreviews | None:
        """The previews of a call, or None when no job asks for one or the family has none."""
        from genmedia.models.previews import supports_preview

        if not supports_preview(family) or not any(j.extra.get("preview") for j in req.jobs):
            return None
        return cls(family, req, emit)

    def on_latents(self, step: int, latents: Any) -> None:
        """After step ``step``: a preview per job when one is due. A failure is logged and
        ends the call's previews, never the call."""
        if not self.first_output or not self.throttle.due(step, self.total, time.perf_counter()):
            return
        from genmedia.models.previews import preview_png

        try:
            previews = {}
            for job_id, k in self.first_output.items():
                latent = latents[k].detach().float().cpu().numpy()
                png, w, h = preview_png(self.family, latent, self.width, self.height)
                previews[job_id] = Preview(step=step, png=png, width=w, height=h)
        except Exception:
            logger.exception("%s previews stopped", self.family)
            self.first_output = {}
            return
        self.emit(ProgressEvent(step=step, total=self.total, previews=previews))


class AdapterFiles:
    """Adapter sources resolved to local files, once per replica (downloads are kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.by_source: dict[str, Path] = {}

    def remember(self, source: str, path: Path) -> None:
        """A file a registration check already resolved."""
        self.by_source[source] = path

    def resolve(self, uses: list[AdapterUse]) -> dict[str, Path]:
        """Adapter id -> local file for a batch's adapters."""
        from genmedia.models.lora import resolve_adapter_file

        files: dict[str, Path] = {}
        for use in uses:
            if use.source not in self.by_source:
                self.by_source[use.source] = resolve_adapter_file(
                    use.source, max_bytes=self.max_bytes
                )
            files[use.id] = self.by_source[use.source]
        return files


class AdapterPins:
    """Adapters the calls in flight use, per model: a call paused at a step still needs its
    adapters loaded, so another call on the same pipeline must not evict them."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, set[str]]] = {}  # batch id -> (model id, adapter ids)

    def hold(self, batch_id: str, model_id: str, adapter_ids: set[str]) -> None:
        self._held[batch_id] = (model_id, adapter_ids)

    def drop(self, batch_id: str) -> None:
        self._held.pop(batch_id, None)

    def others(self, model_id: str, batch_id: str) -> set[str]:
        """Adapters of the other calls on this model."""
        out: set[str] = set()
        for other, (mid, ids) in self._held.items():
            if other != batch_id and mid == model_id:
                out |= ids
        return out


@dataclass
class WorkerContext:
    """What the batch calls of one replica share."""

    gate: StepGate  # one call computes at a time, by priority
    storage: Storage  # where inputs are read and outputs written
    device: str  # ``cpu`` or ``cuda``
    threads: int  # torch intra-op threads (device time on CPU scales with it)
    replica: str  # this replica's id (the result names it)
    adapter_files: AdapterFiles  # resolved adapter files
    pins: AdapterPins = field(default_factory=AdapterPins)  # adapters of the calls in flight
    # batch id -> ids of its jobs cancelled while it runs (the scheduler's ``cancel_jobs``):
    # their outputs are not stored
    cancelled_jobs: dict[str, set[str]] = field(default_factory=dict)


def read_inputs(storage: Storage, jobs: list[GenerationJob]) -> list[dict[str, Any]] | None:
    """Input images of an image-to-image / inpainting batch, read from storage (None for a
    task without inputs)."""
    if jobs[0].params.task == "text-to-image":
        return None
    from PIL import Image

    out = []
    for job in jobs:
        keys = job.extra.get("inputs") or {}
        item = {}
        for name, mode in (("image", "RGB"), ("mask", "L")):
            if name in keys:
                data = storage.get(keys[name])
                if data is None:
                    raise FileNotFoundError(f"input {name} of {job.request_id} is gone")
                item[name] = Image.open(io.BytesIO(data)).convert(mode)
        out.append(item)
    return out


@dataclass
class CallTimes:
    """What the gated part of a call measured (seconds; unix times for the span)."""

    compute_s: float = 0.0  # wall, pauses and adapter loading left out
    device_s: float = 0.0  # device time (``device_time.py``)
    wait_s: float = 0.0  # at the gate before the first step
    paused_s: float = 0.0  # at the gate between steps
    adapter_load_s: float = 0.0  # adapters loaded into the pipeline
    span: tuple[float, float] = (0.0, 0.0)  # took the gate, finished computing


class GatedCall:
    """One pipeline call holding the replica's step gate: adapters set whenever it (re)takes
    the gate; at each step boundary it yields to a higher-priority call or stops on cancel."""

    def __init__(
        self,
        ctx: WorkerContext,
        model: LoadedModel,
        req: BatchRequest,
        files: dict[str, Path],
        cancel: threading.Event,
        emit: Emit,
    ) -> None:
        self.ctx, self.model, self.req, self.files = ctx, model, req, files
        self.cancel, self.emit = cancel, emit
        self.rank = req.priority.rank
        # A step-cached model keeps per-call state in its shared modules: its calls run to the
        # end once started (they neither yield nor are interleaved with another call).
        self.yields = not model.step_cached
        self.throttle = ProgressThrottle()
        self.times = CallTimes()
        self.clock = DeviceClock(ctx.device, ctx.threads)
        self.ticket: int | None = None
        self.step = 0  # the last step reached (log lines say where a pause happened)
        self.previews = CallPreviews.of(model.entry.family, req, emit)

    def log(self, message: str, total: int | None = None) -> None:
        """A line for the jobs' logs, on the progress stream."""
        steps = total if total is not None else self.req.jobs[0].params.num_inference_steps
        self.emit(ProgressEvent(step=self.step, total=steps, log=message))

    def on_gate(self) -> None:
        """Whenever this call (re)takes the gate: its adapters, and only they, are set."""
        adapters = self.model.adapters
        if self.files or adapters.loaded:
            pinned = self.ctx.pins.others(self.req.model_id, self.req.batch_id)
            loaded, wall_s, cpu_s = timed(adapters.ensure, self.model.pipe, self.files, pinned)
            self.times.adapter_load_s += loaded
            self.clock.exclude(wall_s, cpu_s)
            if loaded > 0:
                ids = ", ".join(u.id for u in self.req.adapters) or "none"
                self.log(f"adapters loaded ({ids}) in {loaded:.2f}s")
            adapters.activate(self.model.pipe, self.req.adapters)

    def on_step(self, step: int, total: int) -> None:
        """Between denoising steps: yield or stop at the gate, then maybe report progress."""
        before = time.perf_counter()
        held = self.ticket
        if self.yields:
            assert held is not None
            self.ticket = self.ctx.gate.checkpoint(held, self.rank, self.cancel)
            if self.ticket != held:  # another call ran meanwhile
                self.on_gate()
        elif self.cancel.is_set():
            raise Cancelled()
        after = time.perf_counter()
        self.times.paused_s += after - before
        self.step = step
        if self.previews is not None:
            self.previews.total = total  # image-to-image runs fewer steps than asked
        if self.ticket != held and after - before >= LOGGED_WAIT_S:
            self.log(f"paused {after - before:.2f}s at step {step} by interactive work", total)
        if self.throttle.due(step, total, after):
            self.emit(ProgressEvent(step=step, total=total))

    def run(self, inputs: list[dict[str, Any]] | None) -> list[list[np.ndarray]]:
        """Take the gate, run the pipeline, release the gate; outputs per job."""
        from genmedia.models.runner import run_batch

        waited = time.perf_counter()
        self.ticket = self.ctx.gate.acquire(self.rank, self.cancel)
        started = time.perf_counter()
        started_wall = time.time()  # the compute span, for the scheduler's contention signal
        self.clock = DeviceClock(self.ctx.device, self.ctx.threads)
        if started - waited >= LOGGED_WAIT_S:
            self.log(f"waited {started - waited:.2f}s for the worker (another call computing)")
        on_latents = self.previews.on_latents if self.previews is not None else None
        try:
            self.on_gate()
            outputs = run_batch(
                self.model,
                self.req.jobs,
                on_step=self.on_step,
                inputs=inputs,
                on_latents=on_latents,
            )
        finally:
            self.ctx.gate.release(self.ticket)
        t = self.times
        t.compute_s, t.device_s = self.clock.stop(t.paused_s)
        t.wait_s = started - waited
        t.span = (started_wall, time.time())
        return outputs


def store_batch(
    storage: Storage,
    req: BatchRequest,
    outputs: list[list[np.ndarray]],
    *,
    now: float,
    sample_rate: int | None = None,
    skip: Collection[str] = (),
) -> list[list[StoredOutput]]:
    """Store every job's outputs under its tenant; what was written, per job. Jobs in ``skip``
    (cancelled while the batch ran) store nothing."""
    total_images = sum(j.num_images for j in req.jobs)
    stored: list[list[StoredOutput]] = []
    for job, arrays in zip(req.jobs, outputs, strict=True):
        if job.request_id in skip:
            stored.append([])
            continue
        tenant = req.tenants.get(job.request_id, "_")
        stored.append(
            store_outputs(
                storage,
                job,
                arrays,
                prefix=f"{tenant}/",
                sample_rate=sample_rate,
                extra={"batch": req.batch_id, "batch_size": total_images},
                now=now,
            )
        )
    return stored


def build_result(
    req: BatchRequest,
    stored: list[list[StoredOutput]],
    times: CallTimes,
    *,
    store_s: float,
    replica: str,
    device: str,
    acceleration: dict[str, Any],
) -> WorkerResult:
    """The result of a call: each job's outputs and its share of the compute seconds (by its
    number of outputs), with the call's timings."""
    total_images = sum(j.num_images for j in req.jobs)
    jobs = [
        JobOutputs(
            job_id=job.request_id,
            outputs=outputs,
            compute_s=times.compute_s * job.num_images / total_images,
        )
        for job, outputs in zip(req.jobs, stored, strict=True)
    ]
    return WorkerResult(
        batch_id=req.batch_id,
        jobs=jobs,
        batch_images=total_images,
        timings=WorkerTimings(
            compute_s=times.compute_s,
            device_s=times.device_s,
            wait_s=times.wait_s,
            paused_s=times.paused_s,
            store_s=store_s,
            adapter_load_s=times.adapter_load_s,
        ),
        compute_span=times.span,
        replica=replica,
        device=device,
        acceleration=acceleration,
        adapters=[(u.id, u.scale) for u in req.adapters],
    )


def run_batch_call(
    ctx: WorkerContext,
    model: LoadedModel,
    req: BatchRequest,
    cancel: threading.Event,
    emit: Emit,
) -> WorkerResult:
    """One batch, on a thread of its own: inputs, the gated pipeline call, then storage."""
    inputs = read_inputs(ctx.storage, req.jobs)
    files = ctx.adapter_files.resolve(req.adapters)
    ctx.pins.hold(req.batch_id, req.model_id, set(files))
    call = GatedCall(ctx, model, req, files, cancel, emit)
    try:
        outputs = call.run(inputs)
    finally:
        ctx.pins.drop(req.batch_id)
    return finish_call(ctx, model, req, outputs, call.times)


def finish_call(
    ctx: WorkerContext,
    model: LoadedModel,
    req: BatchRequest,
    outputs: list[list[np.ndarray]],
    times: CallTimes,
) -> WorkerResult:
    """Store a call's outputs (not those of jobs cancelled meanwhile) and build its result;
    every job keeps its share of the compute seconds, cancelled or not (it is metered)."""
    done = time.perf_counter()
    sample_rate = None
    if req.jobs[0].params.task == "text-to-audio":
        sample_rate = model.family.sample_rate(model.pipe)
    skip = set(ctx.cancelled_jobs.get(req.batch_id, ()))  # cancelled until now
    stored = store_batch(
        ctx.storage, req, outputs, now=times.span[1], sample_rate=sample_rate, skip=skip
    )
    return build_result(
        req,
        stored,
        times,
        store_s=time.perf_counter() - done,
        replica=ctx.replica,
        device=ctx.device,
        acceleration=model.acceleration,
    )


def run_step_call(
    ctx: WorkerContext,
    loop: StepLoop,
    model: LoadedModel,
    req: BatchRequest,
    cancel: threading.Event,
    emit: Emit,
) -> WorkerResult:
    """One batch through the replica's step engine (``engine: step``), on a thread of its own:
    the call joins the running set, waits until its members are decoded, then stores its
    outputs while the others go on."""
    files = ctx.adapter_files.resolve(req.adapters)
    ctx.pins.hold(req.batch_id, req.model_id, set(files))
    try:
        call = loop.submit(model, req, files, cancel, emit)
        call.finished.wait()
    finally:
        ctx.pins.drop(req.batch_id)
    if call.error is not None:
        raise call.error
    assert call.outputs is not None
    return finish_call(ctx, model, req, call.outputs, call.times)
