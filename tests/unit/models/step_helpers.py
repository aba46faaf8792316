"""What the step-engine tests of every family share: the tiny model of a family loaded through
the real loading code (64x64, few steps), a job, a request run alone in an engine, a running set
that members join (and leave) at given step boundaries, and the closeness bound the engine
promises (one 8-bit level on at most 1 % of the values)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from genmedia.models import registry
from genmedia.models.catalog import parse_catalog
from genmedia.models.params import GenerateRequest, GenerationJob, resolve_request
from genmedia.models.runner import LoadedModel, load_model
from genmedia.models.step_engine import (
    MemberState,
    UNetStepEngine,
    decode_members,
    prepare_members,
)

MAX_LEVELS = 1  # 8-bit levels an output may move between set compositions
MAX_CHANGED = 0.01  # share of pixel values that may differ at all


def tiny_model(family: str, folder: Path, model_id: str = "m") -> LoadedModel:
    """The family's tiny random-weight model, built into ``folder`` and loaded on CPU."""
    path = folder / family
    registry.family_module(family).build_tiny(path, seed=0)
    bounds = {"default": 64, "min": 32, "max": 128}
    parameters = {
        "width": bounds,
        "height": bounds,
        "steps": {"default": 3, "min": 1, "max": 10},
        "num_images": {"default": 1, "min": 1, "max": 4},
    }
    entry = {"id": model_id, "family": family, "weights": str(path), "parameters": parameters}
    catalog = parse_catalog({"models": [entry]})
    return load_model(catalog.models[0], path, "cpu")


def tiny_media_model(family: str, folder: Path, task: str, model_id: str = "m") -> LoadedModel:
    """The tiny random-weight model of a video or audio family (``task``: its one task), built
    into ``folder`` and loaded on CPU: 64x64 and 5 frames (video), 1 s clips (audio), few
    steps."""
    path = folder / family
    registry.family_module(family).build_tiny(path, seed=0)
    parameters: dict[str, object] = {
        "steps": {"default": 3, "min": 1, "max": 10},
        "num_images": {"default": 1, "min": 1, "max": 4},
    }
    if task == "text-to-video":
        bounds = {"default": 64, "min": 32, "max": 128}
        parameters.update(width=bounds, height=bounds)
        parameters["num_frames"] = {"default": 5, "min": 1, "max": 9}
    else:
        parameters["duration_s"] = {"default": 1.0, "min": 0.5, "max": 4.0}
    entry = {
        "id": model_id,
        "family": family,
        "task": task,
        "weights": str(path),
        "parameters": parameters,
    }
    catalog = parse_catalog({"models": [entry]})
    return load_model(catalog.models[0], path, "cpu")


def assert_close_audio(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """``assert_close`` for waveforms in [-1, 1]: compared as 8-bit levels of that range."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == np.float32
        assert_close([_levels(g)], [_levels(w)])


def _levels(wave: np.ndarray) -> np.ndarray:
    return ((np.clip(wave, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)


def make_job(model: LoadedModel, rid: str, **body: object) -> GenerationJob:
    body.setdefault("prompt", "a cat")
    out, errors = resolve_request(model.entry, GenerateRequest(**body), request_id=rid)  # type: ignore[arg-type]
    assert not errors and out is not None, errors
    return out


def img2img_job(model: LoadedModel, rid: str, *, strength: float, **body: object) -> GenerationJob:
    j = make_job(model, rid, **body)
    return replace(j, params=replace(j.params, task="image-to-image", strength=strength))


def source_image(seed: int) -> dict:
    """A worker's sources for an image-to-image member: a random 64x64 RGB image."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return {"image": Image.fromarray(pixels)}


def alone(engine: UNetStepEngine, j: GenerationJob, source: dict | None = None) -> list[np.ndarray]:
    member = engine.prepare(j, source)
    while not member.finished:
        engine.step([member])
    return engine.decode(member)


def assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == np.uint8
        diff = np.abs(g.astype(np.int16) - w.astype(np.int16))
        assert int(diff.max()) <= MAX_LEVELS
        assert float((diff > 0).mean()) <= MAX_CHANGED


def run_set(
    engine: UNetStepEngine,
    arrivals: list[tuple[int, GenerationJob]],
    cancel: dict[str, int] | None = None,
    sources: dict[str, dict] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Run an engine loop: job j joins at step boundary k for (k, j) in ``arrivals``; a member
    named in ``cancel`` leaves at that boundary; members joining at one boundary prepare
    together, and members finishing on one step decode together (``prepare_members``,
    ``decode_members``: as the worker's step loop does), then leave."""
    pending = sorted(arrivals, key=lambda a: a[0])
    members: list[MemberState] = []
    out: dict[str, list[np.ndarray]] = {}
    src, stop = sources or {}, cancel or {}
    k = 0
    while members or pending:
        joining = [j for at, j in pending if at <= k]
        members += prepare_members(engine, joining, [src.get(j.request_id) for j in joining])
        pending = [(at, j) for at, j in pending if at > k]
        members = [m for m in members if stop.get(m.job.request_id) != k]
        engine.step(members)
        finished = [m for m in members if m.finished]
        for m, images in zip(finished, decode_members(engine, finished), strict=True):
            out[m.job.request_id] = images
            members.remove(m)
        k += 1
    return out
