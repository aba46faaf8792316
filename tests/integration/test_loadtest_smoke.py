"""The committed smoke scenario replayed open loop (`genmedia loadtest run`) against the session's
real Ray Serve app: every request completes, raw records, trace and report are written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from genmedia.deployments.cli.main import app
from genmedia.loadtests.records import read_records
from genmedia.loadtests.scenarios import find_scenario, generate, load_scenario

from .conftest import API_KEY

pytestmark = pytest.mark.integration


def test_smoke_scenario_runs_clean(base_url, tmp_path):
    out = tmp_path / "smoke"
    args = ["loadtest", "run", "--scenario", "smoke", "--url", base_url, "--out", str(out)]
    # Both trace tenants send as 'dev': the isolation tests expect 'other' to have no jobs.
    r = CliRunner().invoke(app, [*args, "--api-key", API_KEY, "--timeout", "60"])
    assert r.exit_code == 0, r.output
    trace = generate(load_scenario(find_scenario("smoke")))
    records = read_records(out / "requests.jsonl")
    assert len(records) == len(trace)
    failed = [(x.index, x.status, x.error) for x in records if x.status != "COMPLETED"]
    assert failed == []
    for x in records:
        assert x.t_submit <= x.t_admitted <= x.t_done and x.queue_s is not None
        assert x.compute_s and x.compute_s > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["by_status"] == {"COMPLETED": len(trace)}
    assert set(summary["classes"]) == {"interactive", "batch"}
    assert summary["send_lag_s"]["p99"] < 1.0  # open loop: sent on schedule
    for name in ("trace.jsonl", "run.json", "report.md", "latency_cdf.png", "over_time.png"):
        assert (out / name).stat().st_size > 0, name
