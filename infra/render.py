"""Deploy artifacts rendered from a catalog: never hand-edited, always ``genmedia render``.

- ``serve-config``: the Serve config (``serve deploy``) of ``serve_config.py``;
- ``kuberay``: a KubeRay ``RayService`` (head group + one GPU worker group sized by the
  placement planner) whose ``serveConfigV2`` is that Serve config;
- ``dockerfile``: the image, CPU or CUDA variant (torch pinned as in the Makefile);
- ``prometheus``: a scrape configuration for genmedia's ``/metrics`` and Ray's metrics port;
  genmedia's is scraped with an admin tenant's key read from ``METRICS_CREDENTIALS_FILE`` (mount
  a Secret holding the key there, e.g. ``genmedia tenants create`` for a metrics tenant with
  ``admin: true``);
- ``grafana``: a dashboard (queue depth and wait per class, latency percentiles, batch sizes,
  GPU share per model, per-tenant usage) over the metric names ``deployments/metrics.py``
  exports;
- ``s3-lifecycle``: for a catalog whose storage is S3, the bucket's lifecycle configuration
  (``aws s3api put-bucket-lifecycle-configuration --lifecycle-configuration file://...``) from
  ``server.retention``: objects expire by their ``genmedia-class`` tag (set on every write), a
  backstop behind the scheduler's sweeper, which deletes rows and files together.

``render_all`` gives the files committed under ``infra/`` for the embedded catalog; a test
checks they equal a fresh render. Pure text building; the validators live in the tests.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from genmedia.autoscaling.placement import GpuPool, allocate, plan_placement, replica_shapes
from genmedia.deployments.store.storage import URL_SECRET_ENV
from genmedia.infra.serve_config import ScalingKnobs, application_config
from genmedia.models.catalog import Catalog, S3Storage
from genmedia.models.server_config import SchedulerSettings, ingress_env

TARGETS = ("serve-config", "kuberay", "dockerfile", "prometheus", "grafana", "s3-lifecycle")
VARIANTS = ("cpu", "cuda")
TORCH_PIN = "torch==2.13.0"  # as the Makefile; never loosen
RAY_VERSION = "2.60.0"
SERVICE = "genmedia"
TENANTS_FILE = "/etc/genmedia/tenants.yaml"
SERVE_PORT = 8000
RAY_METRICS_PORT = 8080
# where Prometheus reads the admin key it scrapes /metrics with (a Secret mounted there)
METRICS_CREDENTIALS_FILE = "/etc/prometheus/secrets/genmedia-metrics/key"


# the pods' environment variable of a PostgreSQL job store's password (from a Secret)
JOB_STORE_PASSWORD_ENV = "GENMEDIA_JOB_STORE_PASSWORD"
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a DNS subdomain
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


class RenderError(ValueError):
    """A render request that cannot be honoured (unknown target or variant, bad option)."""


@dataclass(frozen=True)
class SecretRef:
    """One key of a Kubernetes Secret (``kubectl create secret generic NAME
    --from-literal=KEY=...``)."""

    name: str
    key: str

    def __post_init__(self) -> None:
        if not _SECRET_NAME.match(self.name):
            raise RenderError(
                f"Secret name {self.name!r}: lower-case letters, digits, '-' and '.', at most 253"
            )
        if not _SECRET_KEY.match(self.key):
            raise RenderError(
                f"Secret key {self.key!r}: letters, digits, '-', '_' and '.', at most 253"
            )

    @classmethod
    def parse(cls, text: str, default_key: str) -> SecretRef:
        """``NAME`` or ``NAME:KEY``."""
        name, _, key = text.partition(":")
        return cls(name.strip(), key.strip() or default_key)

    def env(self, variable: str) -> dict[str, Any]:
        """A container's environment variable set from this key."""
        ref = {"name": self.name, "key": self.key}
        return {"name": variable, "valueFrom": {"secretKeyRef": ref}}


URL_SECRET = SecretRef("genmedia-url-secret", "secret")
JOB_STORE_SECRET = SecretRef("genmedia-job-store", "password")


