"""Deploy-time checks of a catalog's weights, before anything is sent to Ray.

``genmedia serve`` and ``genmedia deploy`` run these so that a catalog pointing at missing or
unsafe weights fails at once, naming the model and the path, instead of as a replica that never
starts. ``tiny://`` models are built here when missing (with progress). No Ray imports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from genmedia.models.catalog import Catalog


@dataclass(frozen=True)
class WeightsIssue:
    model_id: str
    source: str
    message: str

    def __str__(self) -> str:
        what = self.source if self.source.startswith("acceleration.") else f"weights {self.source}"
        return f"model {self.model_id!r}: {what}: {self.message}"


def _check_s3(source: str, endpoint_url: str | None) -> str | None:
    import boto3

    from genmedia.models.weights import PICKLE_SUFFIXES

    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    endpoint = endpoint_url or os.environ.get("GENMEDIA_S3_ENDPOINT_URL") or None
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        page = client.list_objects_v2(
            Bucket=bucket, Prefix=prefix.rstrip("/") + "/" if prefix else "", MaxKeys=1000
        )
    except Exception as e:
        return f"cannot list s3://{bucket}/{prefix}: {e}"
    keys = [o["Key"] for o in page.get("Contents", [])]
    if not keys:
        return f"no objects under s3://{bucket}/{prefix}"
    bad = [k for k in keys if k.lower().endswith(PICKLE_SUFFIXES)]
    if bad:
        return f"refusing pickle-format weight file s3://{bucket}/{bad[0]}: safetensors only"
    if not any(k.endswith(".safetensors") for k in keys):
        return f"no .safetensors files under s3://{bucket}/{prefix}"
    return None


def check_acceleration(catalog: Catalog, device: str) -> list[WeightsIssue]:
    """Acceleration options a model asks for that this device cannot run (deploy time)."""
    from genmedia.kernels.options import check_options

    issues = []
    for m in catalog.models:
        for field, message in check_options(m.family, m.acceleration, device, m.dtype):
            issues.append(WeightsIssue(m.id, f"acceleration.{field}", message))
    return issues


def check_weights(
    catalog: Catalog,
    *,
    build_tiny: bool = True,
    on_model: Callable[[str, str], None] | None = None,
) -> list[WeightsIssue]:
    """Every weights problem of the catalog; ``on_model(model_id, source)`` follows each check."""
    from genmedia.models.weights import WeightsError, resolve_source

    issues: list[WeightsIssue] = []
    checked: dict[str, str | None] = {}
    for m in catalog.models:
        if m.weights in checked:
            problem = checked[m.weights]
        elif m.weights.startswith("s3://"):
            problem = _check_s3(m.weights, None)
        else:
            source = m.weights
            if "://" not in source:
                source = str(catalog.resolve_path(source))
            elif source.startswith("file://"):
                source = str(catalog.resolve_path(source.removeprefix("file://")))
            try:
                resolve_source(source, build_missing_tiny=build_tiny)
                problem = None
            except (WeightsError, ValueError) as e:
                problem = str(e)
        checked[m.weights] = problem
        if on_model:
            on_model(m.id, m.weights)
        if problem:
            issues.append(WeightsIssue(m.id, m.weights, problem))
    return issues
