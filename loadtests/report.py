"""Reports of a load-test run, computed only from its raw records (``requests.jsonl``).

The last step of a load test: the real replay and the simulator both write ``RequestRecord``s
and a ``RunInfo`` (``run.json``), then call ``write_report``. Everything here is a pure function
of those: percentiles from raw samples (never buckets), throughput and goodput against each
class's SLO, 429 and error rates, Jain's fairness index across tenants, compute per image. No
HTTP, no Ray; plots are in ``plots.py``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genmedia.loadtests.records import RequestRecord, read_records
from genmedia.models.config_issues import field_errors

CLASSES = ("interactive", "batch")
ERRORS = ("ERROR", "FAILED")
PERCENTILES = (50, 90, 99)


class RunInfo(BaseModel):
    """What a report needs besides the records (``run.json`` beside ``requests.jsonl``)."""

    model_config = ConfigDict(extra="forbid")

    scenario: str = Field(description="Scenario (or trace) name.")
    duration_s: float = Field(ge=0, description="Seconds of arrivals in the trace.")
    slo_s: dict[str, float] = Field(
        default_factory=lambda: {"interactive": 10.0, "batch": 300.0},
        description="End-to-end SLO in seconds per priority class (goodput counts requests "
        "that completed within it).",
    )
    weights: dict[str, float] = Field(
        default_factory=dict, description="Fair-share weight per tenant (missing: 1)."
    )
    source: str = Field(default="replay", description="What produced the records: replay, sim.")
    api: str | None = Field(default=None, description="API used by a replay: sync or queue.")
    url: str | None = Field(default=None, description="Base URL a replay sent to.")
    started_utc: str | None = Field(default=None, description="When the run started (UTC).")
    notes: dict = Field(default_factory=dict, description="Free-form facts about the run.")


class ReportError(ValueError):
    """A run directory that cannot be reported on, naming the file."""


def percentiles(values: Iterable[float]) -> dict:
    """n, mean, max and p50/p90/p99 (linear interpolation between order statistics)."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return {"n": 0, "mean": None, "max": None, **{f"p{p}": None for p in PERCENTILES}}
    ps = np.percentile(a, PERCENTILES)
    out = {"n": int(a.size), "mean": float(a.mean()), "max": float(a.max())}
    out.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, ps, strict=True)})
    return out


def jain(values: Iterable[float]) -> float | None:
    """Jain's fairness index (Σx)² / (n·Σx²): 1 when equal, 1/n when one takes all."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0 or not np.any(x):
        return None
    return float(x.sum() ** 2 / (x.size * (x * x).sum()))


def window_s(records: list[RequestRecord], duration_s: float) -> float:
    """Seconds the run is measured over: the trace's duration or until the last answer."""
    last = max((r.t_done for r in records if r.t_done is not None), default=0.0)
    return max(duration_s, last) or 1.0


def met_slo(r: RequestRecord, slo_s: dict[str, float]) -> bool:
    limit = slo_s.get(r.priority)
    return (
        r.status == "COMPLETED" and r.latency is not None and (limit is None or r.latency <= limit)
    )


def group_stats(records: list[RequestRecord], window: float, slo_s: dict[str, float]) -> dict:
    """Counts, rates, throughput, goodput and latency percentiles of a set of requests."""
    n = len(records)
    done = [r for r in records if r.status == "COMPLETED"]
    good = [r for r in done if met_slo(r, slo_s)]
    statuses = Counter(r.status for r in records)
    images = sum(r.images for r in done)
    return {
        "requests": n,
        "by_status": dict(sorted(statuses.items())),
        "images": images,
        "throughput_images_per_s": images / window,
        "goodput_images_per_s": sum(r.images for r in good) / window,
        "slo_attainment": len(good) / n if n else None,
        "rate_429": sum(1 for r in records if r.http_status == 429) / n if n else None,
        "error_rate": sum(statuses.get(s, 0) for s in ERRORS) / n if n else None,  # type: ignore[call-overload]
        "queue_wait_s": percentiles(r.queue_wait for r in done if r.queue_wait is not None),
        "latency_s": percentiles(r.latency for r in done if r.latency is not None),
    }