@dataclass(frozen=True)
class Cluster:
    """What the artifacts assume of the cluster."""

    gpus: int  # GPU budget of the autoscaler and the worker group's maxReplicas
    gpu_memory_gb: float = 24.0
    image: str = "genmedia"
    tag: str = "latest"
    policy_knobs: dict[str, float] = field(default_factory=dict)  # autoscaling policy overrides
    # a postgresql:// URL (no password) that replaces the catalog's job_store; None: as catalog
    job_store: str | None = None
    job_store_secret: SecretRef = JOB_STORE_SECRET  # the PostgreSQL password's Secret
    url_secret: SecretRef = URL_SECRET  # GENMEDIA_URL_SECRET: one signing key for every pod


def deployed_catalog(catalog: Catalog, cluster: Cluster) -> Catalog:
    """The catalog as deployed: with ``cluster.job_store`` it keeps jobs in that PostgreSQL
    database, reads the password from ``JOB_STORE_PASSWORD_ENV`` (unless the catalog names
    its own variable) and runs at least one standby scheduler."""
    if cluster.job_store is None:
        return catalog
    if not cluster.job_store.startswith(("postgresql://", "postgres://", "postgresql+")):
        raise RenderError(
            f"job store {cluster.job_store!r}: give a postgresql://user@host:port/db URL "
            "(a SQLite file lives on one node: keep it in the catalog instead)"
        )
    current = catalog.server.scheduler
    data = current.model_dump()
    data.update(
        job_store=cluster.job_store,
        job_store_password_env=current.job_store_password_env or JOB_STORE_PASSWORD_ENV,
        job_store_password_file=None,
        standby=max(1, current.standby),
    )
    try:
        scheduler = SchedulerSettings.model_validate(data)
    except ValidationError as e:  # its text would echo the URL: the messages only
        raise RenderError("; ".join(err["msg"] for err in e.errors())) from None
    server = catalog.server.model_copy(update={"scheduler": scheduler})
    return catalog.model_copy(update={"server": server})


def pod_env(catalog: Catalog, cluster: Cluster) -> list[dict[str, Any]]:
    """Every pod's environment: the cache folder, the URL-signing secret (the same on every
    node, so any gateway checks a URL another signed), the ingress switch (``server.ingress``:
    Serve reads it as Ray starts) and a PostgreSQL job store's password (any node may run the
    scheduler or its standby)."""
    env: list[dict[str, Any]] = [
        {"name": "GENMEDIA_HOME", "value": "/var/cache/genmedia"},
        cluster.url_secret.env(URL_SECRET_ENV),
    ]
    env += [{"name": k, "value": v} for k, v in ingress_env(catalog.server.ingress).items()]
    scheduler = catalog.server.scheduler
    if not scheduler.job_store.startswith("postgres"):
        return env
    if scheduler.job_store_password_file:
        raise RenderError(
            "server.scheduler.job_store_password_file: the KubeRay manifest sets the password "
            "from a Secret as an environment variable: set job_store_password_env instead (or "
            "render with --job-store)"
        )
    if scheduler.job_store_password_env:
        env.append(cluster.job_store_secret.env(scheduler.job_store_password_env))
    return env


def gpus_for_max(catalog: Catalog, gpu_memory_gb: float) -> int:
    """GPUs that hold every family at its max replicas (first-fit, as the planner packs)."""
    shapes = replica_shapes(catalog)
    want = {f: s.max_replicas for f, s in shapes.items()}
    pool = GpuPool(sum(want.values()), gpu_memory_gb)
    allocate(shapes, {}, want, pool)
    return len(pool.gpus)


