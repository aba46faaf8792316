"""Rendered deploy artifacts, each checked by the real validator that exists offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from genmedia.infra import render as r
from genmedia.models.catalog import load_catalog
from tests.unit.autoscaling.conftest import catalog, model

INFRA = Path(__file__).resolve().parents[3] / "infra"


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return r.render_all(load_catalog())


def test_committed_files_equal_a_fresh_render(files):
    for name, text in files.items():
        assert (INFRA / name).read_text() == text, f"infra/{name} is stale: genmedia render all"


def test_serve_config_passes_rays_schema(files):
    from ray.serve.schema import ServeDeploySchema

    cfg = ServeDeploySchema.model_validate(yaml.safe_load(files["serve-config.yaml"]))
    app = cfg.applications[0]
    assert app.import_path == "genmedia.deployments.serve.entrypoint:build"
    assert app.autoscaling_policy["policy_function"].endswith(":GenmediaAutoscaler")
    names = {d.name for d in app.deployments}
    assert names == {"scheduler"} | {f"worker-{f}" for f in load_catalog().families()}
    assert "worker-wan" in names


def test_rayservice_embeds_the_serve_config_and_valid_pod_templates(files):
    from kubernetes.client import ApiClient
    from ray.serve.schema import ServeDeploySchema

    svc = yaml.safe_load(files["rayservice.yaml"])
    assert svc["kind"] == "RayService"
    serve = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert serve == yaml.safe_load(files["serve-config.yaml"])
    ServeDeploySchema.model_validate(serve)
    cluster = svc["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    api = ApiClient()

    class Raw:
        def __init__(self, data):
            self.data = json.dumps(data)

    for t in templates:
        pod = api.deserialize(Raw(t), "V1PodTemplateSpec")
        # a misspelled or unknown key is dropped by the model: the round trip shows it
        assert api.sanitize_for_serialization(pod) == t
    gpu = cluster["workerGroupSpecs"][0]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]


def test_pod_template_check_catches_a_misspelled_field():
    from kubernetes.client import ApiClient

    api = ApiClient()
    t = r.head_pod_template(r.Cluster(1), r.pod_env(load_catalog(), r.Cluster(1)))
    t["spec"]["containers"][0]["imagePullPolcy"] = "Always"

    class Raw:
        data = json.dumps(t)

    assert api.sanitize_for_serialization(api.deserialize(Raw(), "V1PodTemplateSpec")) != t


def _subset(ours, theirs, path="") -> list[str]:
    """Paths in ``ours`` that the model did not keep with the same value."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [path]
        return [
            p for k, v in ours.items() for p in _subset(v, theirs.get(k, _MISSING), path + "." + k)
        ]
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(theirs) != len(ours):
            return [path]
        return [
            p
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
            for p in _subset(a, b, f"{path}[{i}]")
        ]
    return [] if ours == theirs else [path]


_MISSING = object()


def test_dashboard_loads_as_grafanas_json_model(files):
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard
    from grafana_foundation_sdk.models.prometheus import Dataquery

    data = json.loads(files["grafana-dashboard.json"])
    loaded = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    assert _subset(data, loaded) == []
    for panel in data["panels"]:
        for target in panel["targets"]:
            query = json.loads(json.dumps(Dataquery.from_json(target), cls=JSONEncoder))
            assert _subset(target, query) == []
    bad = {**data, "panelz": []}
    assert _subset(bad, json.loads(json.dumps(Dashboard.from_json(bad), cls=JSONEncoder)))


