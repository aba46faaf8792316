"""A diffusers checkpoint directory loaded as fast as its bytes can be read.

Where this sits in a request's way: at replica start, under every family's ``load_pipeline``
(through ``family_io.load_checkpoint``). For each weighted component of ``model_index.json`` the
safetensors files (one, or the shards of a ``*.safetensors.index.json``) start reading at once
in parallel (``safetensors_io.start_reads``); meanwhile the component is built on the meta
device (accelerate's ``init_empty_weights``: parameters without memory, buffers real) and the
tokenizers and scheduler load in a thread. Each parameter then becomes a view of the buffer
its file was read into (no second copy; a cast only where the dtype differs). The pipeline
object is assembled by diffusers' own ``from_pretrained`` with every component passed in, so it
loads nothing itself. A component whose keys do not match the file exactly (a legacy layout
diffusers converts on load) falls back to the library loader for that component; a truncated
or corrupt file is a ``CheckpointError`` naming the file and the tensor.

``recording()`` collects a ``LoadReport`` (phases, bytes, fallbacks) per load for the runner.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genmedia.models.safetensors_io import (
    CheckpointError,
    FileRead,
    index_files,
    read_header,
    start_reads,
)

__all__ = [
    "CheckpointError",
    "LoadReport",
    "component_files",
    "fill_module",
    "load_component",
    "load_pipeline",
    "recording",
]

logger = logging.getLogger(__name__)

_REPORTS: contextvars.ContextVar[list[LoadReport] | None] = contextvars.ContextVar(
    "genmedia_load_reports", default=None
)


@dataclass
class LoadReport:
    """What one pipeline load did: bytes read, seconds per phase, components loaded the slow
    way. Phases overlap (reads run while structures are built): ``total_s`` is the wall time."""

    path: str
    bytes: int = 0
    files: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    total_s: float = 0.0

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "bytes": self.bytes,
            "files": self.files,
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "fallbacks": list(self.fallbacks),
            "total_s": round(self.total_s, 6),
        }


@contextlib.contextmanager
def recording() -> Iterator[list[LoadReport]]:
    """Collect the ``LoadReport`` of every pipeline load in this context (this thread)."""
    reports: list[LoadReport] = []
    token = _REPORTS.set(reports)
    try:
        yield reports
    finally:
        _REPORTS.reset(token)


class _Mismatch(Exception):
    """The file's keys are not the module's: the library loader converts such layouts."""


def component_files(directory: Path) -> list[Path]:
    """A component's safetensors files: the shards of its index, else its one non-variant
    ``*.safetensors`` file (``diffusion_pytorch_model`` / ``model``); [] when it has none."""
    shards = index_files(directory)
    if shards is not None:
        return shards
    files = [
        p
        for p in sorted(directory.glob("*.safetensors"))
        if p.name in ("diffusion_pytorch_model.safetensors", "model.safetensors")
    ]
    return files[:1]


def _library_class(library: str | None, name: str | None) -> Any:
    if library is None or name is None:
        return None
    if library == "diffusers":
        import diffusers

        return getattr(diffusers, name, None)
    if library == "transformers":
        import transformers

        return getattr(transformers, name, None)
    return None


def _is_diffusers_model(cls: Any) -> bool:
    from diffusers.models.modeling_utils import ModelMixin

    return isinstance(cls, type) and issubclass(cls, ModelMixin)


def _is_transformers_model(cls: Any) -> bool:
    from transformers import PreTrainedModel

    return isinstance(cls, type) and issubclass(cls, PreTrainedModel)


def build_empty(cls: Any, directory: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The component's structure from its config, parameters on the meta device (no memory,
    no initialisation), buffers real (position ids, rotary tables are computed, not loaded)."""
    from accelerate import init_empty_weights

    if _is_diffusers_model(cls):
        config = cls.load_config(directory)
        with init_empty_weights(include_buffers=False):
            model = cls.from_config(config)
        model.register_to_config(_name_or_path=str(directory))
        return model
    from transformers.initialization import no_init_weights

    config = cls.config_class.from_pretrained(directory)
    config.name_or_path = str(directory)
    with no_init_weights(), init_empty_weights(include_buffers=False):
        model = cls._from_config(config, dtype=dtype)
    return model


def _keep_fp32(model: torch.nn.Module) -> list[str]:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    strict = getattr(model, "_keep_in_fp32_modules_strict", None) or []
    names = [keep] if isinstance(keep, str) else list(keep)
    return names + ([strict] if isinstance(strict, str) else list(strict))


