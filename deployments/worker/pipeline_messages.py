"""Messages between a family worker replica and its pipeline process (``pipeline_process.py``).

Sits inside a family worker replica, between its Ray side (``serve/worker.py``: the Serve
methods, multiplexing bookkeeping, metrics) and the child process that holds the pipelines
(``workers.<family>.pipeline_process``). Every message is a picklable dataclass sent over one
``multiprocessing`` pipe; tensors never cross it: the child stores a call's outputs itself and
sends back the ``WorkerResult`` (keys, digests, timings). No Ray, no torch.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

from genmedia.deployments.protocol import AdapterCheck, BatchRequest, ProgressEvent, WorkerResult

# -- what the child is started with --------------------------------------------------------------


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline process of one replica needs to build its ``WorkerContext``."""

    family: str  # the family the replica serves
    entries: list[dict[str, Any]]  # catalog entries (``ModelEntry`` as JSON) of its models
    weights: dict[str, str]  # model id -> weights source
    num_cpus: float  # the replica's Ray CPUs (torch threads follow)
    max_loaded_models: int  # pipelines kept loaded (LRU beyond)
    memory_gb: float | None  # GPU memory cap of the replica (None: its share only)
    gpu_share: float  # the GPU fraction Ray assigned to the replica
    server: dict[str, Any]  # ``ServerSettings`` as JSON (storage, adapter limits)
    engine: str  # ``request`` or ``step``
    replica: str  # the replica's id (results name it)
    max_calls: int  # calls the replica runs at once (threads of the child)


# -- replica -> pipeline process -------------------------------------------------------------


@dataclass(frozen=True)
class RunCall:
    """Run one batch call; the child answers with ``CallProgress`` events, then ``CallDone``
    or ``CallFailed``."""

    call_id: int
    req: BatchRequest


@dataclass(frozen=True)
class CancelCall:
    """The caller of a running call went away: stop it at its next step boundary."""

    call_id: int


@dataclass(frozen=True)
class CancelJobs:
    """Jobs of a running batch the scheduler cancelled: their outputs are not stored."""

    batch_id: str
    job_ids: list[str]


@dataclass(frozen=True)
class LoadModel:
    """Load a model's pipeline (a no-op when loaded); answered by ``ModelLoaded``."""

    call_id: int
    model_id: str


@dataclass(frozen=True)
class CheckAdapter:
    """Resolve an adapter and check it against a model; answered by ``AdapterChecked``."""

    call_id: int
    model_id: str
    source: str
    max_bytes: int


@dataclass(frozen=True)
class InfoRequest:
    """What the child holds; answered by ``PipelineInfo``."""

    call_id: int


@dataclass(frozen=True)
class Shutdown:
    """Exit (the replica is stopping)."""


ToPipeline = RunCall | CancelCall | CancelJobs | LoadModel | CheckAdapter | InfoRequest | Shutdown

# -- pipeline process -> replica -------------------------------------------------------------


@dataclass(frozen=True)
class PipelineReady:
    """Sent once, when the child has set its process up and built its context."""

    pid: int
    device: str  # ``cpu`` or ``cuda``
    threads: int  # torch intra-op threads


@dataclass(frozen=True)
class CallProgress:
    """A running call's progress event (steps, a log line, previews)."""

    call_id: int
    event: ProgressEvent


@dataclass(frozen=True)
class CallDone:
    """A call's result: its outputs are stored already."""

    call_id: int
    result: WorkerResult


@dataclass(frozen=True)
class CallFailed:
    """A call (or a load, a check) raised: the exception, pickled when it can be, with its
    type and message for when it cannot be rebuilt."""

    call_id: int
    error_type: str  # qualified name of the exception's class
    message: str
    pickled: bytes | None = None

    @classmethod
    def of(cls, call_id: int, error: BaseException) -> CallFailed:
        kind = type(error)
        pickled: bytes | None = None
        try:
            data = pickle.dumps(error)
            pickle.loads(data)  # a class that pickles but cannot be rebuilt is sent as text
            pickled = data
        except Exception:
            pass
        return cls(call_id, f"{kind.__module__}.{kind.__qualname__}", str(error), pickled)

    def error(self) -> BaseException:
        """The exception to raise in the replica."""
        if self.pickled is not None:
            try:
                error = pickle.loads(self.pickled)
            except Exception:
                pass
            else:
                if isinstance(error, BaseException):
                    return error
        return PipelineCallError(self.error_type, self.message)


@dataclass(frozen=True)
class ModelLoaded:
    """A model's pipeline is loaded: an answer to ``LoadModel`` (``call_id``), or a load a
    call needed (``call_id`` None: after a restart models load on the next call)."""

    model_id: str
    load_s: float  # seconds the load took (0 when it was loaded already)
    load_phases: dict[str, Any] = field(default_factory=dict)
    fresh: bool = True  # loaded now (False: it was loaded already)
    loaded: list[str] = field(default_factory=list)  # the child's models, least recent first
    call_id: int | None = None


@dataclass(frozen=True)
class AdapterChecked:
    """The answer to ``CheckAdapter``."""

    call_id: int
    check: AdapterCheck


@dataclass(frozen=True)
class PipelineInfo:
    """The answer to ``InfoRequest``: the child's models, adapters and step gate figures."""

    call_id: int
    loaded: list[str]  # least recently used first
    adapters: dict[str, list[str]]  # model id -> adapters loaded in its pipeline
    running: int  # calls in flight
    preemptions: int  # the step gate's
    busy_s: float  # the step gate's


FromPipeline = (
    PipelineReady
    | CallProgress
    | CallDone
    | CallFailed
    | ModelLoaded
    | AdapterChecked
    | PipelineInfo
)


class PipelineCallError(RuntimeError):
    """A call failed in the pipeline process with an exception that could not be sent whole."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (PipelineCallError, (self.error_type, self.message))


class PipelineProcessLost(RuntimeError):
    """The pipeline process died (killed, crashed, out of memory) while a call waited on it;
    the replica starts a fresh one."""
