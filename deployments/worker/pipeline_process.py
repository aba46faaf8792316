"""The pipeline of a family worker replica in a process of its own (``pipeline_process: true``).

Sits inside a family worker replica, after the scheduler in a request's way. The replica
(``serve/worker.py``) keeps the Ray side (Serve methods, multiplexing bookkeeping, metrics) and
forwards each call here; a child process started with ``spawn`` at replica start holds the
``WorkerContext`` (model cache, step gate, step engine, storage) and runs the calls exactly as
the replica runs them in process (``batch.py``, ``step_loop.py``), on its own GIL. Messages are
the dataclasses of ``pipeline_messages.py`` on one pipe: one reader thread in the replica hands
the child's answers to the event loop, per call. Tensors never cross: the child stores outputs
and answers with the ``WorkerResult``. When the child dies (killed, crashed, out of memory),
every call waiting on it ends with ``PipelineProcessLost`` and a fresh child starts; models
load again on the next call. No Ray imports; torch loads in the child only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genmedia.deployments.protocol import (
    AdapterCheck,
    AdapterInfo,
    BatchRequest,
    ProgressEvent,
    WorkerResult,
)
from genmedia.deployments.worker.batch import (
    AdapterFiles,
    WorkerContext,
    run_batch_call,
    run_step_call,
)
from genmedia.deployments.worker.gate import StepGate
from genmedia.deployments.worker.pipeline_messages import (
    AdapterChecked,
    CallDone,
    CallFailed,
    CallProgress,
    CancelCall,
    CancelJobs,
    CheckAdapter,
    FromPipeline,
    InfoRequest,
    LoadModel,
    ModelLoaded,
    PipelineConfig,
    PipelineInfo,
    PipelineProcessLost,
    PipelineReady,
    RunCall,
    Shutdown,
    ToPipeline,
)
from genmedia.deployments.worker.process_setup import setup_process
from genmedia.deployments.worker.step_loop import StepLoop

if TYPE_CHECKING:
    from genmedia.models.runner import LoadedModel

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # the child imports torch and sets itself up within this
STOP_TIMEOUT_S = 5.0  # a stopping child exits within this, or it is killed
START_ID = 0  # the call id of the child's start (a failure to start is sent under it)


def start_pipeline(
    num_cpus: float,
    memory_gb: float | None,
    gpu_share: float,
    server: dict,
    engine: str,
    replica: str,
    max_calls: int,
    *,
    pin: bool = False,
) -> tuple[WorkerContext, StepLoop | None, ThreadPoolExecutor]:
    """What runs a replica's calls, in whichever process holds its pipeline: the process set
    up (``setup_process``), the device capped at the replica's share, the calls' shared context
    (gate, storage, adapter files), the step loop (``engine: step``) and a thread per call in
    flight plus model loads. ``pin``: this is the pipeline's own process, which
    ``server.pin_worker_cpus`` may pin to cores of its own."""
    from genmedia.deployments.store.storage import make_storage
    from genmedia.models.catalog import ServerSettings
    from genmedia.models.runner import cap_gpu_memory, pick_device

    settings = ServerSettings.model_validate(server)
    # only a process of its own is pinned: the replica's process runs Ray's threads too
    threads = setup_process(
        num_cpus, reserved=settings.reserved_cpus, pin=pin and settings.pin_worker_cpus
    )
    device = pick_device()
    # Ray's GPU fractions are bookkeeping only: cap this process at the replica's share.
    cap_gpu_memory(gpu_share, memory_gb)
    ctx = WorkerContext(
        gate=StepGate(),
        storage=make_storage(settings.storage, Path),  # paths already absolute
        device=device,
        threads=threads,
        replica=replica,
        adapter_files=AdapterFiles(settings.max_adapter_bytes),
    )
    step_loop = StepLoop(ctx) if engine == "step" else None
    executor = ThreadPoolExecutor(max_workers=max_calls + 2, thread_name_prefix="pipeline")
    return ctx, step_loop, executor


def run_call(
    ctx: WorkerContext,
    step_loop: StepLoop | None,
    model: LoadedModel,
    req: BatchRequest,
    cancel: threading.Event,
    emit: Callable[[ProgressEvent], None],
) -> WorkerResult:
    """One call: in the running set when the step engine takes it, else a gated batch."""
    if step_loop is not None and step_loop.accepts(model, req):
        return run_step_call(ctx, step_loop, model, req, cancel, emit)
    return run_batch_call(ctx, model, req, cancel, emit)


# -- the child ---------------------------------------------------------------------------------


class PipelineHost:
    """The pipeline process's state: the replica's ``WorkerContext``, its models (LRU), its
    calls. ``handle`` runs on the pipe's reader thread; calls, loads and checks on threads of
    their own; ``send`` is safe from any thread."""

    def __init__(self, config: PipelineConfig, send: Callable[[FromPipeline], None]) -> None:
        from genmedia.models.catalog import ModelEntry

        self.config, self.send = config, send
        self.entries = {e["id"]: ModelEntry.model_validate(e) for e in config.entries}
        self.ctx, self.step_loop, self.executor = start_pipeline(
            config.num_cpus, config.memory_gb, config.gpu_share, config.server, config.engine,
            config.replica, config.max_calls, pin=True,
        )  # fmt: skip
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # guards ``models`` and ``_loads``
        self._loads: dict[str, threading.Lock] = {}  # one load of a model at a time
        self.cancels: dict[int, threading.Event] = {}  # call id -> its cancel flag

    def handle(self, msg: ToPipeline) -> bool:
        """One message from the replica; False on ``Shutdown``."""
        if isinstance(msg, RunCall):
            cancel = threading.Event()
            self.cancels[msg.call_id] = cancel
            self.ctx.cancelled_jobs[msg.req.batch_id] = set()
            self.executor.submit(self._run, msg, cancel)
        elif isinstance(msg, CancelCall):
            flag = self.cancels.get(msg.call_id)
            if flag is not None:
                flag.set()
        elif isinstance(msg, CancelJobs):
            jobs = self.ctx.cancelled_jobs.get(msg.batch_id)
            if jobs is not None:
                jobs.update(msg.job_ids)
        elif isinstance(msg, LoadModel):
            self.executor.submit(self._load, msg)
        elif isinstance(msg, CheckAdapter):
            self.executor.submit(self._check, msg)
        elif isinstance(msg, InfoRequest):
            self.send(self.info(msg.call_id))
        elif isinstance(msg, Shutdown):
            return False
        else:
            logger.error("pipeline process: unknown message %r", type(msg).__name__)
        return True

    def model(self, model_id: str, call_id: int | None = None) -> LoadedModel:
        """The loaded pipeline of a model, loading it once (least recently used evicted); a
        load is reported to the replica (its load times)."""
        from genmedia.models.runner import load_model
        from genmedia.models.weights import resolve_source

        with self._lock:
            once = self._loads.setdefault(model_id, threading.Lock())
        with once:
            with self._lock:
                model = self.models.get(model_id)
                if model is not None:
                    self.models.move_to_end(model_id)
            if model is not None:
                if call_id is not None:
                    self.send(self._loaded(model, call_id, fresh=False))
                return model
            entry = self.entries.get(model_id)
            if entry is None:
                family = self.config.family
                raise KeyError(f"model {model_id!r} is not served by the {family} worker")
            path = resolve_source(self.config.weights[model_id])
            model = load_model(entry, path, self.ctx.device)
            with self._lock:
                self.models[model_id] = model
                while len(self.models) > self.config.max_loaded_models:
                    evicted, _ = self.models.popitem(last=False)  # running calls keep theirs
                    logger.info("unloaded %s (LRU)", evicted)
        logger.info("loaded %s in %.2fs %s", model_id, model.load_s, model.load_phases)
        self.send(self._loaded(model, call_id, fresh=True))
        return model

    def _loaded(self, model: LoadedModel, call_id: int | None, *, fresh: bool) -> ModelLoaded:
        with self._lock:
            loaded = list(self.models)
        phases = dict(model.load_phases or {})
        return ModelLoaded(model.entry.id, model.load_s if fresh else 0.0, phases, fresh, loaded,
                           call_id)  # fmt: skip

    def _run(self, msg: RunCall, cancel: threading.Event) -> None:
        req = msg.req

        def emit(event: ProgressEvent) -> None:
            self.send(CallProgress(msg.call_id, event))

        try:
            had = req.model_id in self.models
            model = self.model(req.model_id)
            load_s = 0.0 if had else model.load_s
            if load_s > 0:  # a fresh child loads on the first call (a line for the jobs' logs)
                steps = req.jobs[0].params.num_inference_steps
                emit(ProgressEvent(0, steps, log=f"model {req.model_id} loaded in {load_s:.2f}s"))
            result = run_call(self.ctx, self.step_loop, model, req, cancel, emit)
            timings = dataclasses.replace(result.timings, load_s=load_s)
            self.send(CallDone(msg.call_id, dataclasses.replace(result, timings=timings)))
        except Exception as e:
            self.send(CallFailed.of(msg.call_id, e))
        finally:
            self.cancels.pop(msg.call_id, None)
            self.ctx.cancelled_jobs.pop(req.batch_id, None)

    def _load(self, msg: LoadModel) -> None:
        try:
            self.model(msg.model_id, msg.call_id)
        except Exception as e:
            self.send(CallFailed.of(msg.call_id, e))

    def _check(self, msg: CheckAdapter) -> None:
        """Registration: resolve an adapter and check its keys against the loaded model (read
        only: running calls are not disturbed)."""
        from genmedia.models.lora import AdapterError, check_adapter

        try:
            model = self.model(msg.model_id)
            try:
                path, info = check_adapter(
                    model.pipe,
                    model.entry.family,
                    msg.source,
                    max_bytes=msg.max_bytes,
                    max_rank=model.entry.max_lora_rank,
                )
            except AdapterError as e:
                self.send(AdapterChecked(msg.call_id, AdapterCheck(error=str(e))))
                return
            self.ctx.adapter_files.remember(msg.source, path)
            check = AdapterCheck(info=AdapterInfo(**info))  # path, bytes, sha256, rank, tensors
            self.send(AdapterChecked(msg.call_id, check))
        except Exception as e:
            self.send(CallFailed.of(msg.call_id, e))

    def info(self, call_id: int) -> PipelineInfo:
        with self._lock:
            models = list(self.models.items())
        gate = self.ctx.gate
        return PipelineInfo(
            call_id=call_id,
            loaded=[m for m, _ in models],
            adapters={m: list(model.adapters.loaded) for m, model in models},
            running=len(self.cancels),
            preemptions=gate.preemptions,
            busy_s=gate.busy_s,
        )


def child_main(conn: Connection, config: PipelineConfig) -> None:
    """The pipeline process: set up, say ready, then serve the replica's messages until it
    says stop or goes away (its end of the pipe closes)."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s pipeline[{config.family}] %(name)s: %(message)s",
    )
    lock = threading.Lock()

    def send(msg: FromPipeline) -> None:
        with lock:
            try:
                conn.send(msg)
            except (OSError, EOFError):  # the replica is gone: nothing to answer to
                os._exit(0)

    try:
        host = PipelineHost(config, send)
    except Exception as e:
        logger.exception("the pipeline process could not start")
        send(CallFailed.of(START_ID, e))
        os._exit(1)
    send(PipelineReady(os.getpid(), host.ctx.device, host.ctx.threads))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if not host.handle(msg):
            break
    # pipeline threads may be inside a forward: skip the interpreter's teardown
    os._exit(0)


