"""Unit tests for the tiny sd15 / sdxl / flux checkpoints and their pipeline adapters.

Each family is built and loaded once per module; generations are 64x64 with 2 steps on CPU.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from genmedia.models import registry, weights
from genmedia.models.weights import WeightsError

FAMILIES = ["sd15", "sdxl", "flux"]
NON_ASCII = "Zürich café — naïve 東京 🐱 привет, ÅNGSTRÖM"


@pytest.fixture(scope="module", params=FAMILIES)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    module = registry.family_module(family)
    path = tmp_path_factory.mktemp(f"tiny-{family}") / "ckpt"
    module.build_tiny(path, seed=0)
    pipe = module.load_pipeline(path)
    return module, path, pipe


def _generate(module: ModuleType, pipe, seeds: list[int], steps: int = 2, **extra) -> np.ndarray:
    size = module.DEFAULT_SIZE
    kwargs = module.call_kwargs(guidance_scale=3.5, negative_prompts=extra.pop("negatives", None))
    return pipe(
        prompt=[f"a photo of a cat, number {s}" for s in seeds],
        width=size,
        height=size,
        num_inference_steps=steps,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="np",
        **kwargs,
        **extra,
    ).images


def _safetensors_digests(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*.safetensors"))
    }


def test_interface(built) -> None:
    module, _, pipe = built
    assert module.FAMILY in FAMILIES
    assert isinstance(pipe, module.PIPELINE_CLASS)
    assert module.DEFAULT_SCHEDULER in module.SCHEDULERS
    assert module.DEFAULT_SIZE % module.SIZE_MULTIPLE == 0
    assert pipe.vae_scale_factor == 8
    packing = 2 if module.FAMILY == "flux" else 1  # flux packs 2x2 latent patches
    assert pipe.vae_scale_factor * packing == module.SIZE_MULTIPLE
    assert type(pipe.scheduler) is module.SCHEDULERS[module.DEFAULT_SCHEDULER]
    # The spec the gateway validates requests with is the module's own, and agrees with it.
    spec = registry.family_spec(module.FAMILY)
    assert spec is module.SPEC and registry.FAMILY_MODULES[spec.name] == module.__name__
    assert set(spec.schedulers) == set(module.SCHEDULERS)
    assert spec.default_scheduler == module.DEFAULT_SCHEDULER
    assert spec.size_multiple == module.SIZE_MULTIPLE


def test_generate_one_image(built) -> None:
    module, _, pipe = built
    steps_seen: list[int] = []

    def on_step_end(_pipe, step, _timestep, tensors):
        steps_seen.append(step)
        return tensors

    images = _generate(module, pipe, [0], callback_on_step_end=on_step_end)
    assert images.shape == (1, 64, 64, 3)
    assert images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    assert steps_seen == [0, 1]


def test_same_generator_seed_same_image(built) -> None:
    module, _, pipe = built
    first = _generate(module, pipe, [7, 8])
    second = _generate(module, pipe, [7, 8])
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first[0], first[1])
    # One generator per image: an image does not depend on its batch (up to float rounding).
    alone = _generate(module, pipe, [8])
    np.testing.assert_allclose(alone[0], first[1], atol=1e-4)


def test_negative_prompts(built) -> None:
    module, _, pipe = built
    images = _generate(module, pipe, [1, 2], negatives=["blurry", ""])
    assert images.shape == (2, 64, 64, 3)


def test_negative_prompt_none_vs_empty(built) -> None:
    """Whether "no negative prompt" equals [""]: decides if such requests may share a batch."""
    module, _, pipe = built
    without = _generate(module, pipe, [5])
    with_empty = _generate(module, pipe, [5], negatives=[""])
    same = np.allclose(without, with_empty, atol=1e-4)
    # sd15 encodes "" for a missing negative prompt; sdxl uses zero embeddings instead
    # (force_zeros_for_empty_prompt); flux only uses negatives with true CFG.
    assert same == (module.FAMILY == "sd15")


def test_every_scheduler_runs(built) -> None:
    module, _, pipe = built
    original = pipe.scheduler
    try:
        for name, cls in module.SCHEDULERS.items():
            module.set_scheduler(pipe, name)
            assert type(pipe.scheduler) is cls
            for steps in (1, 2):
                assert np.isfinite(_generate(module, pipe, [3], steps=steps)).all(), name
        with pytest.raises(ValueError, match="unknown scheduler"):
            module.set_scheduler(pipe, "lms-nope")
    finally:
        pipe.scheduler = original


def test_build_is_deterministic(built, tmp_path: Path) -> None:
    module, path, _ = built
    module.build_tiny(tmp_path / "again", seed=0)
    assert _safetensors_digests(tmp_path / "again") == _safetensors_digests(path)
    # Rebuilding into an existing directory replaces it atomically, same bytes.
    module.build_tiny(tmp_path / "again", seed=0)
    assert _safetensors_digests(tmp_path / "again") == _safetensors_digests(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    module.build_tiny(tmp_path / "other", seed=1)
    other = _safetensors_digests(tmp_path / "other")
    assert other.keys() == _safetensors_digests(path).keys()
    assert other != _safetensors_digests(path)


def test_tokenizers_handle_non_ascii(built) -> None:
    _, _, pipe = built
    clip = pipe.tokenizer
    ids = clip(NON_ASCII, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert clip.unk_token_id not in ids[1 : ids.index(clip.eos_token_id)]
    # CLIP decoding lowercases and turns each end-of-word marker into a space.
    decoded = clip.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == NON_ASCII.lower().replace(" ", "")
    t5 = getattr(pipe, "tokenizer_2", None)
    if t5 is not None and "T5" in type(t5).__name__:
        t5_ids = t5(NON_ASCII, padding="max_length", max_length=64, truncation=True).input_ids
        assert len(t5_ids) == 64
        tokens = t5.convert_ids_to_tokens(t5_ids)
        assert "ü" in tokens and "п" in "".join(tokens)  # Latin and Cyrillic are covered
        assert t5.decode(t5_ids, skip_special_tokens=True).startswith("Zürich café — naïve")


def test_call_kwargs() -> None:
    sd15 = registry.family_module("sd15")
    assert sd15.call_kwargs(guidance_scale=7.5, negative_prompts=None) == {"guidance_scale": 7.5}
    assert sd15.call_kwargs(guidance_scale=7.5, negative_prompts=["x"])["negative_prompt"] == ["x"]
    flux = registry.family_module("flux")
    plain = flux.call_kwargs(guidance_scale=3.5, negative_prompts=None)
    assert plain["guidance_scale"] == 3.5 and "negative_prompt" not in plain
    assert "true_cfg_scale" not in plain
    neg = flux.call_kwargs(guidance_scale=3.5, negative_prompts=["blurry"])
    assert neg["negative_prompt"] == ["blurry"] and neg["true_cfg_scale"] > 1
    with pytest.raises(ValueError, match="true_cfg_scale"):
        flux.call_kwargs(guidance_scale=3.5, negative_prompts=["x"], true_cfg_scale=1.0)


def test_load_pipeline_refuses_pickles(built, tmp_path: Path) -> None:
    module, path, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    bad = copy / "vae" / "diffusion_pytorch_model.bin"
    bad.write_bytes(b"pickle")
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.bin"):
        module.load_pipeline(copy)


def test_resolve_tiny_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMEDIA_HOME", str(tmp_path))
    messages: list[str] = []
    path = weights.resolve_source("tiny://flux", progress=messages.append)
    assert path == tmp_path / "tiny" / "flux"
    assert any("building" in m for m in messages)
    mtime = (path / "model_index.json").stat().st_mtime_ns
    messages.clear()
    assert weights.resolve_source("tiny://flux", build_missing_tiny=False) == path
    assert weights.resolve_source("tiny://flux", progress=messages.append) == path
    assert messages == []
    assert (path / "model_index.json").stat().st_mtime_ns == mtime
