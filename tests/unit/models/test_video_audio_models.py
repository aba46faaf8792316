"""Unit tests for the tiny Wan (text-to-video) and Stable Audio (text-to-audio) families.

Each checkpoint is built once per module, loaded back through ``from_pretrained`` and run end to
end on CPU (17-frame 64x64 clips, 2-second stereo clips, 2-4 steps), then through the encoders.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from genmedia.models import media, registry, stable_audio, wan, weights
from genmedia.models.weights import WeightsError

# torchsde's Brownian tree warns when the sampler's float32 sigmas touch its interval ends.
pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from threads; two threads on a shared 2-core box can spin-wait
    each call to seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def wan_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("tiny-wan") / "ckpt"
    wan.build_tiny(path, seed=0)
    return path, wan.load_pipeline(path)


@pytest.fixture(scope="module")
def audio_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("tiny-stable-audio") / "ckpt"
    stable_audio.build_tiny(path, seed=0)
    return path, stable_audio.load_pipeline(path)


def _video(pipe, seeds: tuple[int, ...], steps: int = 2, **kw) -> np.ndarray:
    prompts = [f"a cat walking, take {s}" for s in seeds]
    kw.setdefault("num_frames", 17)
    return wan.run_text_to_video(
        pipe, prompts, width=64, height=64, steps=steps, generators=_gens(*seeds), **kw
    )


def _audio(pipe, seeds: tuple[int, ...], steps: int = 2, **kw) -> np.ndarray:
    prompts = [f"a dog barking, take {s}" for s in seeds]
    kw.setdefault("duration_s", 2.0)
    return stable_audio.run_text_to_audio(
        pipe, prompts, steps=steps, generators=_gens(*seeds), **kw
    )


def _digests(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*.safetensors"))
    }


# --------------------------------------------------------------------------------------------
# Both families
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("module", "fixture"), [(wan, "wan_built"), (stable_audio, "audio_built")])
def test_interface_agrees_with_registry(module, fixture, request) -> None:
    _, pipe = request.getfixturevalue(fixture)
    assert isinstance(pipe, module.PIPELINE_CLASS)
    spec = registry.family_spec(module.FAMILY)
    assert spec is module.SPEC and registry.FAMILY_MODULES[spec.name] == module.__name__
    assert spec.tasks == (module.TASK,)
    assert set(spec.schedulers) == set(module.SCHEDULERS)
    assert spec.default_scheduler == module.DEFAULT_SCHEDULER
    assert spec.size_multiple == module.SIZE_MULTIPLE
    assert module.TASK in media.FORMATS_BY_TASK
    with pytest.raises(ValueError, match=f"unknown scheduler 'nope' for {module.FAMILY}"):
        module.set_scheduler(pipe, "nope")


@pytest.mark.parametrize("module", [wan, stable_audio])
def test_build_is_deterministic(module, tmp_path: Path) -> None:
    module.build_tiny(tmp_path / "a", seed=0)
    module.build_tiny(tmp_path / "b", seed=0)
    module.build_tiny(tmp_path / "c", seed=1)
    first = _digests(tmp_path / "a")
    assert first and first == _digests(tmp_path / "b")
    assert first.keys() == _digests(tmp_path / "c").keys()
    assert first != _digests(tmp_path / "c")


@pytest.mark.parametrize(("module", "fixture"), [(wan, "wan_built"), (stable_audio, "audio_built")])
def test_load_refuses_pickle_weights(module, fixture, request, tmp_path: Path) -> None:
    path, _ = request.getfixturevalue(fixture)
    bad = tmp_path / "ckpt"
    shutil.copytree(path, bad)
    (bad / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not-a-model")
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.bin"):
        module.load_pipeline(bad)


@pytest.mark.parametrize("family", ["wan", "stable-audio"])
def test_tiny_source_resolves(family: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GENMEDIA_HOME", str(tmp_path))
    path = weights.resolve_source(f"tiny://{family}")
    assert path == tmp_path / "tiny" / family
    assert (path / "model_index.json").is_file()
    module = registry.family_module(family)
    assert isinstance(module.load_pipeline(path), module.PIPELINE_CLASS)


@pytest.mark.parametrize(
    ("run", "fixture", "atol"), [(_video, "wan_built", 1), (_audio, "audio_built", 1e-4)]
)
def test_same_seed_same_output(run, fixture: str, atol: float, request) -> None:
    _, pipe = request.getfixturevalue(fixture)
    first = run(pipe, (7, 8))
    np.testing.assert_array_equal(first, run(pipe, (7, 8)))
    assert not np.allclose(first[0].astype(float), first[1].astype(float), atol=atol)
    # One generator per output: a clip depends on its own seed, not on its batch (up to float
    # rounding; for audio the SDE noise follows that seed too).
    alone = run(pipe, (8,))
    np.testing.assert_allclose(alone[0].astype(float), first[1].astype(float), atol=atol)


def test_load_in_bfloat16_keeps_the_video_vae_in_float32(wan_built) -> None:
    path, _ = wan_built
    pipe = wan.load_pipeline(path, dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32


@pytest.mark.parametrize(
    ("module", "fixture", "run", "kwargs", "shape"),
    [
        (wan, "wan_built", _video, {"num_frames": 5}, (1, 5, 64, 64, 3)),
        (stable_audio, "audio_built", _audio, {"duration_s": 1.0}, (1, 2, 16_000)),
    ],
)
def test_every_scheduler_runs(module, fixture, run, kwargs, shape, request) -> None:
    _, pipe = request.getfixturevalue(fixture)
    original = pipe.scheduler
    try:
        for name, factory in module.SCHEDULERS.items():
            module.set_scheduler(pipe, name)
            assert type(pipe.scheduler) is getattr(factory, "cls", factory)
            config = pipe.scheduler.config
            if module is wan:  # both flow schedulers keep the checkpoint's shift
                assert config.get("flow_shift", config.get("shift")) == wan.FLOW_SHIFT
            else:
                assert config.prediction_type == "v_prediction"
            out = run(pipe, (3,), negative_prompts=["blurry"], **kwargs)
            assert out.shape == shape and np.isfinite(out).all()
    finally:
        pipe.scheduler = original


# --------------------------------------------------------------------------------------------
# Wan: text-to-video
# --------------------------------------------------------------------------------------------


def test_video_shapes_steps_and_encoding(wan_built) -> None:
    _, pipe = wan_built
    assert type(pipe.scheduler) is wan.SCHEDULERS[wan.DEFAULT_SCHEDULER].cls
    assert pipe.vae.dtype == torch.float32
    seen: list[tuple[int, int]] = []
    frames = _video(pipe, (1, 2), steps=4, on_step=lambda done, total: seen.append((done, total)))
    assert frames.shape == (2, 17, 64, 64, 3)
    assert frames.dtype == np.uint8
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert frames[0].std(axis=0).mean() > 1.0  # frames differ over time: a clip, not a still
    assert wan.sequence_length(pipe) == 64  # the tiny tokenizer's length, not Wan's 512

    data = media.encode_video(frames[0], wan.DEFAULT_FPS)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (64, 64, wan.DEFAULT_FPS)
        assert sum(1 for _ in container.decode(stream)) == 17


def test_video_step_callback_can_stop_the_call(wan_built) -> None:
    _, pipe = wan_built
    seen: list[int] = []

    def stop_at_two(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        _video(pipe, (1,), steps=4, on_step=stop_at_two)
    assert seen == [1, 2]


def test_valid_num_frames_rule() -> None:
    assert [n for n in range(0, 20) if wan.valid_num_frames(n)] == [1, 5, 9, 13, 17]
    assert wan.valid_num_frames(wan.MAX_NUM_FRAMES)
    assert not wan.valid_num_frames(wan.MAX_NUM_FRAMES + 4)
    assert wan.valid_num_frames(wan.DEFAULT_NUM_FRAMES)
    assert "4k + 1" in wan.NUM_FRAMES_RULE


@pytest.mark.parametrize(
    ("num_frames", "detail"),
    [
        (16, "got 16 (nearest valid: 13 or 17)"),
        (0, "got 0 (nearest valid: 1)"),
        (85, "got 85 (nearest valid: 81)"),
        (17.0, "got 17.0"),
        (True, "got True"),
    ],
)
def test_bad_num_frames_names_the_rule(wan_built, num_frames, detail: str) -> None:
    _, pipe = wan_built
    with pytest.raises(ValueError, match=r"num_frames must be 4k \+ 1") as excinfo:
        _video(pipe, (1,), num_frames=num_frames)
    assert detail in str(excinfo.value)


@pytest.mark.parametrize(("width", "height"), [(60, 64), (64, 0), (64, 40)])
def test_bad_video_size_names_the_multiple(wan_built, width: int, height: int) -> None:
    _, pipe = wan_built
    with pytest.raises(ValueError, match="must be a positive multiple of 16 for wan"):
        wan.run_text_to_video(
            pipe, ["x"], num_frames=5, width=width, height=height, steps=1, generators=_gens(1)
        )


def test_video_generators_must_match_prompts(wan_built) -> None:
    _, pipe = wan_built
    with pytest.raises(ValueError, match="got 1 generators for 2 prompts"):
        wan.run_text_to_video(
            pipe, ["a", "b"], num_frames=5, width=64, height=64, steps=1, generators=_gens(1)
        )


# --------------------------------------------------------------------------------------------
# Stable Audio: text-to-audio
# --------------------------------------------------------------------------------------------


def test_audio_shapes_steps_and_encoding(audio_built) -> None:
    _, pipe = audio_built
    assert type(pipe.scheduler) is stable_audio.SCHEDULERS[stable_audio.DEFAULT_SCHEDULER]
    rate = stable_audio.sample_rate(pipe)
    assert rate == 16_000
    seen: list[tuple[int, int]] = []
    waves = _audio(pipe, (1, 2), steps=3, on_step=lambda done, total: seen.append((done, total)))
    assert waves.shape == (2, 2, 2 * rate)
    assert waves.dtype == np.float32
    assert np.isfinite(waves).all() and np.abs(waves).max() <= 1.0
    assert seen == [(1, 3), (2, 3), (3, 3)]

    for fmt in ("wav", "flac"):
        data, got_rate = sf.read(io.BytesIO(media.encode_audio(waves[0], rate, fmt)))
        assert got_rate == rate and data.shape == (2 * rate, 2)
        np.testing.assert_allclose(data.T, waves[0], atol=1 / 16_000)


def test_audio_duration_bounds(audio_built) -> None:
    _, pipe = audio_built
    low, high = stable_audio.duration_bounds(pipe)
    assert (low, high) == (stable_audio.MIN_DURATION_S, 256 * 256 / 16_000)
    assert low <= stable_audio.DEFAULT_DURATION_S <= high
    longest = _audio(pipe, (1,), steps=1, duration_s=high)
    assert longest.shape[-1] == int(high * stable_audio.sample_rate(pipe))


def test_audio_bounds_from_checkpoint_files(audio_built, tmp_path: Path) -> None:
    path, pipe = audio_built
    bounds = stable_audio.checkpoint_duration_bounds(path)
    assert bounds == stable_audio.duration_bounds(pipe)
    assert bounds[1] == stable_audio.TINY_MAX_DURATION_S
    assert stable_audio.sample_rate(pipe) == stable_audio.TINY_SAMPLE_RATE
    broken = tmp_path / "ckpt"
    shutil.copytree(path, broken)
    (broken / "vae" / "config.json").write_text('{"sampling_rate": 16000}')
    with pytest.raises(ValueError, match=r"vae/config\.json downsampling_ratios") as excinfo:
        stable_audio.checkpoint_duration_bounds(broken)
    assert str(broken) in str(excinfo.value) and "'downsampling_ratios'" in str(excinfo.value)
    with pytest.raises(ValueError, match="cannot read the audio length limits"):
        stable_audio.checkpoint_duration_bounds(tmp_path / "missing")


@pytest.mark.parametrize("duration", [0.1, 4.5, -1.0, "2", True, float("nan")])
def test_bad_duration_names_the_bounds(audio_built, duration) -> None:
    _, pipe = audio_built
    with pytest.raises(ValueError, match=r"duration_s must be between 0\.5 and 4\.096 seconds"):
        _audio(pipe, (1,), duration_s=duration)
