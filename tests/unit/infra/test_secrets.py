"""The KubeRay manifest's secrets: the URL-signing key and a PostgreSQL job store's password
come from Kubernetes Secrets, never from the rendered text; ``--job-store`` renders the catalog
with a PostgreSQL store and a standby scheduler."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from genmedia.deployments.cli.main import app
from genmedia.infra import render as r
from genmedia.models.catalog import load_catalog

PG = "postgresql://genmedia@db.example:5432/genmedia?sslmode=require"
runner = CliRunner()


def _templates(svc: dict) -> list[dict]:
    cluster = svc["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]


def _env(template: dict) -> dict[str, dict]:
    return {e["name"]: e for e in template["spec"]["containers"][0]["env"]}


def _scheduler(svc: dict) -> tuple[dict, dict]:
    serve = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]
    deployment = next(d for d in serve["deployments"] if d["name"] == "scheduler")
    return serve["args"]["catalog"]["server"]["scheduler"], deployment["autoscaling_config"]


def _secret(name: str, key: str) -> dict:
    return {"secretKeyRef": {"name": name, "key": key}}


def _pod_round_trip(template: dict) -> dict:
    from kubernetes.client import ApiClient

    api = ApiClient()

    class Raw:
        data = json.dumps(template)

    return api.sanitize_for_serialization(api.deserialize(Raw(), "V1PodTemplateSpec"))


def test_every_pod_reads_the_url_signing_secret_from_a_secret():
    svc = yaml.safe_load(r.render("kuberay", load_catalog()))
    for t in _templates(svc):
        env = _env(t)
        assert env["GENMEDIA_URL_SECRET"]["valueFrom"] == _secret("genmedia-url-secret", "secret")
        assert r.JOB_STORE_PASSWORD_ENV not in env  # the embedded catalog keeps jobs in SQLite
    scheduler, scaling = _scheduler(svc)
    assert scheduler["job_store"].endswith(".sqlite") and scheduler["standby"] == 0
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 1)


def test_job_store_option_renders_postgresql_with_its_secret_and_a_standby():
    cluster = r.Cluster(
        1,
        job_store=PG,
        job_store_secret=r.SecretRef.parse("pg-creds:pw", "password"),
        url_secret=r.SecretRef.parse("signing", "secret"),
    )
    text = r.render("kuberay", load_catalog(), cluster)
    svc = yaml.safe_load(text)
    scheduler, scaling = _scheduler(svc)
    assert scheduler["job_store"] == PG
    assert scheduler["job_store_password_env"] == r.JOB_STORE_PASSWORD_ENV
    assert scheduler["job_store_password_file"] is None
    assert scheduler["standby"] == 1
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (2, 2)
    for t in _templates(svc):  # any node may run the scheduler or its standby
        env = _env(t)
        assert env[r.JOB_STORE_PASSWORD_ENV]["valueFrom"] == _secret("pg-creds", "pw")
        assert env["GENMEDIA_URL_SECRET"]["valueFrom"] == _secret("signing", "secret")
        assert "value" not in env[r.JOB_STORE_PASSWORD_ENV]
        assert _pod_round_trip(t) == t  # valid EnvVar / EnvVarSource fields
    serve = yaml.safe_load(r.render("serve-config", load_catalog(), cluster))
    assert serve == yaml.safe_load(svc["spec"]["serveConfigV2"])


def test_a_catalog_with_its_own_postgresql_store_keeps_its_variable_and_standbys():
    catalog = load_catalog()
    scheduler = catalog.server.scheduler.model_copy(
        update={"job_store": PG, "job_store_password_env": "PGPASSWORD", "standby": 2}
    )
    server = catalog.server.model_copy(update={"scheduler": scheduler})
    catalog = catalog.model_copy(update={"server": server})
    svc = yaml.safe_load(r.render("kuberay", catalog, r.Cluster(1)))
    for t in _templates(svc):
        assert _env(t)["PGPASSWORD"]["valueFrom"] == _secret("genmedia-job-store", "password")
    rendered, scaling = _scheduler(svc)
    assert rendered["standby"] == 2 and scaling["max_replicas"] == 3
    again = r.deployed_catalog(catalog, r.Cluster(1, job_store=PG))
    assert again.server.scheduler.job_store_password_env == "PGPASSWORD"
    assert again.server.scheduler.standby == 2


def test_a_password_file_is_refused_for_kuberay():
    catalog = load_catalog()
    scheduler = catalog.server.scheduler.model_copy(
        update={"job_store": PG, "job_store_password_file": "/run/pg/password"}
    )
    catalog = catalog.model_copy(
        update={"server": catalog.server.model_copy(update={"scheduler": scheduler})}
    )
    with pytest.raises(r.RenderError, match="set job_store_password_env instead"):
        r.render("kuberay", catalog, r.Cluster(1))
    # --job-store replaces the file by the Secret's variable
    svc = yaml.safe_load(r.render("kuberay", catalog, r.Cluster(1, job_store=PG)))
    assert _scheduler(svc)[0]["job_store_password_file"] is None


@pytest.mark.parametrize(
    ("job_store", "message"),
    [
        ("/var/lib/genmedia/jobs.sqlite", "give a postgresql://user@host:port/db URL"),
        ("postgresql://genmedia:hunter2@db:5432/genmedia", "the URL holds a password"),
    ],
)
def test_a_bad_job_store_is_a_clear_error(job_store, message):
    with pytest.raises(r.RenderError, match=message):
        r.render("kuberay", load_catalog(), r.Cluster(1, job_store=job_store))


@pytest.mark.parametrize(
    ("text", "message"),
    [("Bad_Name", "Secret name 'Bad_Name'"), ("ok:bad/key", "Secret key 'bad/key'")],
)
def test_a_bad_secret_reference_is_a_clear_error(text, message):
    with pytest.raises(r.RenderError, match=message):
        r.SecretRef.parse(text, "password")
    got = runner.invoke(app, ["render", "kuberay", "--job-store-secret", text])
    assert got.exit_code == 2 and message in got.output and "Traceback" not in got.output


def test_render_cli_takes_the_job_store_and_its_secret():
    got = runner.invoke(
        app,
        ["render", "kuberay", "--job-store", PG, "--job-store-secret", "pg", "--url-secret", "u:k"],
    )
    assert got.exit_code == 0, got.output
    svc = yaml.safe_load(got.stdout)
    head = _env(_templates(svc)[0])
    assert head[r.JOB_STORE_PASSWORD_ENV]["valueFrom"] == _secret("pg", "password")
    assert head["GENMEDIA_URL_SECRET"]["valueFrom"] == _secret("u", "k")
    assert _scheduler(svc)[0]["standby"] == 1
    url = "postgresql://u:hunter2@h/db"
    bad = runner.invoke(app, ["render", "kuberay", "--job-store", url])
    assert bad.exit_code == 2 and "holds a password" in bad.output
    assert "hunter2" not in bad.output and "Traceback" not in bad.output
