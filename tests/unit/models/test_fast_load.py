"""The fast weights loader: every tensor equals the file's bytes (all families, fp16/fp32,
sharded checkpoints), and a truncated or corrupt file is an error naming file and tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from genmedia.models import registry
from genmedia.models.fast_load import (
    _Mismatch,
    component_files,
    fill_module,
    load_component,
    recording,
)
from genmedia.models.lora import AdapterError, read_adapter
from genmedia.models.safetensors_io import (
    CheckpointError,
    read_header,
    read_state_dict,
    start_reads,
)
from genmedia.models.weights import WeightsError

FAMILIES = ["sd15", "sdxl", "flux", "wan", "stable-audio"]


def _file_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` through the safetensors package (the reference reader)."""
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118
                out[k] = fh.get_tensor(k)
    return out


def _weighted(path: Path) -> dict[str, list[Path]]:
    index = json.loads((path / "model_index.json").read_text())
    comps = {n: component_files(path / n) for n in index if (path / n).is_dir()}
    return {n: files for n, files in comps.items() if files}


def _assert_equals_file(module: torch.nn.Module, files: list[Path], dtype: torch.dtype) -> None:
    state = module.state_dict()
    expected = _file_tensors(files)
    assert expected, files
    for name, ref in expected.items():
        got = state[name]
        want = ref.to(dtype) if ref.is_floating_point() and got.dtype != ref.dtype else ref
        assert got.dtype == want.dtype, name
        assert torch.equal(got, want), f"{name} differs from {files}"
    # nothing left uninitialised: every parameter and buffer is a real tensor
    assert not [k for k, t in state.items() if t.is_meta]


@pytest.fixture(scope="module", params=FAMILIES)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    module = registry.family_module(family)
    path = tmp_path_factory.mktemp(f"fast-{family}") / "ckpt"
    module.build_tiny(path, seed=0)
    return family, module, path


def test_every_family_loads_the_files_bytes(built) -> None:
    _family, module, path = built
    with recording() as reports:
        pipe = module.load_pipeline(path, dtype=torch.float32)
    assert len(reports) == 1 and not reports[0].fallbacks, reports[0].fallbacks
    assert reports[0].bytes > 0 and reports[0].files >= 2
    for name, files in _weighted(path).items():
        _assert_equals_file(getattr(pipe, name), files, torch.float32)


def _fp16_checkpoint(module, path: Path, out: Path) -> Path:
    pipe = module.pipeline_class().from_pretrained(path, dtype=torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def test_fp16_file_loads_as_fp16_and_as_fp32(tmp_path: Path) -> None:
    from genmedia.models import sd15

    src = tmp_path / "fp32"
    sd15.build_tiny(src)
    half = _fp16_checkpoint(sd15, src, tmp_path / "fp16")
    unet_files = component_files(half / "unet")
    assert read_header(unet_files[0]).tensors["conv_in.weight"].dtype == torch.float16
    as_half = load_component(half, "unet", torch.float16)
    _assert_equals_file(as_half, unet_files, torch.float16)
    as_float = load_component(half, "unet", torch.float32)
    _assert_equals_file(as_float, unet_files, torch.float32)
    pipe = sd15.load_pipeline(half, dtype=torch.float16)
    _assert_equals_file(pipe.text_encoder, component_files(half / "text_encoder"), torch.float16)


def _write_shards(directory: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    """The component's weights as ``shards`` files and diffusers' index naming them."""
    (directory / "diffusion_pytorch_model.safetensors").unlink()
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(directory / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_checkpoint(tmp_path: Path) -> None:
    from genmedia.models import sd15

    path = tmp_path / "ckpt"
    sd15.build_tiny(path)
    unet = load_component(path, "unet", torch.float32)
    _write_shards(path / "unet", unet.state_dict(), shards=3)
    shards = component_files(path / "unet")
    assert len(shards) > 2 and (path / "unet" / "diffusion_pytorch_model.safetensors.index.json")
    with recording() as reports:
        pipe = sd15.load_pipeline(path)
    assert not reports[0].fallbacks
    _assert_equals_file(pipe.unet, shards, torch.float32)


def _first_tensor(path: Path) -> tuple[str, int]:
    header = read_header(path)
    last = max(header.tensors.values(), key=lambda r: r.end)
    return last.name, header.data_start + last.begin


def test_truncated_file_names_file_and_tensor(tmp_path: Path) -> None:
    from genmedia.models import sd15

    path = tmp_path / "ckpt"
    sd15.build_tiny(path)
    f = component_files(path / "unet")[0]
    last, begin = _first_tensor(f)
    with f.open("r+b") as fh:
        fh.truncate(begin + 3)
    with pytest.raises(CheckpointError, match="truncated") as exc:
        read_header(f)
    assert str(f) in str(exc.value) and repr(last) in str(exc.value)
    with pytest.raises(WeightsError, match="truncated") as exc2:
        sd15.load_pipeline(path)
    assert str(f) in str(exc2.value) and repr(last) in str(exc2.value)


def test_file_cut_while_reading_names_the_tensor(tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(64), "b": torch.zeros(1024)}, str(f))
    header = read_header(f)
    with f.open("r+b") as fh:
        fh.truncate(header.data_start + header.tensors["b"].begin + 10)
    for mode in ("read", "mmap"):  # mmap finds the cut at once, read when the bytes run out
        with pytest.raises(CheckpointError, match="'b' ends early") as exc:
            (read,) = start_reads([header], mode=mode)
            read.tensors()
        assert str(f) in str(exc.value)


def _rewrite_header(f: Path, edit) -> None:
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    f.write_bytes(raw[:8] + text + raw[8 + n :])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["b"].update(dtype="X9"), "'b': unknown dtype"),
        (lambda h: h["b"].update(shape=[3]), "'b': shape"),
        (lambda h: h["b"].update(data_offsets=[0, 4096]), "'b'"),
    ],
)
def test_corrupt_header_names_file_and_tensor(tmp_path: Path, edit, message: str) -> None:
    f = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(64), "b": torch.zeros(1024)}, str(f))
    _rewrite_header(f, edit)
    with pytest.raises(CheckpointError, match=message) as exc:
        read_header(f)
    assert str(f) in str(exc.value)


