"""LoRA adapters and image-to-image / inpainting on the tiny SD1.5-style model, without Ray:
the key check against a base model, the per-model adapter cache (LRU, pinning, switching without
reloading), reproducibility with adapters, and the task pipelines sharing the base modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from genmedia.models import registry
from genmedia.models.catalog import parse_catalog
from genmedia.models.lora import (
    AdapterCache,
    AdapterError,
    build_tiny_adapter,
    check_adapter,
    check_keys,
    read_header,
    resolve_adapter_file,
)
from genmedia.models.params import AdapterUse, GenerateRequest, resolve_request
from genmedia.models.runner import load_model, run_batch

MB = 1 << 20


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("lora-home")


@pytest.fixture(scope="module")
def model(home):
    path = home / "sd15"
    registry.family_module("sd15").build_tiny(path, seed=0)
    catalog = parse_catalog(
        {
            "models": [
                {
                    "id": "m",
                    "family": "sd15",
                    "weights": str(path),
                    "max_loaded_adapters": 2,
                    "parameters": {
                        "width": {"default": 64, "min": 32, "max": 128},
                        "height": {"default": 64, "min": 32, "max": 128},
                        "steps": {"default": 3, "min": 1, "max": 10},
                        "num_images": {"default": 1, "min": 1, "max": 4},
                    },
                }
            ]
        }
    )
    return load_model(catalog.models[0], path, "cpu")


@pytest.fixture(scope="module")
def adapters(model, home):
    """Three random adapters for the tiny model (built with peft, saved as safetensors)."""
    return {
        name: build_tiny_adapter(model.pipe, "sd15", home / f"{name}.safetensors", seed=i)
        for i, name in enumerate(("a", "b", "c"))
    }


def _job(model, *, loras=(), seed=7, **extra):
    req = GenerateRequest(prompt="a cat", seed=seed, loras=list(loras), **extra)
    job, errors = resolve_request(model.entry, req, request_id=f"r{seed}")
    assert not errors, errors
    return job


def _run(model, job, files: dict, inputs=None):
    uses = [AdapterUse(a, w, str(files.get(a, ""))) for a, w in job.params.adapters]
    model.adapters.ensure(model.pipe, {u.id: files[u.id] for u in uses}, set())
    model.adapters.activate(model.pipe, uses)
    return run_batch(model, [job], inputs=inputs)[0][0]


def test_tiny_adapter_fits_its_base_model(model, adapters):
    path, info = check_adapter(model.pipe, "sd15", str(adapters["a"]), max_bytes=10 * MB)
    assert path == adapters["a"]
    assert info["rank"] == 4 and info["tensors"] > 0 and len(info["sha256"]) == 64


def test_adapter_of_another_base_model_is_refused(model, home):
    flux = registry.family_module("flux")
    flux.build_tiny(home / "flux", seed=0)
    fpipe = flux.load_pipeline(home / "flux")
    other = build_tiny_adapter(fpipe, "flux", home / "flux-lora.safetensors")
    with pytest.raises(AdapterError, match=r"does not fit the base model.*component"):
        check_adapter(model.pipe, "sd15", str(other), max_bytes=10 * MB)


def test_wrong_shapes_and_unknown_modules_are_named(model, adapters):
    shapes = read_header(adapters["a"], 10 * MB)
    key = next(k for k in shapes if k.endswith("lora_A.weight"))
    bad = dict(shapes)
    bad[key] = (4, 999)
    bad["unet.no_such_block.to_q.lora_A.weight"] = (4, 8)
    bad["not_a_lora_key"] = (1,)
    problems = check_keys(model.pipe, "sd15", bad)
    text = "\n".join(problems)
    assert "does not match in_features" in text
    assert "has no module unet.no_such_block.to_q" in text
    assert "not a LoRA weight key" in text


def test_non_safetensors_oversized_and_corrupt_files(tmp_path, adapters):
    pickle_file = tmp_path / "adapter.bin"
    pickle_file.write_bytes(b"\x80\x04")
    with pytest.raises(AdapterError, match=r"must be a \.safetensors file"):
        resolve_adapter_file(str(pickle_file), max_bytes=MB)
    with pytest.raises(AdapterError, match="the limit is 100"):
        resolve_adapter_file(str(adapters["a"]), max_bytes=100)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    with pytest.raises(AdapterError, match="not a valid safetensors file"):
        read_header(corrupt, MB)
    with pytest.raises(AdapterError, match="does not exist"):
        resolve_adapter_file(str(tmp_path / "missing.safetensors"), max_bytes=MB)
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    assert check_keys(None, "sd15", read_header(empty, MB)) == ["the file has no tensors"]


def test_adapters_change_output_and_switching_is_exact(model, adapters):
    base = _run(model, _job(model), adapters)
    with_a = _run(model, _job(model, loras=[{"id": "a", "scale": 1.0}]), adapters)
    with_b = _run(model, _job(model, loras=[{"id": "b", "scale": 1.0}]), adapters)
    assert not np.array_equal(base, with_a) and not np.array_equal(with_a, with_b)
    # back and forth: same seed + adapters + scales = same output, base model never reloaded
    again_a = _run(model, _job(model, loras=[{"id": "a", "scale": 1.0}]), adapters)
    again_base = _run(model, _job(model), adapters)
    np.testing.assert_array_equal(with_a, again_a)
    np.testing.assert_array_equal(base, again_base)
    half = _run(model, _job(model, loras=[{"id": "a", "scale": 0.5}]), adapters)
    assert not np.array_equal(half, with_a)
    both = _run(
        model,
        _job(model, loras=[{"id": "a", "scale": 1.0}, {"id": "b", "scale": 1.0}]),
        adapters,
    )
    assert not np.array_equal(both, with_a) and not np.array_equal(both, with_b)


def test_cache_replaces_least_recently_used_but_never_a_pinned_adapter(model, adapters):
    fresh = load_model(model.entry, model.entry.weights and _weights(model), "cpu")
    pipe = fresh.pipe
    cache = AdapterCache(capacity=2, max_rank=8)
    files = dict(adapters)
    cache.ensure(pipe, {"a": files["a"]}, set())
    cache.ensure(pipe, {"b": files["b"]}, set())
    assert (cache.slot_of("a"), cache.slot_of("b")) == ("slot0", "slot1")
    cache.ensure(pipe, {"c": files["c"]}, pinned={"a"})  # a is in use by a paused call
    assert list(cache.loaded) == ["a", "c"] and cache.slot_of("c") == "slot1"
    assert cache.hotswaps == 1 and cache.evictions == 1  # b's slot took c without injection
    cache.ensure(pipe, {"a": files["a"]}, set())  # loaded already: no load
    assert cache.loads == 3
    cache.ensure(pipe, {"b": files["b"]}, pinned={"a", "c"})  # all pinned: a third slot
    assert set(cache.loaded) == {"a", "b", "c"} and cache.slot_of("b") == "slot2"
    # the hot-swapped slot computes what a freshly injected adapter computes
    job = _job(fresh, loras=[{"id": "c", "scale": 1.0}])
    cache.activate(pipe, [AdapterUse("c", 1.0, "")])
    swapped = run_batch(fresh, [job])[0][0]
    np.testing.assert_array_equal(swapped, _run(model, job, adapters))


def _weights(model):
    return model.entry.weights


def _picture(size=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))


def test_image_to_image_shares_modules_and_follows_strength(model):
    img = _picture()
    low = _job(model, image="x", strength=0.2, num_inference_steps=10)
    high = _job(model, image="x", strength=1.0, num_inference_steps=10)
    assert low.params.task == "image-to-image" and low.params.strength == 0.2
    assert model.task_pipe("image-to-image").unet is model.pipe.unet  # no second copy
    out_low = run_batch(model, [low], inputs=[{"image": img}])[0][0]
    out_high = run_batch(model, [high], inputs=[{"image": img}])[0][0]
    src = np.asarray(img, dtype=np.float32)
    assert out_low.shape == (64, 64, 3)
    assert np.abs(out_low - src).mean() < np.abs(out_high - src).mean()


def test_inpainting_keeps_the_black_part_of_the_mask(model):
    img = _picture(seed=1)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255  # repaint the right half
    job = _job(model, image="x", mask_image="m", strength=1.0)
    assert job.params.task == "inpainting"
    out = run_batch(model, [job], inputs=[{"image": img, "mask": Image.fromarray(mask)}])[0][0]
    src = np.asarray(img, dtype=np.float32)
    kept = np.abs(out[:, :24] - src[:, :24]).mean()
    repainted = np.abs(out[:, 40:] - src[:, 40:]).mean()
    assert kept < repainted


def test_task_pipes_are_built_once(model):
    assert model.task_pipe("inpainting") is model.task_pipe("inpainting")
    assert model.task_pipe("text-to-image") is model.pipe
    with torch.inference_mode():
        assert model.call_view("euler", "inpainting").unet is model.pipe.unet
