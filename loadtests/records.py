"""Raw per-request results of a load-test run: the real replay and the simulator write the same
records, and reports are computed only from them (so a simulated and a real run compare line by
line). One JSON object per line; times are seconds from the start of the run, ``None`` when the
request never reached that point.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Literal

Outcome = Literal[
    "COMPLETED",  # result stored
    "FAILED",  # the job ran and failed
    "CANCELLED",
    "EXPIRED",  # deadline passed while queued
    "REJECTED",  # refused at submit (429: quota, queue bound, deadline, rate)
    "ERROR",  # anything else: 4xx/5xx at submit, transport error, timeout
]


@dataclass
class RequestRecord:
    """What happened to one trace request."""

    index: int  # position in the trace
    tenant: str
    priority: str  # interactive | batch
    model: str
    images: int
    steps: int
    t_scheduled: float  # the trace's arrival time
    t_submit: float  # when the request was actually sent (open loop: ~ t_scheduled)
    t_admitted: float | None = None  # 202 / accepted by the scheduler
    t_started: float | None = None  # first dispatched to a worker
    t_first_progress: float | None = None  # first denoising-step progress seen
    t_done: float | None = None  # final status known
    status: Outcome = "ERROR"
    http_status: int | None = None
    error: str | None = None
    request_id: str | None = None
    compute_s: float | None = None  # this request's share of its batch's compute
    queue_s: float | None = None  # as reported by the server (result timings), if known

    @property
    def queue_wait(self) -> float | None:
        if self.queue_s is not None:
            return self.queue_s
        if self.t_started is None:
            return None
        return self.t_started - self.t_submit

    @property
    def latency(self) -> float | None:
        return None if self.t_done is None else self.t_done - self.t_submit


_FIELDS = {f.name for f in fields(RequestRecord)}
_REQUIRED = {f.name for f in fields(RequestRecord) if f.default is MISSING}


def write_records(path: str | Path, records: Iterable[RequestRecord]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for r in records:
            fh.write(json.dumps(asdict(r)) + "\n")
    return path


def read_records(path: str | Path) -> list[RequestRecord]:
    out = []
    with Path(path).open() as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e.msg}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}:{n}: must be a JSON object")
            unknown = set(data) - _FIELDS
            if unknown:
                raise ValueError(f"{path}:{n}: unknown fields {sorted(unknown)}")
            missing = _REQUIRED - set(data)
            if missing:
                raise ValueError(f"{path}:{n}: {sorted(missing)[0]}: field required")
            out.append(RequestRecord(**data))
    return out
