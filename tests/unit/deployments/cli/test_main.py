"""The CLI's validation paths: clear errors naming file, model, field or path; no tracebacks."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from genmedia.deployments.cli.main import app

runner = CliRunner()


def write(tmp_path, models, name="catalog.yaml"):
    f = tmp_path / name
    f.write_text(yaml.safe_dump({"models": models}))
    return f


def test_validate_default_catalog_ok():
    from importlib import resources

    path = resources.files("genmedia.models") / "catalogs" / "default.yaml"
    r = runner.invoke(app, ["catalog", "validate", str(path)])
    assert r.exit_code == 0, r.output
    assert "6 model(s) valid" in r.output


def test_validate_reports_every_problem(tmp_path):
    f = write(
        tmp_path,
        [
            {"id": "a", "family": "sd15", "weights": "tiny://sd15", "max_batch_size": 0},
            {"id": "b", "family": "dalle", "weights": "tiny://sd15"},
        ],
    )
    r = runner.invoke(app, ["catalog", "validate", str(f)])
    assert r.exit_code == 2
    assert "model 'a': max_batch_size" in r.output
    assert "model 'b': family" in r.output
    assert "catalog.yaml" in r.output
    assert "Traceback" not in r.output


def test_missing_weights_named_at_deploy_time(tmp_path):
    f = write(tmp_path, [{"id": "gone", "family": "sd15", "weights": "weights/gone"}])
    r = runner.invoke(app, ["catalog", "validate", str(f), "--check-weights"])
    assert r.exit_code == 2
    assert "model 'gone'" in r.output and str(tmp_path / "weights" / "gone") in r.output


def test_pickle_weights_refused(tmp_path):
    d = tmp_path / "w"
    (d / "unet").mkdir(parents=True)
    (d / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    f = write(tmp_path, [{"id": "pk", "family": "sd15", "weights": str(d)}])
    r = runner.invoke(app, ["catalog", "validate", str(f), "--check-weights"])
    assert r.exit_code == 2
    assert "model 'pk'" in r.output and "diffusion_pytorch_model.bin" in r.output


def test_serve_refuses_bad_catalog_before_starting_ray(tmp_path):
    f = write(tmp_path, [{"id": "x", "family": "sd15", "weights": str(tmp_path / "nope")}])
    r = runner.invoke(app, ["serve", "--catalog", str(f)])
    assert r.exit_code == 2
    assert "model 'x'" in r.output and "nope" in r.output


def test_unknown_family_for_build_tiny():
    r = runner.invoke(app, ["models", "build-tiny", "--family", "dalle"])
    assert r.exit_code == 2 and "dalle" in r.output


def test_serve_refuses_options_this_device_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMEDIA_HOME", str(tmp_path / "home"))
    f = write(
        tmp_path,
        [
            {
                "id": "x",
                "family": "sd15",
                "weights": "tiny://sd15",
                "acceleration": {"attention": "xformers"},
            }
        ],
    )
    r = runner.invoke(app, ["serve", "--catalog", str(f)])
    assert r.exit_code == 2
    assert "model 'x': acceleration.attention" in r.output


def test_plan_prints_the_packing(tmp_path):
    r = runner.invoke(app, ["plan", "--gpus", "1"])
    assert r.exit_code == 0, r.output
    assert "sd15 #1 (sd15-tiny, sd15-tiny-turbo)" in r.output
    assert "minimum replicas fit on 1 of 1 GPU(s)" in r.output


def test_plan_names_the_models_that_do_not_fit(tmp_path):
    f = write(
        tmp_path,
        [{"id": "big", "family": "sdxl", "weights": "tiny://sdxl", "gpu_fraction": 0.5}],
    )
    r = runner.invoke(app, ["plan", "--gpus", "1", "--gpu-memory-gb", "6", "--catalog", str(f)])
    assert r.exit_code == 2
    assert "'big': gpu_fraction" in r.output and "does not fit 1 GPU(s) of 6 GiB" in r.output
    assert "Traceback" not in r.output


def test_render_unknown_target_is_a_clear_error():
    r = runner.invoke(app, ["render", "helm"])
    assert r.exit_code == 2
    assert "unknown render target 'helm'; known: serve-config, kuberay" in r.output
    assert "Traceback" not in r.output


def test_render_carries_autoscaling_knobs_into_the_serve_config():
    r = runner.invoke(app, ["render", "serve-config", "--knob", "replica_start_s=60"])
    assert r.exit_code == 0, r.output
    kwargs = yaml.safe_load(r.stdout)["applications"][0]["autoscaling_policy"]["policy_kwargs"]
    assert kwargs["replica_start_s"] == 60.0 and kwargs["down_utilisation"] == 0.9


@pytest.mark.parametrize(
    ("knob", "message"),
    [
        ("replica_start_s", "expected NAME=VALUE"),
        ("replica_start_s=soon", "the value must be a number"),
        ("start=5", "unknown autoscaling knob(s) ['start']"),
        ("batch_utilisation=2", "batch_utilisation must be in (0, 1], got 2.0"),
    ],
)
def test_render_refuses_a_bad_knob(knob, message):
    r = runner.invoke(app, ["render", "serve-config", "--knob", knob])
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output


def test_render_writes_the_file(tmp_path):
    out = tmp_path / "prometheus.yml"
    r = runner.invoke(app, ["render", "prometheus", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "job_name: genmedia" in out.read_text()


def test_deploy_without_a_tenants_file_is_refused_unless_insecure_dev():
    r = runner.invoke(app, ["deploy", "--address", "127.0.0.1:1", "--no-check-weights"])
    assert r.exit_code != 0
    assert "--tenants" in r.output and "--insecure-dev" in r.output
    assert "Traceback" not in r.output


def test_deploy_to_an_address_that_does_not_answer_fails_within_seconds():
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    args = ["deploy", "--address", f"127.0.0.1:{port}", "--no-check-weights", "--insecure-dev"]
    r = runner.invoke(app, args)
    assert r.exit_code != 0 and time.monotonic() - t0 < 30
    assert f"127.0.0.1:{port}" in r.output and "Traceback" not in r.output


def test_the_development_tenant_is_not_an_admin():
    from genmedia.deployments.tenants.schema import development_tenants

    tenants, _ = development_tenants()
    assert not tenants.tenants[0].admin


@pytest.mark.parametrize(
    ("ingress", "node", "fails", "says"),
    [
        ("haproxy", None, True, "lack RAY_SERVE_ENABLE_HA_PROXY=1"),
        ("haproxy", "1", False, ""),
        ("serve-proxy", "1", False, "HAProxy takes HTTP"),
        ("serve-proxy", None, False, ""),
    ],
)
def test_deploy_checks_the_ingress_against_the_clusters_nodes(
    monkeypatch, capsys, ingress, node, fails, says
):
    """HAProxy is switched on by the nodes' environment before Ray starts, not by a deploy:
    a catalog asking for it on a cluster without it is refused with what to set."""
    import typer

    from genmedia.deployments.cli import main
    from genmedia.deployments.serve import local
    from genmedia.models.catalog import parse_catalog

    monkeypatch.setattr(local, "node_env", lambda name: node)
    data = {
        "models": [{"id": "a", "family": "sd15", "weights": "tiny://sd15"}],
        "server": {"ingress": ingress},
    }
    catalog = parse_catalog(data, "<test>")
    if fails:
        with pytest.raises(typer.Exit) as e:
            main._check_ingress(catalog)
        assert e.value.exit_code == 2
    else:
        main._check_ingress(catalog)
    out = capsys.readouterr()
    assert says in out.out + out.err
