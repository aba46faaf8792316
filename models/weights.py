"""Weight sources and weight-file safety.

Where this sits in a request's way: the family worker calls ``resolve_source`` once at replica
start to turn a catalog entry's ``source`` (``tiny://sd15``, ``s3://bucket/prefix``,
``file:///path`` or a plain path) into a local checkpoint directory, then the family module's
``load_pipeline`` (which calls ``check_safetensors_only`` again) loads it. Requests never reach
this module; a failure here means the replica does not start.

Only safetensors checkpoints are accepted: any pickle-format weight file (``.ckpt``, ``.bin``,
``.pt``, ``.pth``, ``.pkl``) anywhere in a checkpoint is refused, because unpickling runs code;
every safetensors header is checked whole (``safetensors_io.read_header``), so a truncated or
corrupt file is refused here, naming the file and the tensor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from genmedia.models.family import FamilySpec
from genmedia.models.registry import FAMILIES, FAMILY_MODULES, family_module, family_spec

__all__ = [
    "FAMILY_MODULES",
    "PICKLE_SUFFIXES",
    "TINY_MARKER",
    "WeightsError",
    "check_safetensors_only",
    "family_module",
    "genmedia_home",
    "resolve_source",
    "s3_cache_dir",
    "save_pipeline_atomically",
    "tiny_cache_dir",
]

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
S3_MANIFEST = ".genmedia-s3-manifest.json"
TINY_MARKER = "genmedia-tiny.json"
_PART_MARKER = ".genmedia-part-"
_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# A safetensors file starts with an 8-byte little-endian header length, then a JSON object.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class WeightsError(Exception):
    """A weight source cannot be resolved or a checkpoint is unsafe/unusable."""


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def genmedia_home() -> Path:
    """``$GENMEDIA_HOME``, default ``~/.cache/genmedia``."""
    raw = os.environ.get("GENMEDIA_HOME") or "~/.cache/genmedia"
    return Path(os.path.expandvars(raw)).expanduser()


def tiny_cache_dir() -> Path:
    """Where ``tiny://<family>`` checkpoints are built: ``$GENMEDIA_HOME/tiny``."""
    return genmedia_home() / "tiny"


def s3_cache_dir() -> Path:
    """Where ``s3://`` checkpoints are mirrored: ``$GENMEDIA_HOME/s3``."""
    return genmedia_home() / "s3"


# --------------------------------------------------------------------------------------------
# Safety check
# --------------------------------------------------------------------------------------------


