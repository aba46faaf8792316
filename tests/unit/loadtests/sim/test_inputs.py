"""The simulator's inputs: cost model arithmetic, profile files and the ``genmedia sim`` command
with bad input (clear errors naming file and field, exit code 2) and good input (records)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from genmedia.deployments.cli.main import app
from genmedia.loadtests.records import read_records
from genmedia.loadtests.sim.costs import FamilyCost, ProfileError, load_profile

runner = CliRunner()
SDXL_LIKE = {
    "step_fixed_s": 0.01,
    "step_per_image_s": 0.02,
    "ref_megapixels": 1.0,
    "cfg_multiplier": 2.0,
    "vae_per_image_s": 0.05,
    "call_overhead_s": 0.1,
    "per_image_overhead_s": 0.01,
    "load_s": 3.0,
}


def test_cost_model_arithmetic():
    c = FamilyCost(**SDXL_LIKE)
    assert c.step_s(1, 1.0, cfg=False) == pytest.approx(0.03)
    assert c.step_s(4, 1.0, cfg=True) == pytest.approx(0.01 + 4 * 0.04)
    assert c.step_s(1, 0.25, cfg=False) == pytest.approx(0.015)  # linear in pixels
    assert c.call_s(2, 1.0, 10, cfg=False) == pytest.approx(0.1 + 10 * 0.05 + 2 * 0.06)
    assert c.share(1, 1.0, cfg=False) == pytest.approx(2 / 3)  # per-image part of the step
    assert FamilyCost(**SDXL_LIKE, device_share=0.5).share(8, 1.0, cfg=True) == 0.5


def test_gpu_profile_reproduces_its_published_anchor():
    gpu = load_profile("gpu")
    assert set(gpu.families) >= {"sd15", "sdxl", "flux"}
    flux = gpu.cost("flux")
    # Flux.1-dev 1024^2, 28 steps, H100 compiled: 4.2 s (performance.md)
    assert flux.call_s(1, 1.048576, 28, cfg=False) == pytest.approx(4.2, rel=0.05)
    # Batch 1 -> 16 per-image gain of SD1.5 512^2: +124 %
    sd15 = gpu.cost("sd15")
    t1, t16 = sd15.step_s(1, 0.262144, True), sd15.step_s(16, 0.262144, True) / 16
    assert t1 / t16 == pytest.approx(2.24, rel=0.02)


def test_tiny_cpu_profile_loads():
    assert set(load_profile("tiny-cpu").families) >= {"sd15", "sdxl", "flux"}


def write(tmp_path, data, name="p.yaml"):
    f = tmp_path / name
    f.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return f


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"name": "x", "device": "d"}, "families", "field required"),
        (
            {"name": "x", "device": "d", "families": {"sd15": {**SDXL_LIKE, "load_s": -1}}},
            "families.sd15.load_s",
            "greater than or equal to 0",
        ),
        (
            {"name": "x", "device": "d", "families": {"sd15": {**SDXL_LIKE, "speed": 1}}},
            "families.sd15.speed",
            "unknown field",
        ),
        ("name: [unclosed", "line 1", "invalid YAML"),
        ("- a list", "(root)", "must be a mapping"),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path, data, field, words):
    f = write(tmp_path, data)
    with pytest.raises(ProfileError) as e:
        load_profile(f)
    assert str(f) in str(e.value)
    assert e.value.field == field
    assert words in str(e.value)


def test_missing_profile_lists_the_builtin_ones():
    with pytest.raises(ProfileError, match=r"built-in profiles: gpu, tiny-cpu"):
        load_profile("h200")


def trace(tmp_path, lines):
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f


GOOD = {"t": 0.0, "tenant": "a", "priority": "interactive", "model": "sd15-tiny",
        "params": {"prompt": "x"}}  # fmt: skip


def test_cli_writes_records_and_summary(tmp_path):
    f = trace(tmp_path, [GOOD, {**GOOD, "t": 0.5, "priority": "batch"}])
    out = tmp_path / "out"
    r = runner.invoke(app, ["sim", "--scenario", str(f), "--profile", "gpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    records = read_records(out / "requests.jsonl")
    assert [x.status for x in records] == ["COMPLETED", "COMPLETED"]
    summary = json.loads((out / "summary.json").read_text())  # the harness's report
    assert summary["overall"]["requests"] == 2
    assert summary["source"] == "sim"
    assert (out / "report.md").exists() and (out / "latency_cdf.png").exists()


def test_cli_selects_the_workers_engine(tmp_path):
    f = trace(tmp_path, [GOOD, {**GOOD, "t": 0.5, "priority": "batch"}])
    for engine in ("step", "request"):
        out = tmp_path / engine
        args = ["sim", "--scenario", str(f), "--engine", engine, "--out", str(out)]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        assert json.loads((out / "sim.json").read_text())["engine"] == engine
        assert [x.status for x in read_records(out / "requests.jsonl")] == ["COMPLETED"] * 2
    r = runner.invoke(app, ["sim", "--scenario", str(f), "--engine", "token"])
    assert r.exit_code == 2


def test_cli_runs_a_committed_scenario_by_name(tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["sim", "--scenario", "smoke", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == "smoke"
    assert summary["overall"]["by_status"] == {"COMPLETED": summary["overall"]["requests"]}
    assert summary["slo_s"] == {"interactive": 5.0, "batch": 30.0}


def test_cli_bad_scenario_names_file_line_and_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        "name: bad\nduration_s: 10\nstreams:\n  - tenant: a\n    priority: urgent\n"
        "    model: sd15-tiny\n    arrival: {process: poisson, rate: 1}\n"
    )
    r = runner.invoke(app, ["sim", "--scenario", str(f)])
    assert r.exit_code == 2
    assert str(f) in r.output and "priority" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--profile", "missing-profile"], "missing-profile.yaml: (file)"),
        (["--replicas", "sd15=0"], "--replicas: 'sd15=0'"),
        (["--catalog", "nope.yaml"], "nope.yaml: catalog: (file)"),
    ],
)
def test_cli_bad_options_are_one_clear_line(tmp_path, args, words):
    f = trace(tmp_path, [GOOD])
    r = runner.invoke(app, ["sim", "--scenario", str(f), *args])
    assert r.exit_code == 2
    assert words in r.output
    assert "Traceback" not in r.output


def test_cli_bad_trace_line_names_file_line_and_field(tmp_path):
    f = trace(tmp_path, [GOOD, {**GOOD, "t": 1.0, "priority": "urgent"}])
    r = runner.invoke(app, ["sim", "--scenario", str(f), "--profile", "gpu"])
    assert r.exit_code == 2
    assert f"{f}:2: priority:" in r.output


def test_cli_profile_without_a_family_the_trace_uses(tmp_path):
    p = write(tmp_path, {"name": "x", "device": "d", "families": {"sd15": SDXL_LIKE}})
    f = trace(tmp_path, [GOOD, {**GOOD, "t": 1.0, "model": "sdxl-tiny"}])
    r = runner.invoke(app, ["sim", "--scenario", str(f), "--profile", str(p)])
    assert r.exit_code == 2
    assert f"{p}: families.sdxl: no cost model" in r.output


def test_local_stack_tenants_have_valid_distinct_keys():
    from genmedia.deployments.tenants.keys import parse_api_key, verify_api_key
    from genmedia.deployments.tenants.schema import parse_tenants
    from genmedia.loadtests.local import TENANT, tenant_key, tenants_data

    ids = ["web", "studio"]
    tf = parse_tenants(tenants_data(ids), "<test>")
    assert [t.id for t in tf.tenants] == [TENANT, *ids]
    keys = {t: tenant_key(ids, t) for t in [TENANT, *ids]}
    assert len(set(keys.values())) == 3
    for t in tf.tenants:
        assert parse_api_key(keys[t.id]) is not None
        assert verify_api_key(keys[t.id], t.api_keys[0])
