"""Safetensors files read at the speed of memory: the header parsed and checked here, the
tensor bytes read with large parallel ``os.preadv`` calls straight into one preallocated buffer
per file, every tensor a view of it (no second copy).

Where this sits in a request's way: at replica start, under ``models/fast_load.py`` (which builds
each pipeline component without initialising its weights and gives it these tensors) and under
``models/lora.py`` (an adapter's first load, in a batch call). Requests never reach it directly;
an error here names the file and the tensor and means the model or adapter does not load.

On CUDA the bytes land in pinned host memory and go to the device in one copy; on the CPU
there is no pinning and no copy. On the CPU the files are mapped instead of read by default
(``GENMEDIA_LOAD_MODE``, see ``load_mode``). torch is the only dependency; nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "DTYPES",
    "CheckpointError",
    "FileRead",
    "SafetensorsFile",
    "TensorRecord",
    "index_files",
    "load_mode",
    "read_files",
    "read_header",
    "read_state_dict",
    "read_threads",
    "start_reads",
]

# The safetensors dtype names (https://github.com/huggingface/safetensors, format spec).
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
CHUNK_BYTES = 32 * 1024 * 1024  # one preadv call; large enough that the syscall cost vanishes
_HEAD = 8  # little-endian u64 header length
_MADV_POPULATE_READ = 22  # Linux 5.14+; the mmap module has no name for it


class CheckpointError(ValueError):
    """A truncated, corrupt or mismatched weight file; the message names file and tensor."""


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a file: its byte range relative to the data section."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsFile:
    """A checked header: where the data section starts, its length and every tensor in it."""

    path: Path
    data_start: int  # 8 + header length
    data_bytes: int  # the largest end offset (what the data section must hold)
    tensors: dict[str, TensorRecord]
    metadata: dict[str, str] = field(default_factory=dict)


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"corrupt safetensors file {path}: {what}")


def _record(path: Path, name: str, info: object) -> TensorRecord:
    if not isinstance(info, dict):
        raise _corrupt(path, f"tensor {name!r}: header entry is not an object")
    dtype = DTYPES.get(str(info.get("dtype")))
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if dtype is None:
        raise _corrupt(path, f"tensor {name!r}: unknown dtype {info.get('dtype')!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _corrupt(path, f"tensor {name!r}: bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _corrupt(path, f"tensor {name!r}: bad data_offsets {offsets!r}")
    numel = 1
    for d in shape:
        numel *= d
    want = numel * dtype.itemsize
    if offsets[1] - offsets[0] != want:
        raise _corrupt(
            path,
            f"tensor {name!r}: shape {tuple(shape)} of {info['dtype']} needs {want} bytes, "
            f"data_offsets {offsets} hold {offsets[1] - offsets[0]}",
        )
    return TensorRecord(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_header(path: Path | str) -> SafetensorsFile:
    """Parse and check a file's header: valid JSON, known dtypes, byte ranges that match the
    shapes, do not overlap and lie inside the file. ``CheckpointError`` names the file and the
    first tensor at fault (a truncated file: the first tensor that does not fit)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(_HEAD)
            if len(head) < _HEAD:
                raise _corrupt(path, f"only {size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n < 2 or n > MAX_HEADER_BYTES or _HEAD + n > size:
                raise _corrupt(path, f"header length {n} does not fit a {size}-byte file")
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read weight file {path}: {exc}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    records = sorted(
        (_record(path, name, info) for name, info in header.items()), key=lambda r: r.begin
    )
    data_start = _HEAD + n
    end = 0
    for r in records:
        if r.begin < end and r.nbytes:
            raise _corrupt(path, f"tensor {r.name!r} overlaps the tensor before it")
        end = max(end, r.end)
        if data_start + r.end > size:
            raise CheckpointError(
                f"truncated safetensors file {path}: tensor {r.name!r} needs bytes "
                f"{data_start + r.begin}-{data_start + r.end} but the file has {size} "
                f"(expected at least {data_start + records[-1].end})"
            )
    return SafetensorsFile(
        path,
        data_start,
        end,
        {r.name: r for r in records},
        {str(k): str(v) for k, v in meta.items()},
    )


def index_files(directory: Path) -> list[Path] | None:
    """The shards a ``*.safetensors.index.json`` of ``directory`` names (None: no index)."""
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if not indexes:
        return None
    try:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read shard index {indexes[0]}: {exc}") from None
    files = []
    for shard in sorted(set(weight_map.values())):
        p = directory / shard
        if Path(shard).name != shard or not p.is_file():
            raise CheckpointError(f"shard index {indexes[0]} names a missing shard {shard!r}")
        files.append(p)
    return files


def _host_buffer(nbytes: int, pin: bool) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)