def test_dashboard_queries_only_metrics_genmedia_exports(files):
    from genmedia.deployments.metrics import GatewayMetrics, SchedulerMetrics

    exported = set()
    for registry in (GatewayMetrics().registry, SchedulerMetrics().registry):
        for family in registry.collect():
            kind = family.type
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            exported |= {family.name + s for s in suffixes.get(kind, [""])}
    data = json.loads(files["grafana-dashboard.json"])
    used = {
        name
        for p in data["panels"]
        for t in p["targets"]
        for name in re.findall(r"\bgenmedia_[a-z_]+", t["expr"])
    }
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in data["panels"]).lower()
    for topic in ("queue depth", "queue wait", "latency", "batch size", "gpu share", "tenant"):
        assert topic in titles


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus)")
def test_scrape_config_passes_promtool(tmp_path, files):
    key = tmp_path / "key"  # promtool checks that the credentials file exists
    key.write_text("gm_0123abcd_" + "k" * 43)
    text = files["prometheus.yml"].replace(r.METRICS_CREDENTIALS_FILE, str(key))
    good = tmp_path / "prometheus.yml"
    good.write_text(text)
    ok = subprocess.run(["promtool", "check", "config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text(text.replace("scrape_interval: 15s", "scrape_interval: 15"))
    no = subprocess.run(["promtool", "check", "config", str(bad)], capture_output=True, text=True)
    assert no.returncode != 0


def test_dockerfiles_pin_torch_as_the_makefile(files):
    makefile = (INFRA.parent / "Makefile").read_text()
    pin = re.search(r'"(torch==[0-9.]+)"', makefile).group(1)
    known = {"FROM", "ARG", "ENV", "WORKDIR", "RUN", "COPY", "EXPOSE", "CMD"}
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = files[name]
        assert f'"{pin}"' in text
        lines = [ln for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
        assert {ln.split()[0] for ln in lines} <= known
    assert "-gpu" in files["Dockerfile.cuda"] and '".[gpu]"' in files["Dockerfile.cuda"]


def test_unknown_target_and_variant_are_clear_errors():
    with pytest.raises(r.RenderError, match="unknown render target 'helm'; known: serve-config"):
        r.render("helm", load_catalog())
    with pytest.raises(r.RenderError, match="unknown Dockerfile variant 'arm'"):
        r.render("dockerfile", load_catalog(), variant="arm")


def test_kuberay_for_a_catalog_that_does_not_fit_names_the_models():
    from genmedia.autoscaling.placement import PlacementError

    c = catalog([model("wide", gpu_fraction=0.6), model("wide2", "sdxl", gpu_fraction=0.6)])
    with pytest.raises(PlacementError) as e:
        r.render("kuberay", c, r.Cluster(1))
    # sd15 is placed first (same size, name order); sdxl's replica finds no room
    assert {(i.model_id, i.field) for i in e.value.issues} == {
        ("wide2", "workers.sdxl.min_replicas")
    }


def test_gpu_worker_group_grows_to_the_families_max():
    c = catalog(
        [model("a", gpu_fraction=0.5), model("b", "sdxl", gpu_fraction=0.5)],
        {"sd15": {"min_replicas": 1, "max_replicas": 3}},
    )
    assert r.gpus_for_max(c, 80) == 2
    svc = yaml.safe_load(r.render("kuberay", c))
    group = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 2)


def test_genmedia_is_scraped_with_an_admin_key_unless_metrics_are_public():
    scrape = yaml.safe_load(r.render("prometheus", load_catalog()))["scrape_configs"][0]
    assert scrape["job_name"] == "genmedia"
    assert scrape["authorization"] == {
        "type": "Bearer",
        "credentials_file": r.METRICS_CREDENTIALS_FILE,
    }
    catalog = load_catalog()
    metrics = catalog.server.metrics.model_copy(update={"public": True})
    server = catalog.server.model_copy(update={"metrics": metrics})
    public = catalog.model_copy(update={"server": server})
    scrape = yaml.safe_load(r.render("prometheus", public))["scrape_configs"][0]
    assert "authorization" not in scrape


def test_the_haproxy_ingress_is_switched_on_in_every_pod():
    """``server.ingress: haproxy`` is the nodes' environment (Serve reads it as Ray starts):
    the head's and the GPU workers' containers carry it; the default sets nothing."""
    from genmedia.models.catalog import parse_catalog
    from genmedia.models.server_config import HAPROXY_ENV, ingress_env

    assert ingress_env("serve-proxy") == {} and ingress_env("haproxy") == {HAPROXY_ENV: "1"}
    with pytest.raises(ValueError, match="serve-proxy or haproxy"):
        ingress_env("nginx")
    data = load_catalog().model_dump(mode="json")
    plain = yaml.safe_load(r.render_all(parse_catalog(data, "<test>"))["rayservice.yaml"])
    data["server"]["ingress"] = "haproxy"
    svc = yaml.safe_load(r.render_all(parse_catalog(data, "<test>"))["rayservice.yaml"])
    for spec, on in ((plain, False), (svc, True)):
        cluster = spec["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
        for group in groups:
            (container,) = group["template"]["spec"]["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert (env.get(HAPROXY_ENV) == "1") is on
    data["server"]["ingress"] = "nginx"
    with pytest.raises(Exception, match="ingress"):
        parse_catalog(data, "<test>")
