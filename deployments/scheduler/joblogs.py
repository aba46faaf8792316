"""Per-job log lines the status API shows with ``?logs=1``: queued behind N, started, model
and adapter loads and pauses (the worker's progress events), finished.

Kept by the scheduler (``serve/scheduler.py``) in memory for each live job, bounded
(``MAX_LINES`` lines of at most ``MAX_CHARS`` characters); a completed job's lines are stored
with its result, and the lines of the last ``MAX_RECENT`` jobs that ended otherwise stay in
memory. Pure: no Ray, ``now`` comes from the caller's clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from genmedia.deployments.protocol import LogLine

MAX_LINES = 50  # lines kept per job; beyond it the oldest after the first go
MAX_CHARS = 200  # characters per line; longer ones are cut
MAX_RECENT = 256  # jobs that ended without a stored result whose lines stay in memory


def bounded(message: str) -> str:
    """One line of at most ``MAX_CHARS`` characters."""
    line = " ".join(message.split())
    return line if len(line) <= MAX_CHARS else line[: MAX_CHARS - 1] + "…"


def lines_from_stored(stored: Any) -> list[LogLine] | None:
    """The lines a stored result keeps (``as_stored``), or None when it has none."""
    if not isinstance(stored, list):
        return None
    out = []
    for item in stored[:MAX_LINES]:
        if isinstance(item, dict) and "t" in item and "message" in item:
            out.append(LogLine(t=float(item["t"]), message=bounded(str(item["message"]))))
    return out


def as_stored(lines: list[LogLine]) -> list[dict[str, Any]]:
    """The JSON a result keeps."""
    return [{"t": round(line.t, 3), "message": line.message} for line in lines]


class JobLogs:
    """Log lines per job id (see the module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._live: dict[str, list[LogLine]] = {}
        self._recent: OrderedDict[str, list[LogLine]] = OrderedDict()

    def add(self, job_id: str, message: str) -> None:
        """Append a line stamped now; beyond ``MAX_LINES`` the oldest but the first is dropped."""
        lines = self._live.setdefault(job_id, [])
        lines.append(LogLine(t=self.clock(), message=bounded(message)))
        if len(lines) > MAX_LINES:
            del lines[1]

    def queued(self, job_id: str, position: int | None) -> None:
        """The first line of a job the queue holds (nothing once it has lines)."""
        if job_id in self._live:
            return
        if position is None:
            self.add(job_id, "queued")
        else:
            self.add(job_id, f"queued behind {position} job{'s' if position != 1 else ''}")

    def lines(self, job_id: str) -> list[LogLine] | None:
        """A copy of the job's lines, or None when none are kept."""
        lines = self._live.get(job_id)
        if lines is None:
            lines = self._recent.get(job_id)
        return None if lines is None else list(lines)

    def finish(self, job_id: str, message: str, *, keep: bool) -> list[LogLine]:
        """The last line; the job's lines leave the live set. ``keep``: they stay among the
        recent ones in memory (a job that ended without a stored result)."""
        self.add(job_id, message)
        lines = self._live.pop(job_id)
        if keep:
            self._recent[job_id] = lines
            self._recent.move_to_end(job_id)
            while len(self._recent) > MAX_RECENT:
                self._recent.popitem(last=False)
        return lines

    def drop(self, job_id: str) -> None:
        """Forget a job's live lines (its state moved on without a log line)."""
        self._live.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._live)