@dataclass
class FileRead:
    """One file being read: its header, the buffer its data section lands in, and the reads
    in flight. ``tensors()`` waits for them and gives the views."""

    header: SafetensorsFile
    buffer: torch.Tensor
    futures: list[Future[None]]
    device: torch.device

    def wait(self) -> None:
        for f in self.futures:
            f.result()

    def tensors(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Each tensor as a view of the file's buffer, on ``device`` (one copy on CUDA)."""
        self.wait()
        buf = self.buffer
        if self.device.type != "cpu":
            buf = buf.to(self.device)  # pinned host -> device, one copy
        out = {}
        for name in self.header.tensors if names is None else names:
            r = self.header.tensors[name]
            raw = buf[r.begin : r.end]
            if r.begin % r.dtype.itemsize:  # an unaligned tensor (not written by safetensors)
                raw = raw.clone()
            out[name] = raw.view(r.dtype).view(r.shape)
        return out


def _read_range(fd: int, view: memoryview, offset: int, header: SafetensorsFile, at: int) -> None:
    """Fill ``view`` from the file at ``offset``; a short file names the tensor it cut."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            pos = at + done
            cut = next((r.name for r in header.tensors.values() if r.begin <= pos < r.end), "?")
            raise CheckpointError(
                f"truncated safetensors file {header.path}: tensor {cut!r} ends early "
                f"(read stopped at byte {header.data_start + pos})"
            )
        done += got


_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def read_threads() -> int:
    """Reader threads: ``GENMEDIA_LOAD_THREADS``, else 2 per CPU core (at least 4, at most 16):
    page-cache copies and first touches of fresh memory run in parallel in the kernel."""
    raw = os.environ.get("GENMEDIA_LOAD_THREADS")
    if raw and raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(4, min(16, 2 * (os.cpu_count() or 1)))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(read_threads(), thread_name_prefix="safetensors-read")
        return _POOL


def load_mode() -> str:
    """``GENMEDIA_LOAD_MODE``: ``mmap`` (the default; it applies on the CPU only: tensors are
    private copy-on-write mappings of the file's page-cache pages, populated at load; no copy,
    no fresh memory, pages shared by every replica of the host; a file truncated while mapped
    faults the process, so only for files nothing rewrites in place, as the weight caches here,
    which replace files by rename) or ``read`` (parallel preadv into fresh memory, the mode a
    CUDA device always uses: pinned buffers, one copy to the device)."""
    mode = os.environ.get("GENMEDIA_LOAD_MODE", "mmap").strip().lower() or "mmap"
    if mode not in ("read", "mmap"):
        raise ValueError(f"GENMEDIA_LOAD_MODE must be 'read' or 'mmap', got {mode!r}")
    return mode


def _mapped(h: SafetensorsFile) -> torch.Tensor:
    """The data section as a populated private mapping of the file (``load_mode`` mmap)."""
    fd = os.open(h.path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < h.data_start + h.data_bytes:  # cut after its header was read
            pos = max(0, size - h.data_start)
            cut = next((r.name for r in h.tensors.values() if r.begin <= pos < r.end), "?")
            raise CheckpointError(
                f"truncated safetensors file {h.path}: tensor {cut!r} ends early "
                f"(the file stops at byte {size})"
            )
        mm = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    # map every page now, read-only (MAP_POPULATE on a writable private mapping would copy
    # them all); a write later copies only the page written
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(_MADV_POPULATE_READ)
    return torch.frombuffer(mm, dtype=torch.uint8, offset=h.data_start, count=h.data_bytes)


def start_reads(
    headers: Iterable[SafetensorsFile], device: torch.device | str = "cpu", mode: str | None = None
) -> list[FileRead]:
    """Start reading each file's data section into its own preallocated buffer (pinned on
    CUDA) with ``CHUNK_BYTES`` preadv calls on the shared reader pool; returns at once.
    ``mode`` (default ``load_mode()``) ``mmap`` maps the files instead, on the CPU."""
    device = torch.device(device)
    pin = device.type == "cuda" and torch.cuda.is_available()
    mapped = (mode or load_mode()) == "mmap" and device.type == "cpu"
    reads = []
    for h in headers:
        if mapped and h.data_bytes:
            reads.append(FileRead(h, _mapped(h), [], device))
            continue
        buffer = _host_buffer(h.data_bytes, pin)
        view = buffer.numpy().data if h.data_bytes else memoryview(b"")
        fd = os.open(h.path, os.O_RDONLY)
        futures = []
        for at in range(0, h.data_bytes, CHUNK_BYTES):
            part = view[at : at + CHUNK_BYTES]
            futures.append(_pool().submit(_read_range, fd, part, h.data_start + at, h, at))
        _close_when_done(fd, futures)
        reads.append(FileRead(h, buffer, futures, device))
    return reads


def _close_when_done(fd: int, futures: list[Future[None]]) -> None:
    """Close ``fd`` once every read of it has finished (or failed)."""
    if not futures:
        os.close(fd)
        return
    left = [len(futures)]
    lock = threading.Lock()

    def _done(_f: Future[None]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            os.close(fd)

    for f in futures:
        f.add_done_callback(_done)


def read_files(
    files: Iterable[Path | str], device: torch.device | str = "cpu"
) -> dict[str, tuple[torch.Tensor, Path]]:
    """Every tensor of ``files`` (checked headers, parallel reads) with the file it came from;
    a name in two files is a ``CheckpointError``."""
    reads = start_reads([read_header(f) for f in files], device)
    out: dict[str, tuple[torch.Tensor, Path]] = {}
    for r in reads:
        for name, t in r.tensors().items():
            if name in out:
                raise CheckpointError(
                    f"tensor {name!r} is in both {out[name][1]} and {r.header.path}"
                )
            out[name] = (t, r.header.path)
    return out


def read_state_dict(
    path: Path | str, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """One file's tensors (a LoRA adapter, a single-file component)."""
    return {k: t for k, (t, _) in read_files([path], device).items()}