def _is_pickle_name(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def _check_safetensors_header(file: Path) -> None:
    try:
        with file.open("rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise WeightsError(f"cannot read weight file {file}: {exc}") from exc
    if len(head) < 9:
        raise WeightsError(f"{file} is not a valid safetensors file (only {len(head)} bytes)")
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] != b"{" or header_len < 2 or header_len > _MAX_SAFETENSORS_HEADER:
        raise WeightsError(
            f"{file} is not a valid safetensors file (bad header; a Git LFS pointer or a "
            "renamed pickle?)"
        )
    from genmedia.models.safetensors_io import CheckpointError, read_header  # imports torch

    try:  # the whole header: dtypes, shapes, byte ranges inside the file (truncation)
        read_header(file)
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from None


def check_safetensors_only(path: Path) -> None:
    """Refuse a checkpoint unless all its weights are safetensors.

    Raises WeightsError if ``path`` does not exist, if any pickle-format weight file
    (``PICKLE_SUFFIXES``) exists anywhere under it, if it holds no ``*.safetensors`` file, or if
    a ``*.safetensors`` file does not start with a safetensors header.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights path does not exist: {path}")
    if path.is_file():
        files = [path]
    else:
        files = []
        for root, dirs, names in os.walk(path, followlinks=True):
            dirs.sort()
            files.extend(Path(root) / n for n in sorted(names))
    pickles = [f for f in files if _is_pickle_name(f.name)]
    if pickles:
        listed = ", ".join(str(f) for f in pickles[:5])
        more = f" (and {len(pickles) - 5} more)" if len(pickles) > 5 else ""
        raise WeightsError(
            f"refusing pickle-format weight file(s) {listed}{more}: only .safetensors "
            "weights are allowed (convert the checkpoint to safetensors)"
        )
    safetensors = [f for f in files if f.name.endswith(".safetensors")]
    if not safetensors:
        raise WeightsError(f"no *.safetensors weight files found under {path}")
    for f in safetensors:
        _check_safetensors_header(f)


# --------------------------------------------------------------------------------------------
# Atomic writes and locking
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (several replicas on one host may resolve the same source)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _move_dir_into_place(tmp_dir: Path, out_dir: Path) -> None:
    """Rename ``tmp_dir`` to ``out_dir``; an existing ``out_dir`` is replaced."""
    try:
        os.rename(tmp_dir, out_dir)  # atomic; also succeeds over an empty directory
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    trash = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out_dir, trash)
    os.rename(tmp_dir, out_dir)
    shutil.rmtree(trash, ignore_errors=True)


def save_pipeline_atomically(
    pipe: Any, out_dir: Path, extra_json: dict[str, dict[str, Any]] | None = None
) -> None:
    """``pipe.save_pretrained`` into a temp dir next to ``out_dir``, then rename it into place.

    ``extra_json`` maps file names to JSON objects written alongside (e.g. ``TINY_MARKER``).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        pipe.save_pretrained(tmp_dir, safe_serialization=True)
        for name, obj in (extra_json or {}).items():
            (tmp_dir / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        tmp_dir.chmod(0o755)  # mkdtemp creates 0700
        _move_dir_into_place(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# Source resolution
# --------------------------------------------------------------------------------------------


def _notify(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _tiny_is_current(path: Path, spec: FamilySpec) -> bool:
    marker = path / TINY_MARKER
    if not (path / "model_index.json").is_file() or not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("family") == spec.name and info.get("version") == spec.tiny_version


def _resolve_tiny(
    source: str,
    family: str,
    *,
    build_missing_tiny: bool,
    progress: Callable[[str], None] | None,
) -> Path:
    if family not in FAMILY_MODULES:
        raise WeightsError(
            f"unknown model family in {source!r}; known families: {', '.join(sorted(FAMILIES))}"
        )
    spec = family_spec(family)
    path = tiny_cache_dir() / family
    if _tiny_is_current(path, spec):
        return path
    if not build_missing_tiny:
        raise WeightsError(
            f"tiny checkpoint for {source} is not built at {path} and building is disabled "
            "(build it first, e.g. resolve it once with build_missing_tiny=True)"
        )
    with _file_lock(tiny_cache_dir() / f".{family}.lock"):
        if not _tiny_is_current(path, spec):  # another process may have built it meanwhile
            _notify(progress, f"building tiny {family} checkpoint at {path}")
            spec.build_tiny(path)
            _notify(progress, f"built tiny {family} checkpoint at {path}")
    return path


def _resolve_local(source: str) -> Path:
    raw = source
    if source.startswith("file://"):
        raw = source[len("file://") :]
        if raw.startswith("localhost/"):
            raw = raw[len("localhost") :]
    path = Path(os.path.expanduser(os.path.expandvars(raw)))
    if not path.exists():
        raise WeightsError(f"weights path does not exist: {path} (from source {source!r})")
    return path.resolve()


def _s3_endpoint(explicit: str | None) -> str | None:
    return (
        explicit
        or os.environ.get("GENMEDIA_S3_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


def _s3_relative_key(source: str, key: str, prefix: str) -> str | None:
    rel = key[len(prefix) :] if prefix else key
    rel = rel.lstrip("/")
    if not rel or key.endswith("/"):
        return None  # the prefix itself or a "folder" marker object
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or rel.startswith("/"):
        raise WeightsError(f"refusing S3 key {key!r} under {source}: unsafe path component")
    if parts[-1] == S3_MANIFEST or parts[-1].startswith(_PART_MARKER):
        raise WeightsError(f"refusing S3 key {key!r} under {source}: reserved file name")
    return rel


def _load_manifest(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    objects = data.get("objects") if isinstance(data, dict) else None
    return objects if isinstance(objects, dict) else {}


def _write_manifest(path: Path, source: str, objects: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_name(f"{_PART_MARKER}{uuid.uuid4().hex[:8]}-{path.name}")
    tmp.write_text(json.dumps({"source": source, "objects": objects}, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _s3_listing(
    source: str, bucket: str, prefix: str, endpoint: str | None
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """An S3 client and, per relative path, the key, size and ETag of every object under the
    prefix: the whole listing is checked (unsafe keys, pickle weights, no safetensors) before
    anything is downloaded."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:  # pragma: no cover - boto3 is a dependency
        raise WeightsError(f"boto3 is required for {source}: {exc}") from exc

    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        objects: list[dict[str, Any]] = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
            objects.extend(page.get("Contents", []))
    except (BotoCoreError, ClientError) as exc:
        where = f" at {endpoint}" if endpoint else ""
        raise WeightsError(f"cannot list {source}{where}: {exc}") from exc
    wanted: dict[str, dict[str, Any]] = {}
    for obj in sorted(objects, key=lambda o: o["Key"]):
        key = obj["Key"]
        rel = _s3_relative_key(source, key, prefix)
        if rel is None:
            continue
        if _is_pickle_name(key):
            raise WeightsError(
                f"refusing pickle-format weight file s3://{bucket}/{key} in {source}: only "
                ".safetensors weights are allowed (nothing was downloaded)"
            )
        wanted[rel] = {"key": key, "size": int(obj["Size"]), "etag": obj["ETag"].strip('"')}
    if not any(rel.endswith(".safetensors") for rel in wanted):
        raise WeightsError(
            f"no *.safetensors objects under {source}"
            + (" (the prefix is empty)" if not wanted else "")
        )
    return client, wanted


def _drop_stale(local_dir: Path, manifest: dict[str, dict[str, Any]], wanted: dict) -> None:
    """Remove files a previous version of this prefix had and the current one lacks, and
    leftovers of interrupted downloads."""
    for rel in sorted(set(manifest) - set(wanted)):
        with contextlib.suppress(OSError):
            (local_dir / rel).unlink()
        manifest.pop(rel, None)
    for leftover in local_dir.rglob(f"{_PART_MARKER}*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _is_mirrored(dest: Path, known: dict[str, Any] | None, info: dict[str, Any]) -> bool:
    """True when ``dest`` is the object the manifest recorded (same size and ETag)."""
    return (
        known is not None
        and known.get("size") == info["size"]
        and known.get("etag") == info["etag"]
        and dest.is_file()
        and dest.stat().st_size == info["size"]
    )


def _download(client: Any, bucket: str, info: dict[str, Any], dest: Path) -> None:
    """One object to ``dest`` through a temporary file, its size checked."""
    from botocore.exceptions import BotoCoreError, ClientError

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{_PART_MARKER}{uuid.uuid4().hex[:8]}-{dest.name}")
    try:
        client.download_file(bucket, info["key"], str(tmp))
        got = tmp.stat().st_size
        if got != info["size"]:
            raise WeightsError(
                f"size mismatch downloading s3://{bucket}/{info['key']}: "
                f"expected {info['size']} bytes, got {got}"
            )
        os.replace(tmp, dest)
    except (BotoCoreError, ClientError) as exc:
        raise WeightsError(f"cannot download s3://{bucket}/{info['key']}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _resolve_s3(
    source: str,
    *,
    progress: Callable[[str], None] | None,
    s3_endpoint_url: str | None,
) -> Path:
    rest = source[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise WeightsError(f"S3 source {source!r} has no bucket name")
    endpoint = _s3_endpoint(s3_endpoint_url)
    local_dir = s3_cache_dir() / bucket / prefix if prefix else s3_cache_dir() / bucket
    client, wanted = _s3_listing(source, bucket, prefix, endpoint)

    with _file_lock(s3_cache_dir() / ".locks" / f"{bucket}--{prefix.replace('/', '--')}.lock"):
        local_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = local_dir / S3_MANIFEST
        manifest = _load_manifest(manifest_path)
        original = json.loads(json.dumps(manifest))
        _drop_stale(local_dir, manifest, wanted)
        total = len(wanted)
        for i, (rel, info) in enumerate(wanted.items(), start=1):
            dest = local_dir / rel
            if _is_mirrored(dest, manifest.get(rel), info):
                continue
            _notify(
                progress,
                f"downloading s3://{bucket}/{info['key']} ({i}/{total}, {info['size']} bytes)",
            )
            _download(client, bucket, info, dest)
            manifest[rel] = {"size": info["size"], "etag": info["etag"]}
            _write_manifest(manifest_path, source, manifest)
        if manifest != original or not manifest_path.exists():
            _write_manifest(manifest_path, source, manifest)
    return local_dir


def resolve_source(
    source: str,
    *,
    build_missing_tiny: bool = True,
    progress: Callable[[str], None] | None = None,
    s3_endpoint_url: str | None = None,
) -> Path:
    """Turn a weight source into a local, safety-checked checkpoint directory.

    * ``tiny://<family>``: ``tiny_cache_dir()/<family>``, built with the family's
      ``build_tiny`` when missing (or raise if ``build_missing_tiny`` is False).
    * ``s3://bucket/prefix``: every object under the prefix is mirrored to
      ``$GENMEDIA_HOME/s3/<bucket>/<prefix>``; objects already there with the same size and
      ETag (recorded in a JSON manifest) are not downloaded again; pickle-format keys are
      refused before anything is downloaded. Endpoint: ``s3_endpoint_url``, else
      ``$GENMEDIA_S3_ENDPOINT_URL``, else ``$AWS_ENDPOINT_URL``, else AWS.
    * ``file:///path`` or a plain path (``~`` and ``$VARS`` expanded).

    Always finishes with ``check_safetensors_only``; raises WeightsError on any problem.
    """
    if not isinstance(source, str) or not source.strip():
        raise WeightsError(f"empty weight source: {source!r}")
    source = source.strip()
    match = _SCHEME_RE.match(source)
    scheme = match.group(1).lower() if match else None
    if match is not None and scheme == "tiny":
        family = source[len(match.group(0)) :].strip("/")
        path = _resolve_tiny(
            source, family, build_missing_tiny=build_missing_tiny, progress=progress
        )
    elif scheme == "s3":
        path = _resolve_s3(source, progress=progress, s3_endpoint_url=s3_endpoint_url)
    elif scheme == "file" or scheme is None:
        path = _resolve_local(source)
    else:
        raise WeightsError(
            f"unsupported weight source {source!r}: use tiny://<family>, s3://bucket/prefix, "
            "file:///path or a local path"
        )
    check_safetensors_only(path)
    return path
