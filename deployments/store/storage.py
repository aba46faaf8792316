"""Output storage: where the gateway puts generated files and their JSON sidecars.

Last step of a request's way before the response: a local directory on the gateway's node by
default (served back by ``GET /v1/files/{path}``), or an S3 bucket through boto3 (any
S3-compatible endpoint; the response carries presigned URLs). No Ray imports.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol

from genmedia.models.catalog import LocalStorage, S3Storage


class StorageError(Exception):
    """A file could not be stored or read."""


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def url(self, key: str, base_url: str) -> str: ...


def safe_key(key: str) -> str:
    """A storage key that cannot climb out of the storage root; ValueError otherwise."""
    p = PurePosixPath(key)
    if p.is_absolute() or not p.parts or any(part in ("..", "", ".") for part in p.parts):
        raise ValueError(f"invalid file path {key!r}")
    if "\\" in key or "\x00" in key:
        raise ValueError(f"invalid file path {key!r}")
    return str(p)


class LocalDirStorage:
    """Files in a directory; written atomically (temp file + rename)."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / safe_key(key)).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"invalid file path {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/v1/files/{key}"


class S3BucketStorage:
    """Files in an S3 bucket under a prefix; URLs are presigned GETs."""

    def __init__(self, cfg: S3Storage):
        import boto3

        self.cfg = cfg
        endpoint = cfg.endpoint_url or os.environ.get("GENMEDIA_S3_ENDPOINT_URL")
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=cfg.region)

    def _key(self, key: str) -> str:
        return f"{self.cfg.prefix.strip('/')}/{safe_key(key)}".lstrip("/")

    def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self.client.put_object(
                Bucket=self.cfg.bucket, Key=self._key(key), Body=data, ContentType=content_type
            )
        except Exception as e:  # botocore errors carry the useful message
            raise StorageError(f"s3://{self.cfg.bucket}/{self._key(key)}: {e}") from e

    def get(self, key: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.cfg.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        return obj["Body"].read()

    def url(self, key: str, base_url: str) -> str:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.cfg.bucket, "Key": self._key(key)},
            ExpiresIn=self.cfg.url_expiry_s,
        )


def make_storage(cfg: LocalStorage | S3Storage, resolve_path) -> Storage:
    """The storage a catalog's ``server.storage`` describes (``resolve_path`` maps local dirs)."""
    if isinstance(cfg, S3Storage):
        return S3BucketStorage(cfg)
    return LocalDirStorage(resolve_path(cfg.dir))