def test_header_that_is_not_json(tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    f.write_bytes((16).to_bytes(8, "little") + b"{not json at all" + b"\0" * 8)
    with pytest.raises(CheckpointError, match="not valid JSON") as exc:
        read_header(f)
    assert str(f) in str(exc.value)


def test_read_state_dict_equals_safetensors(tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    tensors = {
        "f32": torch.randn(7, 5),
        "f16": torch.randn(3, 9).half(),
        "bf16": torch.randn(11).bfloat16(),
        "i64": torch.arange(13),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, str(f))
    got = read_state_dict(f)
    assert got.keys() == tensors.keys()
    for k, t in tensors.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k


def test_fill_module_refuses_mismatches(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    where = {"weight": tmp_path / "x.safetensors", "bias": tmp_path / "x.safetensors"}
    with pytest.raises(_Mismatch):
        fill_module(
            model, {"weight": torch.ones(3, 4), "extra": torch.ones(1)}, torch.float32, where
        )
    with pytest.raises(CheckpointError, match="'weight' has shape") as exc:
        fill_module(
            model, {"weight": torch.ones(4, 4), "bias": torch.ones(3)}, torch.float32, where
        )
    assert "x.safetensors" in str(exc.value)


def test_lora_reads_through_the_loader(tmp_path: Path) -> None:
    f = tmp_path / "adapter.safetensors"
    tensors = {
        "unet.a.lora_A.weight": torch.randn(4, 32),
        "unet.a.lora_B.weight": torch.randn(32, 4),
    }
    save_file(tensors, str(f))
    got = read_adapter(f)
    assert all(torch.equal(got[k], t) for k, t in tensors.items())
    with f.open("r+b") as fh:
        fh.truncate(f.stat().st_size - 8)
    with pytest.raises(AdapterError, match="truncated") as exc:
        read_adapter(f)
    assert str(f) in str(exc.value) and "lora_" in str(exc.value)


def test_mmap_mode_gives_the_same_tensors_and_private_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genmedia.models import sd15

    path = tmp_path / "ckpt"
    sd15.build_tiny(path)
    monkeypatch.setenv("GENMEDIA_LOAD_MODE", "mmap")
    pipe = sd15.load_pipeline(path)
    for name, files in _weighted(path).items():
        _assert_equals_file(getattr(pipe, name), files, torch.float32)
    before = (path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    with torch.no_grad():
        pipe.unet.conv_in.weight.add_(1.0)  # copy-on-write: the file does not change
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    monkeypatch.setenv("GENMEDIA_LOAD_MODE", "fast")
    with pytest.raises(ValueError, match="GENMEDIA_LOAD_MODE"):
        sd15.load_pipeline(path)


def test_a_component_that_does_not_match_loads_through_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genmedia.models import fast_load, sd15

    path = tmp_path / "ckpt"
    sd15.build_tiny(path)
    real = fast_load.fill_module

    def legacy_vae(model, tensors, dtype, where):
        if "encoder.conv_in.weight" in tensors:  # the VAE: as if its keys needed converting
            raise _Mismatch("legacy attention keys")
        return real(model, tensors, dtype, where)

    monkeypatch.setattr(fast_load, "fill_module", legacy_vae)
    with recording() as reports:
        pipe = sd15.load_pipeline(path)
    assert reports[0].fallbacks == ["vae: legacy attention keys"]
    _assert_equals_file(pipe.vae, component_files(path / "vae"), torch.float32)
    _assert_equals_file(pipe.unet, component_files(path / "unet"), torch.float32)
