"""S3 weight sources against a local moto server (no AWS, no Ray).

Covers what a family worker does at replica start for an ``s3://`` catalog entry: mirror the
prefix locally, skip unchanged objects on the next start, refuse pickle weights before
downloading anything, then load and run the pipeline from the mirror.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from genmedia.models import sd15, weights
from genmedia.models.weights import WeightsError, resolve_source

moto_server = pytest.importorskip("moto.server")

BUCKET = "genmedia-weights"
PREFIX = "models/sd15-tiny"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        mp.delenv("GENMEDIA_S3_ENDPOINT_URL", raising=False)
        werkzeug_log = logging.getLogger("werkzeug")  # moto logs every request at INFO
        old_level = werkzeug_log.level
        werkzeug_log.setLevel(logging.WARNING)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()
            werkzeug_log.setLevel(old_level)


@pytest.fixture(scope="module")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-src") / "sd15"
    sd15.build_tiny(path)
    return path


@pytest.fixture
def s3(s3_endpoint: str):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GENMEDIA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _upload_tree(s3, bucket: str, root: Path, prefix: str) -> list[str]:
    keys = []
    for f in sorted(root.rglob("*")):
        if f.is_file():
            key = f"{prefix}/{f.relative_to(root).as_posix()}"
            s3.upload_file(str(f), bucket, key)
            keys.append(key)
    return keys


def _fresh_bucket(s3, name: str) -> None:
    s3.create_bucket(Bucket=name)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()}


def test_resolve_download_load_generate_and_cache(
    s3, s3_endpoint: str, tiny_sd15: Path, home: Path
) -> None:
    _fresh_bucket(s3, BUCKET)
    keys = _upload_tree(s3, BUCKET, tiny_sd15, PREFIX)
    # A sibling prefix sharing the name's beginning must not be mirrored (nor refused).
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}-old/unet/model.ckpt", Body=b"pickle")

    messages: list[str] = []
    path = resolve_source(
        f"s3://{BUCKET}/{PREFIX}", progress=messages.append, s3_endpoint_url=s3_endpoint
    )
    assert path == home / "s3" / BUCKET / PREFIX
    assert len([m for m in messages if m.startswith("downloading")]) == len(keys)
    for key in keys:
        rel = key[len(PREFIX) + 1 :]
        assert (path / rel).read_bytes() == (tiny_sd15 / rel).read_bytes()
    manifest = json.loads((path / weights.S3_MANIFEST).read_text())
    assert set(manifest["objects"]) == {k[len(PREFIX) + 1 :] for k in keys}

    pipe = sd15.load_pipeline(path)
    images = pipe(
        prompt=["a photo of a cat"],
        width=64,
        height=64,
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(0)],
        output_type="np",
        **sd15.call_kwargs(guidance_scale=5.0, negative_prompts=None),
    ).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()

    # Second resolve: nothing downloaded, files untouched.
    before = _mtimes(path)
    messages.clear()
    assert (
        resolve_source(
            f"s3://{BUCKET}/{PREFIX}/", progress=messages.append, s3_endpoint_url=s3_endpoint
        )
        == path
    )
    assert messages == []
    assert _mtimes(path) == before

    # A changed object is downloaded again, alone; the endpoint can come from the environment.
    changed = f"{PREFIX}/scheduler/scheduler_config.json"
    config = json.loads((tiny_sd15 / "scheduler" / "scheduler_config.json").read_text())
    config["steps_offset"] = 1
    config["_comment"] = "changed"
    s3.put_object(Bucket=BUCKET, Key=changed, Body=json.dumps(config).encode())
    messages.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENMEDIA_S3_ENDPOINT_URL", s3_endpoint)
        resolve_source(f"s3://{BUCKET}/{PREFIX}", progress=messages.append)
    assert [m for m in messages if m.startswith("downloading")] == [
        m for m in messages if changed in m
    ]
    assert len(messages) == 1
    assert json.loads((path / "scheduler" / "scheduler_config.json").read_text())["_comment"]
    after = _mtimes(path)
    assert {k for k in after if after[k] != before.get(k)} == {
        "scheduler/scheduler_config.json",
        weights.S3_MANIFEST,
    }


def test_pickle_key_is_refused_before_download(
    s3, s3_endpoint: str, tiny_sd15: Path, home: Path
) -> None:
    bucket = "genmedia-pickles"
    _fresh_bucket(s3, bucket)
    _upload_tree(s3, bucket, tiny_sd15, "sd15")
    s3.put_object(Bucket=bucket, Key="sd15/unet/diffusion_pytorch_model.ckpt", Body=b"pickle")
    messages: list[str] = []
    with pytest.raises(WeightsError) as excinfo:
        resolve_source(f"s3://{bucket}/sd15", progress=messages.append, s3_endpoint_url=s3_endpoint)
    assert "sd15/unet/diffusion_pytorch_model.ckpt" in str(excinfo.value)
    assert messages == []
    downloaded = home / "s3" / bucket
    assert not downloaded.exists() or not [p for p in downloaded.rglob("*") if p.is_file()]


def test_empty_prefix_and_missing_bucket(s3, s3_endpoint: str, home: Path) -> None:
    bucket = "genmedia-empty"
    _fresh_bucket(s3, bucket)
    with pytest.raises(WeightsError, match="no \\*\\.safetensors objects"):
        resolve_source(f"s3://{bucket}/nothing/here", s3_endpoint_url=s3_endpoint)
    with pytest.raises(WeightsError, match="cannot list s3://no-such-bucket/x"):
        resolve_source("s3://no-such-bucket/x", s3_endpoint_url=s3_endpoint)


def test_outputs_and_sidecars_go_to_an_s3_bucket(s3, s3_endpoint: str) -> None:
    """server.storage.kind = s3: the worker's writes, the gateway's reads and presigned URLs."""
    import httpx
    import numpy as np

    from genmedia.deployments.store.outputs import store_outputs
    from genmedia.deployments.store.storage import S3BucketStorage
    from genmedia.models.catalog import S3Storage, load_catalog
    from genmedia.models.params import GenerateRequest, resolve_request

    _fresh_bucket(s3, "genmedia-outputs")
    storage = S3BucketStorage(
        S3Storage(
            bucket="genmedia-outputs", prefix="out", endpoint_url=s3_endpoint, region="us-east-1"
        )
    )
    entry = load_catalog().model("sd15-tiny")
    job, _ = resolve_request(
        entry, GenerateRequest(prompt="fox", seed=9, num_images=2), request_id="r1"
    )
    pixels = [np.full((64, 64, 3), v, np.uint8) for v in (10, 20)]
    stored = store_outputs(storage, job, pixels, prefix="dev/", extra={}, now=0.0)
    assert [s.key for s in stored] == ["dev/1970/01/01/r1/0.png", "dev/1970/01/01/r1/1.png"]
    head = s3.head_object(Bucket="genmedia-outputs", Key="out/dev/1970/01/01/r1/0.png")
    assert head["ContentType"] == "image/png"
    sidecar = storage.get("dev/1970/01/01/r1/1.json")
    assert b'"seed": 10' in sidecar
    assert storage.get("dev/1970/01/01/r1/9.png") is None
    url = storage.url(stored[0].key, "http://unused")
    got = httpx.get(url)  # presigned GET against the endpoint
    assert got.status_code == 200 and got.content == storage.get(stored[0].key)
    with pytest.raises(ValueError):
        storage.put("../escape.png", b"x", "image/png")


def test_lora_adapter_from_s3(s3, s3_endpoint, home, tiny_sd15, tmp_path):
    """An adapter registered from s3:// is downloaded once (size checked first), then checked
    against the base model like a local one."""
    from genmedia.models.lora import (
        AdapterError,
        adapter_cache_dir,
        build_tiny_adapter,
        check_adapter,
        resolve_adapter_file,
    )

    pipe = sd15.load_pipeline(tiny_sd15)
    local = build_tiny_adapter(pipe, "sd15", tmp_path / "style.safetensors", seed=3)
    s3.create_bucket(Bucket="genmedia-loras")
    s3.upload_file(str(local), "genmedia-loras", "loras/style.safetensors")
    s3.put_object(Bucket="genmedia-loras", Key="loras/style.bin", Body=b"\x80\x04")
    source = "s3://genmedia-loras/loras/style.safetensors"

    with pytest.raises(AdapterError, match="the limit is 100"):
        resolve_adapter_file(source, max_bytes=100, s3_endpoint_url=s3_endpoint)
    assert not list(adapter_cache_dir().rglob("*.safetensors"))  # refused before downloading

    path, info = check_adapter(pipe, "sd15", source, max_bytes=1 << 24, s3_endpoint_url=s3_endpoint)
    assert path.read_bytes() == local.read_bytes() and info["rank"] == 4
    assert resolve_adapter_file(source, max_bytes=1 << 24, s3_endpoint_url=s3_endpoint) == path

    with pytest.raises(AdapterError, match=r"must be a \.safetensors file"):
        resolve_adapter_file("s3://genmedia-loras/loras/style.bin", max_bytes=1 << 24)
    with pytest.raises(AdapterError, match="cannot read"):
        resolve_adapter_file(
            "s3://genmedia-loras/loras/missing.safetensors",
            max_bytes=1 << 24,
            s3_endpoint_url=s3_endpoint,
        )
