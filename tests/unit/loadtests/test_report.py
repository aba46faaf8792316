"""Reports from hand-made records: percentiles, goodput, rates, Jain's index, files and plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genmedia.loadtests.records import RequestRecord, read_records, write_records
from genmedia.loadtests.report import (
    ReportError,
    RunInfo,
    jain,
    percentiles,
    read_run,
    render_run,
    summarize,
    timeline,
    write_report,
    write_run_info,
)

PNG = b"\x89PNG\r\n\x1a\n"


def rec(
    i,
    *,
    tenant="a",
    priority="interactive",
    model="m",
    images=1,
    t=0.0,
    latency=1.0,
    status="COMPLETED",
    queue=0.1,
    compute=0.5,
    http=202,
):
    done = t + latency if status not in ("REJECTED",) else t
    return RequestRecord(
        index=i,
        tenant=tenant,
        priority=priority,
        model=model,
        images=images,
        steps=4,
        t_scheduled=t,
        t_submit=t,
        t_admitted=None if status == "REJECTED" else t + 0.01,
        t_started=t + queue if status == "COMPLETED" else None,
        t_done=done,
        status=status,
        http_status=429 if status == "REJECTED" else http,
        compute_s=compute if status == "COMPLETED" else None,
    )


INFO = RunInfo(
    scenario="hand",
    duration_s=10.0,
    slo_s={"interactive": 2.0, "batch": 50.0},
    weights={"a": 1.0, "b": 1.0, "c": 2.0},
)


def test_percentiles_from_raw_samples():
    p = percentiles(float(v) for v in range(1, 101))
    assert p["n"] == 100 and p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1)
    assert p["p99"] == pytest.approx(99.01) and p["max"] == 100 and p["mean"] == 50.5
    assert percentiles([])["p99"] is None and percentiles([None, 3.0])["n"] == 1


def test_jain_index():
    assert jain([5, 5, 5]) == pytest.approx(1.0)
    assert jain([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain([1, 2]) == pytest.approx(9 / 10)
    assert jain([]) is None and jain([0, 0]) is None


def test_summary_rates_goodput_and_percentiles():
    records = [rec(i, latency=0.5 + i * 0.1) for i in range(20)]  # 0.5 .. 2.4 s
    records += [rec(20 + i, status="REJECTED") for i in range(4)]
    records += [rec(30, status="ERROR", http=500), rec(31, status="FAILED")]
    records += [
        rec(40 + i, priority="batch", tenant="b", images=4, latency=30.0, t=i) for i in range(4)
    ]
    s = summarize(records, INFO)
    o, inter, batch = s["overall"], s["classes"]["interactive"], s["classes"]["batch"]
    window = 3 + 30.0  # last answer after the 10 s of arrivals
    assert s["window_s"] == pytest.approx(window)
    assert o["requests"] == 30 and o["images"] == 20 + 16
    assert o["throughput_images_per_s"] == pytest.approx(36 / window)
    assert o["rate_429"] == pytest.approx(4 / 30) and o["error_rate"] == pytest.approx(2 / 30)
    # interactive SLO 2 s: latencies 0.5..2.0 pass (16 of 20), 2.1..2.4 miss
    assert inter["goodput_images_per_s"] == pytest.approx(16 / window)
    assert inter["slo_attainment"] == pytest.approx(16 / 26)
    assert batch["goodput_images_per_s"] == pytest.approx(16 / window)
    lat = np.array([0.5 + i * 0.1 for i in range(20)])
    assert inter["latency_s"]["p99"] == pytest.approx(np.percentile(lat, 99))
    assert inter["queue_wait_s"]["p50"] == pytest.approx(0.1)
    assert inter["by_status"] == {"COMPLETED": 20, "ERROR": 1, "FAILED": 1, "REJECTED": 4}
    assert s["compute_s_per_image"] == pytest.approx(0.5 * 24 / 36)
    assert set(s["models"]) == {"m"}


def test_fairness_normalises_by_weight_per_class():
    # b and c (weight 2) flood the batch class; c gets twice b's images: fair.
    records = [rec(i, tenant="b", priority="batch") for i in range(10)]
    records += [rec(100 + i, tenant="c", priority="batch") for i in range(20)]
    records += [rec(200 + i, tenant="a") for i in range(3)]
    s = summarize(records, INFO)
    assert s["fairness"]["jain_batch"] == pytest.approx(1.0)
    assert s["fairness"]["jain_interactive"] == pytest.approx(1.0)
    assert s["fairness"]["jain"] < 0.9  # 'a' asked for less: overall index says so
    assert s["tenants"]["c"]["share"] == pytest.approx(20 / 33)
    assert s["tenants"]["c"]["weight_share"] == pytest.approx(0.5)
    unfair = summarize([*records[:10], *records[10:15], *records[30:]], INFO)
    assert unfair["fairness"]["jain_batch"] == pytest.approx(jain([10, 2.5]))


def test_fairness_counts_only_while_every_tenant_is_served():
    # b (weight 1) and c (weight 2) are backlogged from t=0; c gets 2 images/s, b 1/s, until c
    # drains at t=10; b then finishes its backlog alone until t=30. Whole-run totals are the
    # demand (30 vs 20); the scheduler's split while both waited is 1:2, i.e. fair.
    records = [rec(i, tenant="b", priority="batch", latency=1.0 + i) for i in range(30)]
    records += [rec(100 + i, tenant="c", priority="batch", latency=1.0 + i / 2) for i in range(20)]
    s = summarize(records, INFO)
    assert s["fairness_spans_s"]["jain_batch"] == [0.0, pytest.approx(10.5)]
    assert s["fairness"]["jain_batch"] == pytest.approx(jain([10 / 1, 20 / 2]))
    assert s["fairness"]["jain_batch"] > 0.99
    assert jain([30 / 1, 20 / 2]) < 0.85  # what whole-run totals would have said
    assert s["tenants"]["c"]["contested_share"] == pytest.approx(20 / 30)
    assert s["tenants"]["c"]["share"] == pytest.approx(20 / 50)
    starved = [rec(0, tenant="b", priority="batch"), rec(1, tenant="c", status="ERROR")]
    assert summarize(starved, INFO)["fairness"]["jain"] == pytest.approx(0.5)


def test_timeline_counts_images_and_queue_depth():
    records = [rec(i, t=float(i), latency=2.0, queue=1.5, images=2) for i in range(10)]
    series = timeline(records, 20.0, bins=20, points=201)
    assert series["bin_s"] == 1.0
    assert sum(series["throughput"]["all"]) == pytest.approx(20.0)  # 2 images/s x 10 bins
    assert series["throughput"]["interactive"][2] == pytest.approx(2.0)  # done at t=2
    at = np.array(series["queue_t"])
    depth = np.array(series["queue_depth"]["all"])
    # queued from t+0.01 to t+1.5, one request a second: depth 2 at t=5.2, 1 at t=5.8
    assert depth[np.argmin(abs(at - 5.2))] == 2 and depth[np.argmin(abs(at - 5.8))] == 1
    assert max(series["queue_depth"]["batch"]) == 0


def test_write_report_writes_json_markdown_and_pngs(tmp_path):
    records = [
        rec(i, t=i * 0.5, tenant="abc"[i % 3], priority=("interactive", "batch")[i % 2])
        for i in range(30)
    ]
    summary = write_report(tmp_path, records, INFO)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    md = (tmp_path / "report.md").read_text()
    assert "# Load test: hand" in md and "| interactive |" in md and "| c | 2 |" in md
    for name in ("latency_cdf.png", "over_time.png", "tenant_share.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
        assert f"]({name})" in md


def test_render_run_rebuilds_from_raw_records(tmp_path):
    records = [rec(i, t=float(i)) for i in range(5)]
    write_records(tmp_path / "requests.jsonl", records)
    write_run_info(tmp_path, INFO)
    summary = render_run(tmp_path)
    assert summary["overall"]["requests"] == 5 and summary["scenario"] == "hand"
    assert (tmp_path / "over_time.png").read_bytes().startswith(PNG)
    assert read_records(tmp_path / "requests.jsonl") == records


def test_bad_run_directories_named(tmp_path):
    with pytest.raises(ReportError, match="not a directory"):
        read_run(tmp_path / "missing")
    with pytest.raises(ReportError, match=r"requests\.jsonl: missing"):
        read_run(tmp_path)
    good = json.dumps(rec(0).__dict__)
    (tmp_path / "requests.jsonl").write_text(good + "\n{oops\n")
    with pytest.raises(ReportError, match=r"requests.jsonl:2: not JSON"):
        read_run(tmp_path)
    (tmp_path / "requests.jsonl").write_text(good + "\n" + json.dumps({"index": 1}) + "\n")
    with pytest.raises(ReportError, match=r"requests.jsonl:2: images: field required"):
        read_run(tmp_path)
    (tmp_path / "requests.jsonl").write_text(good + "\n")
    (tmp_path / "run.json").write_text(json.dumps({"scenario": "x", "duration_s": -1}))
    with pytest.raises(ReportError, match=r"run.json: duration_s: .*greater than or equal"):
        read_run(tmp_path)
    (tmp_path / "run.json").unlink()
    records, info = read_run(tmp_path)  # records alone: default SLOs, the directory's name
    assert len(records) == 1 and info.scenario == tmp_path.name
