"""LoRA adapters: their files, the check against a base model, and the per-model adapter cache.

Where this sits in a request's way:
- registration (a catalog ``loras`` entry at start-up, or the admin endpoint at run time): the
  family worker that holds the base model resolves the source (``resolve_adapter_file``), reads
  only the safetensors header (``read_header``: suffix, size limit) and checks every key and shape
  against the loaded pipeline (``check_keys``) before the adapter is accepted;
- every batch: under the worker's step gate, ``AdapterCache.ensure`` loads what the batch needs
  through diffusers' own LoRA loader (peft backend; at most K per base model, least recently used
  evicted, never one a paused call still uses) and ``activate`` sets the batch's adapters and
  scales, so calls with different adapters interleave at step boundaries on one set of weights.

Weights load from safetensors only (``safetensors_io.read_state_dict``: parallel reads into one
buffer, every tensor a view of it); nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from genmedia.models.params import AdapterUse
from genmedia.models.registry import FAMILIES, lora_families
from genmedia.models.safetensors_io import CheckpointError, read_state_dict
from genmedia.models.weights import genmedia_home

# Attention projections: what tiny test adapters (and most published ones) target.
TARGETS = {
    "unet": ["to_q", "to_k", "to_v", "to_out.0"],
    "transformer": ["to_q", "to_k", "to_v", "to_out.0"],
}
_KEY_RE = re.compile(r"^(?P<component>[a-z_0-9]+)\.(?P<module>.+)\.(?P<part>lora_[AB])\.weight$")


class AdapterError(ValueError):
    """An adapter that cannot be used: its file, its keys, or its size."""


def adapter_cache_dir() -> Path:
    return genmedia_home() / "adapters"


def resolve_adapter_file(
    source: str, *, max_bytes: int, s3_endpoint_url: str | None = None
) -> Path:
    """A local ``.safetensors`` file for an adapter source: a path (``file://`` or plain) or an
    ``s3://bucket/key.safetensors`` object (size checked before it is downloaded)."""
    source = source.strip()
    if source.startswith("tiny://"):
        return _tiny_adapter(source)
    name = source.rsplit("/", 1)[-1]
    if not name.endswith(".safetensors"):
        raise AdapterError(f"adapter source {source!r} must be a .safetensors file")
    if source.startswith("s3://"):
        return _download_s3(source, max_bytes, s3_endpoint_url)
    path = Path(os.path.expandvars(os.path.expanduser(source.removeprefix("file://"))))
    if not path.is_file():
        raise AdapterError(f"adapter file {path} does not exist")
    if path.stat().st_size > max_bytes:
        raise AdapterError(
            f"adapter file {path} is {path.stat().st_size} bytes; the limit is {max_bytes}"
        )
    return path


def _tiny_adapter(source: str) -> Path:
    """``tiny://<family>/<name>``: a random rank-4 adapter for the family's tiny model, built once
    (seeded by its name) into the adapter cache."""
    import zlib

    from genmedia.models.weights import _file_lock, resolve_source

    family, _, name = source[len("tiny://") :].partition("/")
    families = lora_families()
    if family not in families or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name):
        raise AdapterError(f"{source!r}: expected tiny://<{'|'.join(families)}>/<name>")
    out = adapter_cache_dir() / "tiny" / family / f"{name}.safetensors"
    with _file_lock(adapter_cache_dir() / ".locks" / f"tiny-{family}-{name}.lock"):
        if not out.is_file():
            pipe = FAMILIES[family].load_pipeline(
                resolve_source(f"tiny://{family}"), dtype=torch.float32, device="cpu"
            )
            tmp = out.with_name(f".part-{os.getpid()}-{out.name}")
            build_tiny_adapter(pipe, family, tmp, seed=zlib.crc32(name.encode()))
            os.replace(tmp, out)
    return out


