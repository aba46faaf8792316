"""Traffic traces: what a load test (real replay or the simulator) sends, and when.

A trace is a JSONL file, one request per line, in arrival order::

    {"t": 0.42, "tenant": "web", "priority": "interactive", "model": "sd15-tiny",
     "params": {"prompt": "a cat", "num_inference_steps": 8}, "deadline_s": 5.0}

``t`` is seconds from the start of the run; ``params`` is the body the API takes (the
``GenerateRequest`` fields, without ``priority`` and ``webhook_url``, which the trace sets).
Readers report a bad line as ``file:line: field: message`` before anything is sent.
No Ray, no torch: the load generator and the simulator both import this.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genmedia.models.config_issues import field_errors


class TraceRecord(BaseModel):
    """One request of a trace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    t: float = Field(ge=0, description="Arrival time, seconds from the start of the run.")
    tenant: str = Field(min_length=1, description="Tenant id (the run maps it to an API key).")
    priority: Literal["interactive", "batch"] = Field(description="Priority class.")
    model: str = Field(min_length=1, description="Catalog model id.")
    params: dict = Field(
        default_factory=dict,
        description="Request body fields (prompt, width, height, num_inference_steps, "
        "num_images, seed, ...).",
    )
    deadline_s: float | None = Field(
        default=None, gt=0, description="Seconds after arrival by which the job must start."
    )

    @property
    def images(self) -> int:
        return int(self.params.get("num_images") or 1)


class TraceError(ValueError):
    """A trace line that is not a valid request, located by file and line."""

    def __init__(self, file: str, line: int, field: str, message: str):
        self.file, self.line, self.field = file, line, field
        super().__init__(f"{file}:{line}: {field}: {message}")


def parse_line(text: str, file: str, line: int) -> TraceRecord:
    """One JSONL line → a record, or a ``TraceError`` naming file, line and field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(file, line, "(line)", f"not JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise TraceError(file, line, "(line)", "must be a JSON object")
    try:
        return TraceRecord.model_validate(data)
    except ValidationError as e:
        field, message = field_errors(e)[0]
        raise TraceError(file, line, field, message) from None


def read_trace(path: str | Path) -> list[TraceRecord]:
    """Every record of a trace file; the first bad line raises ``TraceError``."""
    path = Path(path)
    records: list[TraceRecord] = []
    with path.open() as fh:
        for n, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            record = parse_line(text, str(path), n)
            if records and record.t < records[-1].t:
                raise TraceError(str(path), n, "t", "arrival times must not decrease")
            records.append(record)
    return records


def record_lines(path: str | Path) -> list[int]:
    """The file line of each record of a trace (blank lines hold none), for messages."""
    with Path(path).open() as fh:
        return [n for n, text in enumerate(fh, start=1) if text.strip()]


def iter_jsonl(records: Iterable[TraceRecord]) -> Iterator[str]:
    for r in records:
        yield r.model_dump_json(exclude_none=True) + "\n"


def write_trace(path: str | Path, records: Iterable[TraceRecord]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.writelines(iter_jsonl(records))
    return path