# -- the replica's side ------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Child:
    """One started pipeline process and what waits on it."""

    process: BaseProcess
    conn: Connection
    ready: asyncio.Future[PipelineReady]
    calls: dict[int, asyncio.Queue[Any]] = dataclasses.field(default_factory=dict)
    replies: dict[int, asyncio.Future[Any]] = dataclasses.field(default_factory=dict)
    alive: bool = True
    send_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def send(self, msg: ToPipeline) -> None:
        """Send a message; ``PipelineProcessLost`` when the child is gone."""
        if not self.alive:
            raise PipelineProcessLost(f"the pipeline process (pid {self.process.pid}) is gone")
        try:
            with self.send_lock:
                self.conn.send(msg)
        except (OSError, EOFError) as e:
            raise PipelineProcessLost(
                f"the pipeline process (pid {self.process.pid}) is gone: {e}"
            ) from None


class PipelineProcess:
    """The replica's side of its pipeline process: starts it, forwards calls, reads its
    answers on one thread and hands them to the event loop, starts a fresh one when it dies.
    Every method runs on the replica's event loop."""

    def __init__(
        self,
        config: PipelineConfig,
        on_loaded: Callable[[ModelLoaded], None] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.on_loaded = on_loaded  # every fresh load (the replica's load times)
        self.start_timeout_s = start_timeout_s
        self.loaded: list[str] = []  # the child's models as it last said, least recent first
        self.restarts = 0  # children started after one died
        self._ids = itertools.count(START_ID + 1)
        self._child: _Child | None = None
        self._starting: asyncio.Future[PipelineReady] | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running child's pid (None before the first start)."""
        return self._child.process.pid if self._child is not None else None

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.alive

    async def start(self) -> PipelineReady:
        """The running child's ready message, starting a child first when none runs."""
        child = self._child
        if child is not None and child.alive and child.ready.done():
            return child.ready.result()  # raises when that child failed to start
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._spawn())
        return await asyncio.shield(self._starting)

    async def _spawn(self) -> PipelineReady:
        loop = asyncio.get_running_loop()
        mp = multiprocessing.get_context("spawn")  # torch is not fork-safe
        here, there = mp.Pipe()
        process = mp.Process(
            target=child_main,
            args=(there, self.config),
            name=f"pipeline-{self.config.family}",
            daemon=True,
        )
        await loop.run_in_executor(None, process.start)
        there.close()  # the child's end: its death closes the pipe for the reader
        ready: asyncio.Future[PipelineReady] = loop.create_future()
        ready.add_done_callback(_retrieve)
        child = _Child(process, here, ready)
        self._child = child
        reader = threading.Thread(
            target=self._read, args=(child, loop), name="pipeline-reader", daemon=True
        )
        reader.start()
        try:
            answer = await asyncio.wait_for(asyncio.shield(ready), self.start_timeout_s)
        except BaseException:
            await loop.run_in_executor(None, self._stop, child)
            raise
        logger.info(
            "%s pipeline process %d ready on %s with %d torch threads",
            self.config.family,
            answer.pid,
            answer.device,
            answer.threads,
        )
        return answer

    def _read(self, child: _Child, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread of one child: every answer goes to the event loop, in order."""
        while True:
            try:
                msg = child.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an answer that cannot be unpickled: its call fails by timeout
                logger.exception("pipeline process: unreadable answer")
                continue
            try:
                loop.call_soon_threadsafe(self._dispatch, child, msg)
            except RuntimeError:  # the loop is closed: the replica is stopping
                return
        child.process.join(STOP_TIMEOUT_S)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._lost, child)

    def _dispatch(self, child: _Child, msg: FromPipeline) -> None:
        if isinstance(msg, PipelineReady):
            if not child.ready.done():
                child.ready.set_result(msg)
            return
        if isinstance(msg, ModelLoaded):
            if child is self._child:
                self.loaded = list(msg.loaded)
            if msg.fresh and self.on_loaded is not None:
                self.on_loaded(msg)
            if msg.call_id is None:
                return
        if isinstance(msg, CallFailed) and msg.call_id == START_ID:
            if not child.ready.done():
                child.ready.set_exception(msg.error())
            return
        call_id = getattr(msg, "call_id", None)
        assert isinstance(call_id, int)
        queue = child.calls.get(call_id)
        if queue is not None:
            queue.put_nowait(msg)
            return
        reply = child.replies.get(call_id)
        if reply is None or reply.done():
            return  # its caller went away
        if isinstance(msg, CallFailed):
            reply.set_exception(msg.error())
        else:
            reply.set_result(msg)

    def _lost(self, child: _Child) -> None:
        """A child's pipe closed: whatever waits on it fails; a fresh child starts when the
        dead one had started (a child that fails to start is retried on the next call)."""
        child.alive = False
        code = child.process.exitcode
        error = PipelineProcessLost(
            f"the {self.config.family} pipeline process (pid {child.process.pid}) exited "
            f"with code {code}"
        )
        for queue in child.calls.values():
            queue.put_nowait(error)
        for reply in child.replies.values():
            if not reply.done():
                reply.set_exception(error)
        was_ready = child.ready.done() and child.ready.exception() is None
        if not child.ready.done():
            child.ready.set_exception(error)
        if child is not self._child or self._closed:
            return
        self.loaded = []
        logger.error("%s; %d call(s) failed", error, len(child.calls) + len(child.replies))
        if was_ready:
            self.restarts += 1
            self._starting = asyncio.ensure_future(self._spawn())
            self._starting.add_done_callback(_retrieve)

    async def _running(self) -> _Child:
        await self.start()
        child = self._child
        assert child is not None
        return child

    async def run(self, req: BatchRequest) -> AsyncGenerator[ProgressEvent | WorkerResult, None]:
        """Run one call in the child: its progress events, then its result. Leaving the
        iteration early cancels the call at its next step boundary."""
        child = await self._running()
        call_id = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        child.calls[call_id] = queue
        ended = False
        try:
            child.send(RunCall(call_id, req))
            while True:
                msg = await queue.get()
                if isinstance(msg, CallProgress):
                    yield msg.event
                    continue
                ended = True
                if isinstance(msg, CallDone):
                    yield msg.result
                    return
                if isinstance(msg, CallFailed):
                    raise msg.error()
                raise msg  # PipelineProcessLost
        finally:
            child.calls.pop(call_id, None)
            if not ended and child.alive:
                with contextlib.suppress(PipelineProcessLost):
                    child.send(CancelCall(call_id))

    async def _request(self, make: Callable[[int], ToPipeline], timeout_s: float | None) -> Any:
        child = await self._running()
        call_id = next(self._ids)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        child.replies[call_id] = reply
        try:
            child.send(make(call_id))
            return await asyncio.wait_for(reply, timeout_s)
        finally:
            child.replies.pop(call_id, None)

    async def load(self, model_id: str) -> ModelLoaded:
        """Load a model in the child (a no-op answer when it is loaded)."""
        answer: ModelLoaded = await self._request(lambda i: LoadModel(i, model_id), None)
        return answer

    async def check_adapter(self, model_id: str, source: str, max_bytes: int) -> AdapterCheck:
        answer: AdapterChecked = await self._request(
            lambda i: CheckAdapter(i, model_id, source, max_bytes), None
        )
        return answer.check

    async def info(self, timeout_s: float = 2.0) -> PipelineInfo | None:
        """What the child holds; None when it does not answer in time or is not running
        (starting again after a crash): readiness probes never wait for a start."""
        child = self._child
        if child is None or not child.alive or not child.ready.done() or child.ready.exception():
            return None
        try:
            answer: PipelineInfo = await self._request(InfoRequest, timeout_s)
        except (TimeoutError, PipelineProcessLost):
            return None
        return answer

    def cancel_jobs(self, batch_id: str, job_ids: list[str]) -> None:
        """Jobs of a running batch cancelled: the child does not store their outputs."""
        child = self._child
        if child is not None and child.alive:
            with contextlib.suppress(PipelineProcessLost):
                child.send(CancelJobs(batch_id, list(job_ids)))

    def close(self) -> None:
        """Stop the child (the replica is stopping); no fresh one starts."""
        self._closed = True
        if self._child is not None:
            self._stop(self._child)

    def _stop(self, child: _Child) -> None:
        with contextlib.suppress(PipelineProcessLost):
            child.send(Shutdown())
        child.process.join(STOP_TIMEOUT_S)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(STOP_TIMEOUT_S)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception seen (it is raised to whoever awaits it)."""
    if not future.cancelled():
        future.exception()
