"""Unit tests for genmedia.models.weights: safetensors-only checks and local/tiny sources.

These guard what a family worker does at replica start, before any pipeline is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from genmedia.models import registry, weights
from genmedia.models.weights import WeightsError, check_safetensors_only, resolve_source


def _write_safetensors(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(2, 2)}, str(path))
    return path


@pytest.fixture
def good_ckpt(tmp_path: Path) -> Path:
    root = tmp_path / "ckpt"
    _write_safetensors(root / "unet" / "diffusion_pytorch_model.safetensors")
    (root / "model_index.json").write_text("{}")
    return root


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "genmedia-home"
    monkeypatch.setenv("GENMEDIA_HOME", str(home))
    return home


def test_good_checkpoint_passes(good_ckpt: Path) -> None:
    check_safetensors_only(good_ckpt)
    check_safetensors_only(good_ckpt / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize(
    "name", ["model.ckpt", "pytorch_model.bin", "weights.pt", "W.PTH", "x.pkl"]
)
def test_pickle_files_are_refused_with_their_name(good_ckpt: Path, name: str) -> None:
    bad = good_ckpt / "text_encoder" / name
    bad.parent.mkdir()
    bad.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(WeightsError) as excinfo:
        check_safetensors_only(good_ckpt)
    assert str(bad) in str(excinfo.value)
    assert "pickle" in str(excinfo.value)


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model"
    with pytest.raises(WeightsError, match="does not exist") as excinfo:
        check_safetensors_only(missing)
    assert str(missing) in str(excinfo.value)


def test_empty_dir_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match=r"no \*\.safetensors"):
        check_safetensors_only(empty)


def test_dir_with_only_configs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(WeightsError, match=r"no \*\.safetensors"):
        check_safetensors_only(tmp_path)


def test_fake_safetensors_file_is_refused(good_ckpt: Path) -> None:
    fake = good_ckpt / "vae" / "diffusion_pytorch_model.safetensors"
    fake.parent.mkdir()
    fake.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(WeightsError, match="not a valid safetensors") as excinfo:
        check_safetensors_only(good_ckpt)
    assert str(fake) in str(excinfo.value)


def test_resolve_plain_and_file_paths(good_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_source(str(good_ckpt)) == good_ckpt.resolve()
    assert resolve_source(f"file://{good_ckpt}") == good_ckpt.resolve()
    monkeypatch.setenv("CKPT_ROOT", str(good_ckpt.parent))
    assert resolve_source("$CKPT_ROOT/ckpt") == good_ckpt.resolve()
    monkeypatch.setenv("HOME", str(good_ckpt.parent))
    assert resolve_source("~/ckpt") == good_ckpt.resolve()


def test_resolve_missing_local_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing-model"
    for source in (str(missing), f"file://{missing}"):
        with pytest.raises(WeightsError) as excinfo:
            resolve_source(source)
        assert str(missing) in str(excinfo.value)


def test_resolve_refuses_pickle_in_local_dir(good_ckpt: Path) -> None:
    (good_ckpt / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.bin"):
        resolve_source(str(good_ckpt))


def test_tiny_without_building_is_an_error(_isolated_home: Path) -> None:
    with pytest.raises(WeightsError, match="not built") as excinfo:
        resolve_source("tiny://sd15", build_missing_tiny=False)
    assert str(_isolated_home / "tiny" / "sd15") in str(excinfo.value)
    assert not (_isolated_home / "tiny" / "sd15").exists()


def test_tiny_unknown_family_lists_known_ones() -> None:
    with pytest.raises(WeightsError, match="known families: flux, sd15, sdxl, stable-audio, wan"):
        resolve_source("tiny://sd3", build_missing_tiny=False)


def test_unsupported_scheme_and_empty_source() -> None:
    with pytest.raises(WeightsError, match="unsupported weight source"):
        resolve_source("hf://stabilityai/sdxl")
    with pytest.raises(WeightsError, match="empty"):
        resolve_source("  ")


def test_cache_dirs_follow_genmedia_home(
    _isolated_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert weights.tiny_cache_dir() == _isolated_home / "tiny"
    assert weights.s3_cache_dir() == _isolated_home / "s3"
    monkeypatch.delenv("GENMEDIA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights.tiny_cache_dir() == tmp_path / ".cache" / "genmedia" / "tiny"


def test_family_registry() -> None:
    assert set(weights.FAMILY_MODULES) == {"sd15", "sdxl", "flux", "wan", "stable-audio"}
    with pytest.raises(ValueError, match="known families: flux, sd15, sdxl, stable-audio, wan"):
        registry.family_module("kandinsky")
    assert weights.family_module("flux").FAMILY == "flux"
