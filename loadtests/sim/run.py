"""One simulator run from files to results: scenario or trace in, ``requests.jsonl`` and a
summary out. Used by ``genmedia sim`` (``cli.py``) and the study and validation scripts.
No Ray imports.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from genmedia.deployments.tenants import TenantsFile, load_tenants
from genmedia.loadtests.records import RequestRecord, write_records
from genmedia.loadtests.sim.costs import Profile, load_profile
from genmedia.loadtests.sim.engine import SimConfig, SimResult, simulate
from genmedia.loadtests.sim.workload import prepare
from genmedia.loadtests.traces import TraceRecord, read_trace
from genmedia.models.catalog import Catalog, load_catalog


class InputError(ValueError):
    """A simulator input that cannot be used; the message names the file and the field."""


def load_trace(scenario: str | Path) -> list[TraceRecord]:
    """A trace (``.jsonl``) as it is."""
    path = Path(scenario)
    if not path.exists():
        raise InputError(f"{path}: (file): no such file")
    if path.suffix == ".jsonl":
        return read_trace(path)
    raise InputError(f"{path}: (file): expected a trace (.jsonl)")


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarize(records: list[RequestRecord]) -> dict:
    """Per class: counts by status, p50/p90/p99 of queue wait and end to end, throughput."""
    out: dict = {}
    done = [r for r in records if r.status == "COMPLETED"]
    span = (
        max((r.t_done for r in done), default=0.0) - min((r.t_submit for r in records), default=0.0)
    ) or 1.0
    for cls in [*sorted({r.priority for r in records}), "all"]:
        rs = [r for r in records if cls in ("all", r.priority)]
        ok = [r for r in rs if r.status == "COMPLETED"]
        lat = [r.latency for r in ok]
        wait = [r.queue_wait for r in ok]
        statuses: dict[str, int] = {}
        for r in rs:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        out[cls] = {
            "requests": len(rs),
            "status": statuses,
            "latency_s": {f"p{int(q * 100)}": quantile(lat, q) for q in (0.5, 0.9, 0.99)},
            "queue_s": {f"p{int(q * 100)}": quantile(wait, q) for q in (0.5, 0.9, 0.99)},
            "mean_latency_s": statistics.fmean(lat) if lat else None,
            "images_per_s": sum(r.images for r in ok) / span,
            "requests_per_s": len(ok) / span,
        }
    return out


@dataclass(frozen=True)
class RunInputs:
    catalog: Catalog
    profile: Profile
    tenants: TenantsFile | None
    trace: list[TraceRecord]


def load_inputs(
    scenario: str | Path,
    profile: str | Path = "tiny-cpu",
    catalog: str | Path | None = None,
    tenants: str | Path | None = None,
) -> RunInputs:
    """Every input read and validated before anything runs (errors name file and field)."""
    return RunInputs(
        catalog=load_catalog(catalog),
        profile=load_profile(profile),
        tenants=load_tenants(tenants) if tenants else None,
        trace=load_trace(scenario),
    )


def run_sim(inputs: RunInputs, config: SimConfig) -> SimResult:
    for family in inputs.catalog.families():
        inputs.profile.cost(family)  # ProfileError naming the file and the family
    return simulate(inputs.catalog, inputs.profile, prepare(inputs.trace, inputs.catalog), config)


def write_outputs(out: Path, result: SimResult, meta: dict) -> dict:
    """``requests.jsonl`` (the real harness's record format) and ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    write_records(out / "requests.jsonl", result.records)
    summary = {
        "source": "simulator",
        **meta,
        "sim": {
            k: getattr(result, k)
            for k in ("wall_s", "events", "calls", "preemptions", "gpus", "replicas", "sim_end_s")
        },
        "classes": summarize(result.records),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if result.timeline:
        (out / "timeline.json").write_text(json.dumps(result.timeline) + "\n")
    return summary