def _grouped(
    records: list[RequestRecord], key: Callable[[RequestRecord], str], window: float, slo_s: dict
) -> dict:
    groups: dict[str, list[RequestRecord]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return {k: group_stats(v, window, slo_s) for k, v in sorted(groups.items())}


def contested(records: list[RequestRecord]) -> tuple[float, float, dict[str, int]] | None:
    """The span in which every tenant of ``records`` was still being served — from the last
    tenant's first submit to the first tenant's last completion — and the images each tenant
    completed in it. Shares measured there are the scheduler's choice, not the demand's: once a
    tenant's backlog drains, the others finish theirs alone. None without such a span."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for r in records:
        first[r.tenant] = min(first.get(r.tenant, math.inf), r.t_submit)
        if r.status == "COMPLETED" and r.t_done is not None:
            last[r.tenant] = max(last.get(r.tenant, -math.inf), r.t_done)
    if not last:
        return None
    start, end = max(first.values()), min(last.values())
    if end <= start:
        return None
    images = dict.fromkeys(sorted(first), 0)
    for r in records:
        if r.status == "COMPLETED" and r.t_done is not None and start <= r.t_done <= end:
            images[r.tenant] += r.images
    return start, end, images


def tenant_stats(records: list[RequestRecord], window: float, weights: dict[str, float]) -> dict:
    """Per tenant: completed images, throughput, share of all images (whole run and while every
    tenant was served), weight share."""
    tenants = sorted({r.tenant for r in records})
    images = dict.fromkeys(tenants, 0)
    for r in records:
        if r.status == "COMPLETED":
            images[r.tenant] += r.images
    total = sum(images.values())
    span = contested(records)
    both = sum(span[2].values()) if span else 0
    wsum = sum(weights.get(t, 1.0) for t in tenants)
    return {
        t: {
            "weight": weights.get(t, 1.0),
            "requests": sum(1 for r in records if r.tenant == t),
            "images": images[t],
            "throughput_images_per_s": images[t] / window,
            "share": images[t] / total if total else None,
            "contested_share": span[2][t] / both if span and both else None,
            "weight_share": weights.get(t, 1.0) / wsum,
        }
        for t in tenants
    }


def fairness(records: list[RequestRecord], weights: dict[str, float]) -> tuple[dict, dict]:
    """Jain's index of weight-normalised completed images across tenants — over all tenants and
    among the tenants of each class — counted in the span where all of them were served
    (``contested``), with those spans. A tenant that asks for less than its share lowers it."""
    index: dict = {}
    spans: dict = {}
    for cls in (None, *CLASSES):
        recs = [r for r in records if cls is None or r.priority == cls]
        key = "jain" if cls is None else f"jain_{cls}"
        span = contested(recs)
        if span is None:
            if recs:
                index[key] = None
            continue
        start, end, images = span
        index[key] = jain(n / weights.get(t, 1.0) for t, n in images.items())
        spans[key] = [start, end]
    return index, spans


def summarize(records: list[RequestRecord], info: RunInfo) -> dict:
    """The summary of a run (what ``summary.json`` holds)."""
    window = window_s(records, info.duration_s)
    done = [r for r in records if r.status == "COMPLETED"]
    compute = [r.compute_s for r in done if r.compute_s is not None]
    done_images = sum(r.images for r in done if r.compute_s is not None)
    index, spans = fairness(records, info.weights)
    return {
        "scenario": info.scenario,
        "source": info.source,
        "duration_s": info.duration_s,
        "window_s": window,
        "slo_s": info.slo_s,
        "overall": group_stats(records, window, info.slo_s),
        "classes": _grouped(records, lambda r: r.priority, window, info.slo_s),
        "models": _grouped(records, lambda r: r.model, window, info.slo_s),
        "tenants": tenant_stats(records, window, info.weights),
        "fairness": index,
        "fairness_spans_s": spans,
        "compute_s_per_image": sum(compute) / done_images if done_images else None,
        "send_lag_s": percentiles(r.t_submit - r.t_scheduled for r in records),
        "note": info.notes.get("note"),
    }


# -- time series (plots) ----------------------------------------------------------------------
def _queue_interval(r: RequestRecord, end: float) -> tuple[float, float] | None:
    """When the request sat in the server's queue: accepted → started (or its end)."""
    if r.status == "REJECTED" or (r.t_admitted is None and r.t_started is None):
        return None
    enter = r.t_admitted if r.t_admitted is not None else r.t_submit
    leave = next((t for t in (r.t_started, r.t_done) if t is not None), end)
    return enter, max(enter, leave)


def timeline(
    records: list[RequestRecord], window: float, bins: int = 30, points: int = 400
) -> dict:
    """Completed images per second (bins of at least 1 s) and queue depth (sampled at
    ``points`` instants) over time, overall and per class."""
    step = max(window / bins, 1.0)
    edges = np.arange(0.0, window + step, step)
    at = np.linspace(0.0, window, points)
    out: dict = {
        "t": edges[:-1].tolist(),
        "bin_s": step,
        "throughput": {},
        "queue_t": at.tolist(),
        "queue_depth": {},
    }
    for cls in ("all", *CLASSES):
        recs = [r for r in records if cls == "all" or r.priority == cls]
        done = [r for r in recs if r.status == "COMPLETED" and r.t_done is not None]
        counts, _ = np.histogram(
            [float(r.t_done or 0.0) for r in done], bins=edges, weights=[r.images for r in done]
        )
        out["throughput"][cls] = (counts / step).tolist()
        spans = [s for s in (_queue_interval(r, window) for r in recs) if s is not None]
        enters = np.sort([s[0] for s in spans])
        leaves = np.sort([s[1] for s in spans])
        depth = np.searchsorted(enters, at, "right") - np.searchsorted(leaves, at, "right")
        out["queue_depth"][cls] = depth.tolist()
    return out


# -- files --------------------------------------------------------------------------------------
def _fmt(v: object, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _group_table(title: str, groups: dict) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| | requests | images | img/s | goodput img/s | SLO met | 429 | errors "
        "| queue p50 / p90 / p99 s | e2e p50 / p90 / p99 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, g in groups.items():
        q, e = g["queue_wait_s"], g["latency_s"]
        lines.append(
            f"| {name} | {g['requests']} | {g['images']} | {_fmt(g['throughput_images_per_s'])} "
            f"| {_fmt(g['goodput_images_per_s'])} | {_pct(g['slo_attainment'])} "
            f"| {_pct(g['rate_429'])} | {_pct(g['error_rate'])} "
            f"| {_fmt(q['p50'])} / {_fmt(q['p90'])} / {_fmt(q['p99'])} "
            f"| {_fmt(e['p50'])} / {_fmt(e['p90'])} / {_fmt(e['p99'])} |"
        )
    return [*lines, ""]


def markdown(summary: dict, plots: Iterable[str] = ()) -> str:
    """``report.md``: the summary as tables, then the plots."""
    o = summary["overall"]
    slo = ", ".join(f"{k} ≤ {v:g} s" for k, v in summary["slo_s"].items())
    lines = [
        f"# Load test: {summary['scenario']} ({summary['source']})",
        "",
        f"{o['requests']} requests over {summary['window_s']:.1f} s "
        f"(arrivals over {summary['duration_s']:g} s); SLOs end to end: {slo}.",
        f"Outcomes: {', '.join(f'{k} {v}' for k, v in o['by_status'].items())}.",
        *([f"Note: {summary['note']}"] if summary.get("note") else []),
        "",
        f"- throughput **{_fmt(o['throughput_images_per_s'])} images/s**, goodput "
        f"**{_fmt(o['goodput_images_per_s'])} images/s** ({_pct(o['slo_attainment'])} of "
        "requests met their class SLO)",
        f"- 429 rate {_pct(o['rate_429'])}, error rate {_pct(o['error_rate'])}",
        f"- compute seconds per image {_fmt(summary['compute_s_per_image'])}",
        "- Jain's fairness (weight-normalised images while every tenant compared was served): "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in summary["fairness"].items()),
        f"- send lag (open loop, sent - scheduled) p99 {_fmt(summary['send_lag_s']['p99'])} s",
        "",
        *_group_table("Per class", summary["classes"]),
        *_group_table("Per model", summary["models"]),
        "### Per tenant",
        "",
        "| tenant | weight | requests | images | img/s | share | share while all served "
        "| weight share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, s in summary["tenants"].items():
        lines.append(
            f"| {t} | {_fmt(s['weight'])} | {s['requests']} | {s['images']} "
            f"| {_fmt(s['throughput_images_per_s'])} | {_fmt(s['share'])} "
            f"| {_fmt(s['contested_share'])} | {_fmt(s['weight_share'])} |"
        )
    lines.append("")
    for p in plots:
        lines += [f"![{Path(p).stem}]({Path(p).name})", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, records: list[RequestRecord], info: RunInfo) -> dict:
    """``summary.json``, ``report.md`` and the PNG plots into ``out_dir``; returns the summary.
    The plots need the ``loadtest`` extra (``plots.PlotsUnavailable`` without it, raised after
    ``summary.json`` is written)."""
    from genmedia.loadtests.plots import write_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, info)
    series = timeline(records, summary["window_s"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = write_plots(out, records, summary, series)
    (out / "report.md").write_text(markdown(summary, plots))
    return summary


def write_run_info(out_dir: str | Path, info: RunInfo) -> Path:
    path = Path(out_dir) / "run.json"
    path.write_text(info.model_dump_json(indent=2) + "\n")
    return path


def read_run(run_dir: str | Path) -> tuple[list[RequestRecord], RunInfo]:
    """The records and run info of a run directory; ``ReportError`` names the bad file."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ReportError(f"{run}: not a directory")
    req = run / "requests.jsonl"
    if not req.exists():
        raise ReportError(f"{req}: missing (not a load-test run directory)")
    try:
        records = read_records(req)
    except (ValueError, TypeError) as e:
        raise ReportError(f"{req}: {e}") from None
    path = run / "run.json"
    if not path.exists():
        return records, RunInfo(scenario=run.name, duration_s=0.0)
    try:
        info = RunInfo.model_validate_json(path.read_text())
    except ValidationError as e:
        field, message = field_errors(e)[0]
        raise ReportError(f"{path}: {field}: {message}") from None
    return records, info


def render_run(run_dir: str | Path) -> dict:
    """Re-render the report of a run directory from its raw records."""
    records, info = read_run(run_dir)
    return write_report(run_dir, records, info)