class _Dumper(yaml.SafeDumper):
    """No anchors (the catalog appears twice on purpose); multi-line strings as blocks."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _yaml(data: object) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100)


def serve_config(catalog: Catalog, cluster: Cluster) -> dict[str, Any]:
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": [
            application_config(
                catalog,
                gpus=cluster.gpus,
                gpu_memory_gb=cluster.gpu_memory_gb,
                tenants_file=TENANTS_FILE,
                knobs=ScalingKnobs(policy=cluster.policy_knobs),
            )
        ],
    }


def _container(
    name: str, image: str, cpu: str, memory: str, gpus: int, env: list[dict[str, Any]]
) -> dict[str, Any]:
    limits = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {
        "name": name,
        "image": image,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
        "env": env,
        "volumeMounts": [
            {"name": "tenants", "mountPath": "/etc/genmedia", "readOnly": True},
            {"name": "cache", "mountPath": "/var/cache/genmedia"},
        ],
    }


def _pod(container: dict[str, Any], ports: list[tuple[str, int]], gpu: bool) -> dict[str, Any]:
    container = {
        **container,
        "ports": [{"name": n, "containerPort": p} for n, p in ports],
    }
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            {"name": "tenants", "secret": {"secretName": "genmedia-tenants"}},
            {"name": "cache", "emptyDir": {}},
        ],
    }
    if gpu:
        spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {"metadata": {"labels": {"app.kubernetes.io/name": SERVICE}}, "spec": spec}


def head_pod_template(cluster: Cluster, env: list[dict[str, Any]]) -> dict[str, Any]:
    c = _container("ray-head", f"{cluster.image}:{cluster.tag}-cpu", "2", "8Gi", 0, env)
    ports = [
        ("gcs", 6379),
        ("dashboard", 8265),
        ("client", 10001),
        ("serve", SERVE_PORT),
        ("metrics", RAY_METRICS_PORT),
    ]
    return _pod(c, ports, gpu=False)


def gpu_worker_pod_template(cluster: Cluster, env: list[dict[str, Any]]) -> dict[str, Any]:
    c = _container("ray-worker", f"{cluster.image}:{cluster.tag}-cuda", "8", "32Gi", 1, env)
    return _pod(c, [("metrics", RAY_METRICS_PORT)], gpu=True)


def rayservice(catalog: Catalog, cluster: Cluster) -> dict[str, Any]:
    minimum = len(plan_placement(catalog, cluster.gpus, cluster.gpu_memory_gb).gpus)
    env = pod_env(catalog, cluster)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": SERVICE},
        "spec": {
            "serveConfigV2": _yaml(serve_config(catalog, cluster)),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    # the head runs the control plane (proxy, gateway, scheduler), no GPU work
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
                    "template": head_pod_template(cluster, env),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu",
                        "replicas": minimum,
                        "minReplicas": minimum,
                        "maxReplicas": cluster.gpus,
                        "rayStartParams": {},
                        "template": gpu_worker_pod_template(cluster, env),
                    }
                ],
            },
        },
    }


def dockerfile(variant: str) -> str:
    if variant not in VARIANTS:
        raise RenderError(f"unknown Dockerfile variant {variant!r}; known: {', '.join(VARIANTS)}")
    base = f"rayproject/ray:{RAY_VERSION}-py311" + ("-gpu" if variant == "cuda" else "")
    extras = "[gpu]" if variant == "cuda" else ""
    torch_note = (
        "# torch from the default index: its Linux wheels carry CUDA."
        if variant == "cuda"
        else "# CPU image: pass --build-arg TORCH_INDEX_URL=<a CPU wheel index> for a small torch."
    )
    return f"""# Rendered by `genmedia render dockerfile --variant {variant}`; do not edit.
# genmedia image ({variant}): Ray {RAY_VERSION} + genmedia; the same image runs head and workers.
FROM {base}
ARG TORCH_INDEX_URL=""
ENV GENMEDIA_HOME=/var/cache/genmedia \\
    HF_HUB_DISABLE_PROGRESS_BARS=1 \\
    PYTHONUNBUFFERED=1