def _download_s3(source: str, max_bytes: int, endpoint_url: str | None) -> Path:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from genmedia.models.weights import _s3_endpoint

    bucket, _, key = source[len("s3://") :].partition("/")
    if not bucket or not key:
        raise AdapterError(f"adapter source {source!r} needs s3://bucket/key.safetensors")
    client = boto3.client("s3", endpoint_url=_s3_endpoint(endpoint_url))
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        raise AdapterError(f"cannot read {source}: {exc}") from exc
    size, etag = int(head["ContentLength"]), head["ETag"].strip('"')
    if size > max_bytes:
        raise AdapterError(f"adapter {source} is {size} bytes; the limit is {max_bytes}")
    dest = adapter_cache_dir() / "s3" / bucket / f"{etag}-{key.replace('/', '--')}"
    if dest.is_file() and dest.stat().st_size == size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".part-{os.getpid()}-{dest.name}")
    try:
        client.download_file(bucket, key, str(tmp))
        os.replace(tmp, dest)
    except (BotoCoreError, ClientError) as exc:
        raise AdapterError(f"cannot download {source}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def read_header(path: Path, max_bytes: int) -> dict[str, tuple[int, ...]]:
    """Key → shape of a safetensors file, without reading its tensors."""
    if path.suffix != ".safetensors":
        raise AdapterError(f"{path.name}: only .safetensors adapters are accepted")
    if path.stat().st_size > max_bytes:
        raise AdapterError(f"{path.name} is {path.stat().st_size} bytes; the limit is {max_bytes}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise AdapterError(f"{path.name} is not a valid safetensors file: {exc}") from None


def read_adapter(path: Path) -> dict[str, torch.Tensor]:
    """An adapter's tensors (checked header, one buffer); a bad file is an ``AdapterError``
    naming the file and the tensor."""
    try:
        return read_state_dict(path)
    except CheckpointError as exc:
        raise AdapterError(str(exc)) from None


def check_keys(pipe: Any, family: str, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Problems of an adapter's keys against a loaded base pipeline (empty: it fits).

    Every key must be ``<component>.<module path>.lora_{A,B}.weight`` (diffusers' LoRA format),
    the module must exist in that component as a Linear (or 1x1 conv) layer, and the shapes must
    be ``A: (r, in)``, ``B: (out, r)`` with one rank per module."""
    if not shapes:
        return ["the file has no tensors"]
    allowed = FAMILIES[family].lora_components if family in FAMILIES else ()
    problems: list[str] = []
    modules: dict[str, dict[str, torch.nn.Module]] = {}
    ranks: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    for key, shape in sorted(shapes.items()):
        m = _KEY_RE.match(key)
        if m is None:
            problems.append(f"{key}: not a LoRA weight key (<component>.<module>.lora_A.weight)")
            continue
        comp, mod, part = m["component"], m["module"], m["part"]
        if comp not in allowed:
            problems.append(f"{key}: component {comp!r} is not one of {', '.join(allowed)}")
            continue
        if comp not in modules:
            owner = getattr(pipe, comp, None)
            modules[comp] = dict(owner.named_modules()) if owner is not None else {}
        layer = modules[comp].get(mod)
        if layer is None:
            problems.append(f"{key}: the base model has no module {comp}.{mod}")
            continue
        layer = getattr(layer, "base_layer", layer)  # already wrapped by peft
        ranks.setdefault((comp, mod), {})[part] = shape
        dims = _dims(layer)
        if dims is None:
            problems.append(f"{key}: {comp}.{mod} is a {type(layer).__name__}, not a linear layer")
            continue
        fan_in, fan_out = dims
        if part == "lora_A" and (len(shape) < 2 or shape[1] != fan_in):
            problems.append(f"{key}: shape {shape} does not match in_features {fan_in}")
        if part == "lora_B" and (len(shape) < 2 or shape[0] != fan_out):
            problems.append(f"{key}: shape {shape} does not match out_features {fan_out}")
    for (comp, mod), parts in ranks.items():
        if set(parts) != {"lora_A", "lora_B"}:
            problems.append(f"{comp}.{mod}: needs both lora_A and lora_B")
        elif parts["lora_A"][0] != parts["lora_B"][1]:
            problems.append(f"{comp}.{mod}: lora_A and lora_B ranks differ")
    return problems


def _dims(layer: torch.nn.Module) -> tuple[int, int] | None:
    if isinstance(layer, torch.nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, torch.nn.Conv2d):
        return layer.in_channels, layer.out_channels
    return None


def check_adapter(
    pipe: Any,
    family: str,
    source: str,
    *,
    max_bytes: int,
    max_rank: int = 64,
    s3_endpoint_url: str | None = None,
) -> tuple[Path, dict]:
    """Resolve, read and check an adapter against a loaded pipeline; ``AdapterError`` lists the
    problems. Returns the local file and what the registry records about it."""
    path = resolve_adapter_file(source, max_bytes=max_bytes, s3_endpoint_url=s3_endpoint_url)
    shapes = read_header(path, max_bytes)
    problems = check_keys(pipe, family, shapes)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise AdapterError("adapter does not fit the base model: " + "; ".join(problems[:5]) + more)
    rank = max((s[0] for k, s in shapes.items() if ".lora_A." in k), default=0)
    if rank > max_rank:
        raise AdapterError(f"adapter rank {rank} is over the model's max_lora_rank {max_rank}")
    return path, {
        "path": str(path),
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "rank": rank,
        "tensors": len(shapes),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _Slot:
    """An adapter slot of the pipeline (a peft adapter name) and the adapter it now holds."""

    name: str
    path: str


class AdapterCache:
    """The adapters loaded into one base pipeline (at most ``capacity``, least recently used
    replaced). Not thread-safe: the worker calls it only while holding its step gate, when no
    other call is mid-step.

    Adapters live in slots (peft adapter names ``slot0``, ``slot1``, ...). A new adapter takes a
    free slot (diffusers injects the LoRA layers once per slot) or, when all are taken, is
    hot-swapped into the least recently used slot no paused call needs (diffusers'
    ``hotswap=True``: the weights are copied into the existing layers, no injection), which is
    what keeps loading a new adapter cheap. Ranks are padded to ``max_rank``
    (``enable_lora_hotswap``) so any accepted adapter fits any slot."""

    def __init__(self, capacity: int, max_rank: int = 64):
        self.capacity = max(1, capacity)
        self.max_rank = max_rank
        self.loaded: OrderedDict[str, _Slot] = OrderedDict()  # adapter id -> slot
        self.active: tuple[tuple[str, float], ...] | None = None
        self.enabled = True
        self.loads = 0
        self.hotswaps = 0
        self.evictions = 0
        self._prepared = False
        self._slots = 0

    def slot_of(self, adapter_id: str) -> str:
        return self.loaded[adapter_id].name

    def ensure(self, pipe: Any, files: dict[str, Path], pinned: set[str]) -> float:
        """Load the adapters (id → local file) that are not loaded yet; returns seconds spent.
        Adapters in ``pinned`` (used by calls paused at a step boundary) are never replaced."""
        spent = 0.0
        if not self._prepared:
            pipe.enable_lora_hotswap(target_rank=self.max_rank)
            self._prepared = True
        for aid, path in files.items():
            current = self.loaded.get(aid)
            if current is not None and current.path == str(path):
                self.loaded.move_to_end(aid)
                continue
            start = time.perf_counter()
            state = read_adapter(path)
            keep = pinned | set(files)
            victim: str | None
            if current is not None:  # re-registered from another file: reuse its own slot
                victim = aid
            elif len(self.loaded) >= self.capacity:
                victim = next((a for a in self.loaded if a not in keep), None)
            else:
                victim = None
            slot = None
            if victim is not None:
                slot = self.loaded.pop(victim)
                try:
                    pipe.load_lora_weights(state, adapter_name=slot.name, hotswap=True)
                    self.hotswaps += 1
                except (ValueError, RuntimeError, KeyError):
                    # not swappable into this slot (other target modules): drop the slot
                    pipe.delete_adapters([slot.name])
                    slot = None
                self.evictions += 1
            if slot is None:
                slot = _Slot(f"slot{self._slots}", "")
                self._slots += 1
                pipe.load_lora_weights(state, adapter_name=slot.name)
            self.loaded[aid] = _Slot(slot.name, str(path))
            spent += time.perf_counter() - start
            self.loads += 1
            self.active = None  # loading changes which adapters are set
        return spent

    def activate(self, pipe: Any, uses: list[AdapterUse]) -> None:
        """Make exactly ``uses`` (with their scales) the active adapters of the pipeline."""
        want = tuple((u.id, u.scale) for u in uses)
        if want == self.active:
            return
        if not self.loaded:
            self.active = want
            return
        if uses:
            if not self.enabled:
                pipe.enable_lora()
                self.enabled = True
            pipe.set_adapters(
                [self.slot_of(u.id) for u in uses], adapter_weights=[u.scale for u in uses]
            )
        else:
            pipe.disable_lora()
            self.enabled = False
        self.active = want


def build_tiny_adapter(
    pipe: Any,
    family: str,
    out: Path,
    *,
    rank: int = 4,
    seed: int = 0,
    init_scale: float = 0.5,
) -> Path:
    """Write a random LoRA for a loaded pipeline's denoiser with peft (tests, benchmarks): the
    same keys diffusers' ``save_lora_weights`` writes, random A and B so it changes the output."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    comp = FAMILIES[family].lora_denoiser
    if comp is None:
        raise AdapterError(f"the {family} family takes no LoRA adapters")
    module = getattr(pipe, comp)
    name = f"_build_{seed}"
    module.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS[comp]), adapter_name=name
    )
    try:
        state = get_peft_model_state_dict(module, adapter_name=name)
    finally:
        module.delete_adapters(name)
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        f"{comp}.{k}": (torch.randn(v.shape, generator=gen) * init_scale / rank**0.5).to(v.dtype)
        for k, v in sorted(state.items())
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"format": "pt", "genmedia_family": family})
    return out
