"""S3 lifecycle rules rendered from the catalog's retention, checked by moto's S3 (the bucket
API's own validation offline), and refused for local storage."""

from __future__ import annotations

import json

import pytest

from genmedia.infra import render as r
from genmedia.models.catalog import load_catalog, parse_catalog


def s3_catalog(**retention):
    data = load_catalog().model_dump(mode="json", exclude_none=True)
    data["server"]["storage"] = {"kind": "s3", "bucket": "media", "prefix": "out"}
    data["server"]["retention"] = {**data["server"]["retention"], **retention}
    return parse_catalog(data, "catalog.yaml")


def test_rules_follow_the_retention_by_class():
    rules = r.s3_lifecycle(s3_catalog(outputs_hours=7 * 24, uploads_hours=1))["Rules"]
    by_id = {rule["ID"]: rule for rule in rules}
    assert by_id["genmedia-outputs"]["Expiration"] == {"Days": 7}
    assert by_id["genmedia-uploads"]["Expiration"] == {"Days": 1}  # at least a day
    assert by_id["genmedia-inputs"]["Expiration"] == {"Days": 30}  # queued jobs need theirs
    tag = by_id["genmedia-uploads"]["Filter"]["And"]
    assert tag["Prefix"] == "out/" and tag["Tags"] == [
        {"Key": "genmedia-class", "Value": "uploads"}
    ]


def test_render_all_adds_the_file_for_s3_only_and_the_bucket_accepts_it():
    files = r.render_all(s3_catalog())
    assert "s3-lifecycle.json" in files and "s3-lifecycle.json" not in r.render_all(load_catalog())
    moto = pytest.importorskip("moto")
    with moto.mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="media")
        s3.put_bucket_lifecycle_configuration(
            Bucket="media", LifecycleConfiguration=json.loads(files["s3-lifecycle.json"])
        )
        got = s3.get_bucket_lifecycle_configuration(Bucket="media")["Rules"]
    assert len(got) == 4


def test_local_storage_has_no_lifecycle():
    with pytest.raises(r.RenderError, match=r"server\.storage\.kind 's3'"):
        r.render("s3-lifecycle", load_catalog())