WORKDIR /opt/genmedia
{torch_note}
RUN pip install --no-cache-dir ${{TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL}} "{TORCH_PIN}"
COPY pyproject.toml README.md ARCHITECTURE.md ./
COPY deployments deployments
COPY models models
COPY genmedia_kernels genmedia_kernels
COPY autoscaling autoscaling
COPY infra infra
COPY loadtests loadtests
COPY client client
RUN pip install --no-cache-dir ".{extras}"
EXPOSE {SERVE_PORT} {RAY_METRICS_PORT}
CMD ["genmedia", "--help"]
"""


def prometheus(
    genmedia_targets: list[str] | None = None,
    ray_targets: list[str] | None = None,
    scrape_interval_s: float = 15.0,
    credentials_file: str | None = METRICS_CREDENTIALS_FILE,
) -> dict[str, Any]:
    """Scrape genmedia's /metrics (gateway + scheduler) and Ray's metrics export. genmedia's
    /metrics needs an admin tenant's key (unless ``server.metrics.public``): Prometheus sends
    the key it reads from ``credentials_file`` as a Bearer token (None: no key, for a catalog
    whose metrics are public)."""
    interval = f"{scrape_interval_s:g}s"
    genmedia: dict[str, Any] = {"job_name": "genmedia", "metrics_path": "/metrics"}
    if credentials_file is not None:
        genmedia["authorization"] = {"type": "Bearer", "credentials_file": credentials_file}
    genmedia["static_configs"] = [
        {"targets": genmedia_targets or [f"{SERVICE}-serve-svc:{SERVE_PORT}"]}
    ]
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            genmedia,
            {
                "job_name": "ray",
                "static_configs": [
                    {"targets": ray_targets or [f"{SERVICE}-head-svc:{RAY_METRICS_PORT}"]}
                ],
            },
        ],
    }


DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _panel(
    pid: int, title: str, unit: str, exprs: list[tuple[str, str]], x: int, y: int
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "id": pid,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def _quantiles(metric: str, by: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[$__rate_interval])))",
            f"p{round(q * 100)} {{{{{by.replace(', ', '}} {{')}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


Panel = tuple[str, str, list[tuple[str, str]]]  # title, unit, (PromQL, legend) per series


def _grafana_panels() -> list[Panel]:
    return [
        (
            "Queue depth per model and class",
            "short",
            [
                ("sum by (model, priority) (genmedia_queue_depth)", "{{model}} {{priority}}"),
                ("sum(genmedia_jobs_running)", "running"),
            ],
        ),
        ("Queue wait per class", "s", _quantiles("genmedia_queue_seconds", "priority")),
        ("Request latency per model", "s", _quantiles("genmedia_request_seconds", "model")),
        ("Compute time per call", "s", _quantiles("genmedia_compute_seconds", "model")),
        ("Batch size (images per call)", "short", _quantiles("genmedia_batch_size", "model")),
        (
            "GPU share per model",
            "short",
            [
                ("sum by (model) (genmedia_model_gpu_share)", "{{model}}"),
            ],
        ),
        (
            "Requests by status and refusals",
            "reqps",
            [
                (
                    "sum by (model, status) (rate(genmedia_requests_total[$__rate_interval]))",
                    "{{model}} {{status}}",
                ),
                (
                    "sum by (reason) (rate(genmedia_rejected_total[$__rate_interval]))",
                    "refused: {{reason}}",
                ),
            ],
        ),
        (
            "Per-tenant usage: compute seconds and images",
            "short",
            [
                (
                    "sum by (tenant) (rate(genmedia_tenant_compute_seconds_total"
                    "[$__rate_interval]))",
                    "{{tenant}} compute s/s",
                ),
                (
                    "sum by (tenant) (rate(genmedia_tenant_images_total[$__rate_interval]))",
                    "{{tenant}} images/s",
                ),
            ],
        ),
    ]


def grafana() -> dict[str, Any]:
    return {
        "uid": "genmedia-serving",
        "title": "genmedia serving",
        "tags": ["genmedia"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [{"type": "datasource", "name": "datasource", "query": "prometheus"}]
        },
        "panels": [
            _panel(i + 1, title, unit, exprs, 12 * (i % 2), 8 * (i // 2))
            for i, (title, unit, exprs) in enumerate(_grafana_panels())
        ],
    }


def _days(hours: float) -> int:
    """Whole days an S3 expiration needs to keep an object at least ``hours``."""
    return max(1, math.ceil(hours / 24.0))


def s3_lifecycle(catalog: Catalog) -> dict[str, Any]:
    """The bucket's lifecycle rules for the catalog's retention (S3 storage only). Expiration
    counts from an object's creation and S3 rounds up to the next midnight UTC, so each rule
    keeps a file at least as long as the sweeper does: outputs as long as their job's
    outputs, inputs as long as a job may live (queued ones still need theirs), uploads their
    own time."""
    storage = catalog.server.storage
    if not isinstance(storage, S3Storage):
        raise RenderError(
            "s3-lifecycle needs server.storage.kind 's3' (this catalog stores files locally; "
            "the scheduler's sweeper deletes them)"
        )
    from genmedia.deployments.store.storage import INPUTS, LIFECYCLE_TAG, OUTPUTS, UPLOADS

    r = catalog.server.retention
    prefix = storage.prefix.strip("/")
    prefix = f"{prefix}/" if prefix else ""
    days = {
        OUTPUTS: _days(min(r.outputs_hours, r.jobs_hours)),
        INPUTS: _days(r.jobs_hours),
        UPLOADS: _days(r.uploads_hours),
    }

    def rule(cls: str) -> dict[str, Any]:
        tag = {"Key": LIFECYCLE_TAG, "Value": cls}
        return {
            "ID": f"genmedia-{cls}",
            "Filter": {"And": {"Prefix": prefix, "Tags": [tag]}},
            "Status": "Enabled",
            "Expiration": {"Days": days[cls]},
        }

    return {
        "Rules": [
            *(rule(c) for c in (OUTPUTS, INPUTS, UPLOADS)),
            {
                "ID": "genmedia-incomplete-uploads",
                "Filter": {"Prefix": prefix},
                "Status": "Enabled",
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            },
        ]
    }


def render(
    target: str, catalog: Catalog, cluster: Cluster | None = None, variant: str = "cpu"
) -> str:
    """The text of one artifact; RenderError for an unknown target or variant."""
    cluster = cluster or Cluster(gpus_for_max(catalog, 24.0))
    catalog = deployed_catalog(catalog, cluster)
    if target == "serve-config":
        return "# Rendered by `genmedia render serve-config`; do not edit.\n" + _yaml(
            serve_config(catalog, cluster)
        )
    if target == "kuberay":
        return "# Rendered by `genmedia render kuberay`; do not edit.\n" + _yaml(
            rayservice(catalog, cluster)
        )
    if target == "dockerfile":
        return dockerfile(variant)
    if target == "prometheus":
        key = None if catalog.server.metrics.public else METRICS_CREDENTIALS_FILE
        return "# Rendered by `genmedia render prometheus`; do not edit.\n" + _yaml(
            prometheus(credentials_file=key)
        )
    if target == "grafana":
        return json.dumps(grafana(), indent=2) + "\n"
    if target == "s3-lifecycle":
        return json.dumps(s3_lifecycle(catalog), indent=2) + "\n"
    raise RenderError(f"unknown render target {target!r}; known: {', '.join(TARGETS)}")


FILES = {
    "serve-config.yaml": ("serve-config", "cpu"),
    "rayservice.yaml": ("kuberay", "cpu"),
    "Dockerfile.cpu": ("dockerfile", "cpu"),
    "Dockerfile.cuda": ("dockerfile", "cuda"),
    "prometheus.yml": ("prometheus", "cpu"),
    "grafana-dashboard.json": ("grafana", "cpu"),
}


def render_all(catalog: Catalog, cluster: Cluster | None = None) -> dict[str, str]:
    """Every artifact by its file name under ``infra/`` (``s3-lifecycle.json`` when the
    catalog stores files in S3)."""
    files = {name: render(t, catalog, cluster, v) for name, (t, v) in FILES.items()}
    if isinstance(catalog.server.storage, S3Storage):
        files["s3-lifecycle.json"] = render("s3-lifecycle", catalog, cluster)
    return files