def _target_dtype(name: str, t: torch.Tensor, dtype: torch.dtype, keep: list[str]) -> torch.dtype:
    if not t.is_floating_point():
        return t.dtype
    if keep and any(k in name.split(".") for k in keep):
        return torch.float32
    return dtype


def fill_module(
    model: torch.nn.Module,
    tensors: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    where: Mapping[str, Path],
) -> int:
    """Give every parameter and persistent buffer of ``model`` its tensor: the tensor itself
    when its dtype is the target (a view of the read buffer), else a cast copy; when some are
    cast, the others are copied too, so the read buffer is freed rather than kept alive by a
    few views. Returns how many were cast. ``_Mismatch`` when keys differ; ``CheckpointError``
    on a shape mismatch."""
    expected = model.state_dict(keep_vars=True)
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise _Mismatch(f"unexpected keys {unexpected[:3]}")
    keep = _keep_fp32(model)
    targets = {k: _target_dtype(k, t, dtype, keep) for k, t in tensors.items()}
    cast = sum(t.dtype != targets[k] for k, t in tensors.items())
    for name, t in tensors.items():
        current = expected[name]
        if tuple(t.shape) != tuple(current.shape):
            raise CheckpointError(
                f"{where[name]}: tensor {name!r} has shape {tuple(t.shape)}, the model expects "
                f"{tuple(current.shape)}"
            )
        if t.dtype != targets[name]:
            t = t.to(targets[name])
        elif cast:
            t = t.clone()
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if attr in owner._parameters:
            owner._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)
        else:
            owner._buffers[attr] = t
    _retie_and_check(model)
    return cast


def _retie_and_check(model: torch.nn.Module) -> None:
    def still_empty() -> list[str]:
        return [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]

    empty = still_empty()
    tie = getattr(model, "tie_weights", None)
    if empty and callable(tie):
        tie()  # tied embeddings are saved once (transformers)
        empty = still_empty()
    if empty:
        raise _Mismatch(f"keys missing from the file: {sorted(empty)[:3]}")
    model.eval()


def _library_load(
    cls: Any, path: Path, name: str, dtype: torch.dtype, device: torch.device
) -> torch.nn.Module:
    model = cls.from_pretrained(
        path, subfolder=name, dtype=dtype, use_safetensors=True, local_files_only=True
    )
    return model.to(device)


@dataclass
class _Pending:
    """A weighted component whose files are being read."""

    name: str
    cls: type
    reads: list[FileRead]


def _fill_from_reads(
    model: torch.nn.Module, pending: _Pending, dtype: torch.dtype
) -> torch.nn.Module:
    tensors: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    for r in pending.reads:
        for k, t in r.tensors().items():
            if k in tensors:
                raise CheckpointError(f"tensor {k!r} is in both {where[k]} and {r.header.path}")
            tensors[k], where[k] = t, r.header.path
    fill_module(model, tensors, dtype, where)
    return model


def load_component(
    path: Path,
    name: str,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    mode: str | None = None,
) -> torch.nn.Module:
    """One weighted component of a checkpoint directory (``unet``, ``vae``, ...), through the
    fast path, or the library's loader when its keys need converting. ``mode``:
    ``safetensors_io.load_mode`` (read or mmap)."""
    index = json.loads((Path(path) / "model_index.json").read_text())
    library, cls_name = index[name]
    cls = _library_class(library, cls_name)
    device = torch.device(device)
    directory = Path(path) / name
    headers = [read_header(f) for f in component_files(directory)]
    pending = _Pending(name, cls, start_reads(headers, device, mode))
    model = build_empty(cls, directory, dtype)
    try:
        return _fill_from_reads(model, pending, dtype)
    except _Mismatch as exc:
        logger.info("%s: %s; loading it with %s.from_pretrained", directory, exc, cls.__name__)
        return _library_load(cls, Path(path), name, dtype, device)


def _components(path: Path, skip: set[str]) -> dict[str, tuple[str, str, list[Path]]]:
    """model_index.json's components (library, class name, safetensors files), without
    importing their classes: the reads start before diffusers and transformers load them."""
    index = json.loads((path / "model_index.json").read_text())
    out: dict[str, tuple[str, str, list[Path]]] = {}
    for name, spec in index.items():
        if name.startswith("_") or name in skip or not isinstance(spec, list) or len(spec) != 2:
            continue
        if spec[0] is None or spec[1] is None:
            continue
        files = component_files(path / name) if (path / name).is_dir() else []
        out[name] = (str(spec[0]), str(spec[1]), files)
    return out


