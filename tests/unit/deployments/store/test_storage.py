"""Storage listing and deletion (local and S3 through moto), lifecycle tags, a full disk."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from genmedia.deployments.store.outputs import store_outputs
from genmedia.deployments.store.storage import (
    LIFECYCLE_TAG,
    LocalDirStorage,
    S3BucketStorage,
    StorageFull,
    key_class,
)
from genmedia.models.catalog import S3Storage, load_catalog
from genmedia.models.params import GenerateRequest, resolve_request


def test_local_list_delete_and_children(tmp_path):
    s = LocalDirStorage(tmp_path)
    s.put("t/uploads/u.png", b"12345", "image/png")
    s.put("t/2026/12/03/r1/0.png", b"abc", "image/png")
    s.put("u/inputs/r2/image", b"x", "application/octet-stream")
    assert s.children("") == ["t", "u"] and s.children("t/") == ["2026", "uploads"]
    listed = {o.key: o.size for o in s.list_files("t/")}
    assert listed == {"t/uploads/u.png": 5, "t/2026/12/03/r1/0.png": 3}
    assert [o.key for o in s.list_files("missing/")] == []
    assert s.delete("t/2026/12/03/r1/0.png") and not s.delete("t/2026/12/03/r1/0.png")
    assert not (tmp_path / "t" / "2026").exists()  # empty folders go with the last file
    assert (tmp_path / "t" / "uploads").is_dir()
    with pytest.raises(ValueError):
        list(s.list_files("../"))


def test_key_classes():
    assert key_class("t/uploads/upl_1.png") == "uploads"
    assert key_class("t/inputs/r/image") == "inputs"
    assert key_class("t/2026/12/03/r/0.png") == "outputs"
    assert key_class("_loras/sha256-ab.safetensors") == "adapters"  # no lifecycle rule


def test_a_full_disk_is_storage_full_and_leaves_no_temp_file(tmp_path, monkeypatch):
    s = LocalDirStorage(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageFull, match="no space left"):
        s.put("t/uploads/u.png", b"x", "image/png")
    assert [p.name for p in (tmp_path / "t" / "uploads").iterdir()] == []


class FullAfter:
    """A storage that accepts ``n`` writes, then fails with ENOSPC."""

    def __init__(self, inner: LocalDirStorage, n: int):
        self.inner, self.n = inner, n

    def put(self, key, data, content_type):
        if self.n <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.n -= 1
        self.inner.put(key, data, content_type)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_outputs_of_a_job_that_cannot_be_stored_are_all_removed(tmp_path):
    catalog = load_catalog()
    job, errors = resolve_request(
        catalog.model("sd15-tiny"), GenerateRequest(prompt="x", num_images=2), request_id="r1"
    )
    assert not errors and job is not None
    local = LocalDirStorage(tmp_path)
    pixels = [np.zeros((8, 8, 3), np.uint8)] * 2
    with pytest.raises(OSError) as e:
        store_outputs(FullAfter(local, 3), job, pixels, prefix="t/", extra={}, now=0)
    assert e.value.errno == errno.ENOSPC
    assert list(local.list_files("")) == []  # the three files written were deleted


@pytest.fixture
def s3():
    moto = pytest.importorskip("moto")
    with moto.mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="media")
        yield S3BucketStorage(S3Storage(bucket="media", prefix="out", region="us-east-1"))


def test_s3_tags_lists_and_deletes(s3):
    s3.put("t/uploads/u.png", b"12345", "image/png")
    s3.put("t/2026/12/03/r1/0.png", b"abc", "image/png")
    s3.put("u/inputs/r2/image", b"x", "application/octet-stream")
    tags = s3.client.get_object_tagging(Bucket="media", Key="out/t/uploads/u.png")["TagSet"]
    assert tags == [{"Key": LIFECYCLE_TAG, "Value": "uploads"}]
    assert s3.children("") == ["t", "u"] and s3.children("t/") == ["2026", "uploads"]
    assert {o.key: o.size for o in s3.list_files("t/")} == {
        "t/uploads/u.png": 5,
        "t/2026/12/03/r1/0.png": 3,
    }
    assert all(o.modified > 0 for o in s3.list_files(""))
    assert s3.delete("t/uploads/u.png") and not s3.delete("t/uploads/u.png")
    assert s3.get("t/uploads/u.png") is None
