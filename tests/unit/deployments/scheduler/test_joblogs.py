"""Per-job log lines (``scheduler/joblogs.py``): bounded per job and per line, the queued line
once, finished jobs' lines stored with the result or kept among the recent ones."""

from __future__ import annotations

from genmedia.deployments.protocol import (
    JobStatus,
    JobStatusView,
    LogLine,
    Preview,
    PriorityClass,
)
from genmedia.deployments.scheduler import joblogs
from genmedia.deployments.scheduler.joblogs import JobLogs, as_stored, lines_from_stored


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_queued_is_the_first_line_once() -> None:
    logs = JobLogs(Clock())
    logs.queued("a", 3)
    logs.queued("a", 1)  # a later status read adds nothing
    logs.queued("b", 1)
    logs.queued("c", None)
    assert [line.message for line in logs.lines("a") or []] == ["queued behind 3 jobs"]
    assert (logs.lines("b") or [])[0].message == "queued behind 1 job"
    assert (logs.lines("c") or [])[0].message == "queued"
    assert logs.lines("unknown") is None


def test_lines_are_bounded_per_job_and_per_line() -> None:
    logs = JobLogs(Clock())
    logs.queued("a", 0)
    for i in range(200):
        logs.add("a", f"line {i} " + "x" * 500)
    lines = logs.lines("a") or []
    assert len(lines) == joblogs.MAX_LINES
    assert lines[0].message == "queued behind 0 jobs"  # the first line stays
    assert lines[-1].message.startswith("line 199 ")
    assert all(len(line.message) <= joblogs.MAX_CHARS for line in lines)
    assert [line.t for line in lines] == sorted(line.t for line in lines)


def test_finished_lines_go_with_the_result_or_stay_among_the_recent() -> None:
    logs = JobLogs(Clock())
    logs.queued("done", 0)
    stored = as_stored(logs.finish("done", "finished", keep=False))
    assert [d["message"] for d in stored] == ["queued behind 0 jobs", "finished"]
    assert logs.lines("done") is None and len(logs) == 0
    assert [line.message for line in lines_from_stored(stored) or []] == [
        "queued behind 0 jobs",
        "finished",
    ]
    assert lines_from_stored(None) is None and lines_from_stored([{"x": 1}]) == []
    for i in range(joblogs.MAX_RECENT + 5):
        logs.finish(f"gone{i}", "cancelled", keep=True)
    assert logs.lines("gone0") is None  # the oldest recent ones are forgotten
    last = logs.lines(f"gone{joblogs.MAX_RECENT + 4}") or []
    assert [line.message for line in last] == ["cancelled"]


def test_status_view_shows_logs_only_when_asked_and_previews_as_base64() -> None:
    view = JobStatusView(
        request_id="r",
        model="m",
        status=JobStatus.IN_PROGRESS,
        priority=PriorityClass.INTERACTIVE,
        submitted_at=1.0,
        tenant="t",
        logs=[LogLine(2.0, "started")],
    )
    assert "logs" not in view.as_dict() and "preview" not in view.as_dict()
    assert view.as_dict(logs=True)["logs"] == [{"t": 2.0, "message": "started"}]
    view.preview = Preview(step=3, png=b"\x89PNG", width=8, height=8)
    assert view.as_dict()["preview"] == {
        "step": 3,
        "png_base64": "iVBORw==",
        "width": 8,
        "height": 8,
    }