def _load_others(path: Path, others: dict[str, type]) -> dict[str, Any]:
    """Tokenizers, schedulers, feature extractors: small files, loaded by their own classes."""
    return {
        name: cls.from_pretrained(path / name)  # type: ignore[attr-defined]
        for name, cls in others.items()
    }


def _fill_components(
    path: Path,
    weighted: dict[str, _Pending],
    others: dict[str, type],
    dtype: torch.dtype,
    dtypes: dict[str, torch.dtype],
    device: torch.device,
    report: LoadReport,
) -> dict[str, Any]:
    """Build each weighted component empty and give it its read tensors (the library's loader
    for one whose keys do not match), while the other components load in a thread."""
    with ThreadPoolExecutor(1, thread_name_prefix="pipeline-parts") as ex:
        other_future: Future[dict[str, Any]] = ex.submit(_load_others, path, others)
        loaded: dict[str, Any] = {}
        for name, p in weighted.items():
            want = dtypes.get(name, dtype)
            t = time.perf_counter()
            model = build_empty(p.cls, path / name, want)
            report.add("build_s", time.perf_counter() - t)
            t = time.perf_counter()
            try:
                loaded[name] = _fill_from_reads(model, p, want)
            except _Mismatch as exc:
                report.fallbacks.append(f"{name}: {exc}")
                logger.info("%s/%s: %s; loading it with from_pretrained", path, name, exc)
                loaded[name] = _library_load(p.cls, path, name, want, device)
            report.add("read_fill_s", time.perf_counter() - t)
        t = time.perf_counter()
        loaded.update(other_future.result())
        report.add("others_wait_s", time.perf_counter() - t)
    return loaded


def load_pipeline(
    pipeline_class: Any,
    path: Path,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    component_dtypes: Mapping[str, torch.dtype] | None = None,
    **components: Any,
) -> tuple[Any, LoadReport]:
    """A pipeline from a safetensors-only checkpoint directory: weighted components through
    the fast path (``component_dtypes`` overrides ``dtype`` per component), the rest by their
    own classes, assembled by ``pipeline_class.from_pretrained`` with all of them passed in.
    ``pipeline_class`` may be a function returning the class: it is called once the reads have
    started, so importing diffusers' pipeline modules overlaps them.
    ``components`` are passed through as given (replacements, None, config values)."""
    start = time.perf_counter()
    path, device = Path(path), torch.device(device)
    report = LoadReport(str(path))
    dtypes = dict(component_dtypes or {})
    t = time.perf_counter()
    parts = _components(path, set(components))
    headers = {n: [read_header(f) for f in files] for n, (_, _, files) in parts.items() if files}
    reads = {n: start_reads(h, device) for n, h in headers.items()}
    report.files = sum(len(h) for h in headers.values())
    report.bytes = sum(x.data_bytes for h in headers.values() for x in h)
    report.add("headers_s", time.perf_counter() - t)

    t = time.perf_counter()  # the classes: importing them overlaps the reads
    if not isinstance(pipeline_class, type):  # a function importing it (diffusers: seconds)
        pipeline_class = pipeline_class()
    classes = {n: _library_class(lib, cls) for n, (lib, cls, _) in parts.items()}
    weighted = {
        n: _Pending(n, classes[n], reads[n])
        for n in reads
        if _is_diffusers_model(classes[n]) or _is_transformers_model(classes[n])
    }
    others = {n: c for n, c in classes.items() if c is not None and n not in weighted}
    report.add("imports_s", time.perf_counter() - t)

    loaded = _fill_components(path, weighted, others, dtype, dtypes, device, report)

    t = time.perf_counter()
    pipe = pipeline_class.from_pretrained(
        path, dtype=dtype, use_safetensors=True, local_files_only=True, **loaded, **components
    )
    if device.type != "cpu":
        pipe = pipe.to(device)  # components passed in as given stay where they were built
    report.add("assemble_s", time.perf_counter() - t)
    report.total_s = time.perf_counter() - start
    reports = _REPORTS.get()
    if reports is not None:
        reports.append(report)
    return pipe, report
