"""Output storage: where the gateway puts generated files and their JSON sidecars.

Last step of a request's way before the response: a local directory on the gateway's node by
default (served back by ``GET /v1/files/{path}``; its URLs are signed and expire, so they work
without the API key: ``UrlSigner``), or an S3 bucket through boto3 (any S3-compatible endpoint;
the response carries presigned URLs). Retention
(``store/retention.py``) lists and deletes through the same interface. A write that finds the
disk full raises ``StorageFull``, which the gateway answers 507 (uploads) / 503 (submits) and the
worker's job ends FAILED on. No Ray imports.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import quote

from genmedia.models.catalog import LocalStorage, S3Storage


class StorageError(Exception):
    """A file could not be stored or read."""


class StorageFull(StorageError):
    """A write failed because the volume (or the user's disk quota) is full."""


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# What class of file a key holds (its second part): retention and S3 lifecycle rules go by it.
UPLOADS, INPUTS, OUTPUTS = "uploads", "inputs", "outputs"
ADAPTERS = "adapters"  # LoRA files fetched from URLs (``_loras/``): kept while registered


def key_class(key: str) -> str:
    """``uploads`` (POST /v1/files), ``inputs`` (inline images of a job), ``adapters`` (LoRA
    files fetched from URLs, under ``_loras/``: no lifecycle rule deletes them) or
    ``outputs``."""
    if key.startswith("_loras/"):
        return ADAPTERS
    parts = key.split("/", 2)
    if len(parts) > 2 and parts[1] in (UPLOADS, INPUTS):
        return parts[1]
    return OUTPUTS


@dataclass(frozen=True)
class StoredObject:
    """One stored file as a listing shows it."""

    key: str
    size: int
    modified: float  # POSIX seconds


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def url(self, key: str, base_url: str) -> str: ...

    def delete(self, key: str) -> bool:
        """Remove a file; False when there was none."""
        ...

    def list_files(self, prefix: str) -> Iterator[StoredObject]:
        """Every file whose key starts with ``prefix`` (``""`` or a path ending in ``/``)."""
        ...

    def children(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (``""`` or a path ending in ``/``): the
        tenants at the top, the dates and classes below a tenant."""
        ...


def _check_prefix(prefix: str) -> str:
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise ValueError(f"invalid prefix {prefix!r}: it must end with '/'")
    return safe_key(prefix.rstrip("/")) + "/"


def safe_key(key: str) -> str:
    """A storage key that cannot climb out of the storage root; ValueError otherwise."""
    p = PurePosixPath(key)
    if p.is_absolute() or not p.parts or any(part in ("..", "", ".") for part in p.parts):
        raise ValueError(f"invalid file path {key!r}")
    if "\\" in key or "\x00" in key:
        raise ValueError(f"invalid file path {key!r}")
    return str(p)


URL_SECRET_ENV = "GENMEDIA_URL_SECRET"  # the signing secret; else a file in GENMEDIA_HOME
URL_SECRET_FILE = "url-signing.key"
MIN_SECRET_CHARS = 32


class SignatureError(ValueError):
    """A signed file URL that is not valid (``reason``: expired, bad_signature, malformed)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_url_secret(home: Path | None = None) -> bytes:
    """The server's URL-signing secret: ``$GENMEDIA_URL_SECRET`` (at least 32 characters), else
    ``GENMEDIA_HOME/url-signing.key``, made once (random, mode 0600; replicas on one node
    share it; on several nodes set the variable)."""
    env = os.environ.get(URL_SECRET_ENV)
    if env:
        if len(env) < MIN_SECRET_CHARS:
            raise ValueError(f"{URL_SECRET_ENV} must be at least {MIN_SECRET_CHARS} characters")
        return env.encode()
    if home is None:
        from genmedia.models.weights import genmedia_home

        home = genmedia_home()
    path = home / URL_SECRET_FILE
    if not path.is_file():
        home.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".tmp-key-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.link(tmp, path)  # atomic, and never replaces a secret another process made
        except FileExistsError:
            pass
        finally:
            Path(tmp).unlink(missing_ok=True)
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"{path} holds fewer than {MIN_SECRET_CHARS} characters")
    return secret.encode()


class UrlSigner:
    """Signed, expiring file URLs: ``?expires=<unix s>&sig=<HMAC-SHA256 hex>`` over the storage
    key and the expiry, with the server's secret (bytes, or a loader called on first use: a
    worker, which never signs, never reads it)."""

    def __init__(
        self,
        secret: bytes | Callable[[], bytes],
        expiry_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret, self.expiry_s, self.clock = secret, expiry_s, clock

    @property
    def secret(self) -> bytes:
        if callable(self._secret):
            self._secret = self._secret()
        return self._secret

    def _mac(self, key: str, expires: int) -> str:
        msg = f"{key}\n{expires}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def query(self, key: str) -> str:
        """The query string of a new URL of ``key`` (valid for ``expiry_s``)."""
        expires = int(self.clock()) + self.expiry_s
        return f"expires={expires}&sig={self._mac(key, expires)}"

    def verify(self, key: str, expires: str | None, sig: str | None) -> None:
        """SignatureError unless ``sig`` signs ``key`` until ``expires``, not passed yet."""
        if not expires or not sig or not expires.isdigit() or len(expires) > 12:
            raise SignatureError(
                "malformed", "a signed URL needs both 'expires' (unix seconds) and 'sig'"
            )
        if not hmac.compare_digest(self._mac(key, int(expires)), sig.lower()):
            raise SignatureError("bad_signature", "the URL's signature does not match its path")
        if int(expires) < self.clock():
            raise SignatureError("expired", f"the signed URL expired at {expires} (unix time)")


class LocalDirStorage:
    """Files in a directory; written atomically (temp file + rename). With a ``signer``, its
    URLs are signed and expire (readable without the API key)."""

    def __init__(self, root: Path, signer: UrlSigner | None = None):
        self.root = root
        self.signer = signer
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()  # once: every key's path is checked against it

    def _path(self, key: str) -> Path:
        path = (self.root / safe_key(key)).resolve()
        if not path.is_relative_to(self._real_root):
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
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
                raise StorageFull(f"no space left to store {key!r} under {self.root}") from e
            raise

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):
            return False
        # drop the directories the file leaves empty (a job's, a date's), never the root
        root = self.root.resolve()
        parent = path.parent
        while parent != root and parent.is_relative_to(root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    def _dir(self, prefix: str) -> Path:
        prefix = _check_prefix(prefix)
        return self._path(prefix.rstrip("/")) if prefix else self.root.resolve()

    def list_files(self, prefix: str) -> Iterator[StoredObject]:
        top = self._dir(prefix)
        root = self.root.resolve()
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".tmp-"):
                    continue  # a write in flight
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                yield StoredObject(path.relative_to(root).as_posix(), st.st_size, st.st_mtime)

    def children(self, prefix: str) -> list[str]:
        top = self._dir(prefix)
        if not top.is_dir():
            return []
        return sorted(p.name for p in top.iterdir() if p.is_dir())

    def url(self, key: str, base_url: str) -> str:
        url = f"{base_url.rstrip('/')}/v1/files/{quote(key)}"
        return url if self.signer is None else f"{url}?{self.signer.query(key)}"


LIFECYCLE_TAG = "genmedia-class"


class S3BucketStorage:
    """Files in an S3 bucket under a prefix; URLs are presigned GETs."""

    def __init__(self, cfg: S3Storage):
        import boto3

        self.cfg = cfg
        endpoint = cfg.endpoint_url or os.environ.get("GENMEDIA_S3_ENDPOINT_URL")
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=cfg.region)

    def _root(self) -> str:
        root = self.cfg.prefix.strip("/")
        return f"{root}/" if root else ""

    def _key(self, key: str) -> str:
        return f"{self._root()}{safe_key(key)}"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self.client.put_object(
                Bucket=self.cfg.bucket,
                Key=self._key(key),
                Body=data,
                ContentType=content_type,
                # the bucket's lifecycle rules (infra/s3-lifecycle.json) expire by this tag
                Tagging=f"{LIFECYCLE_TAG}={key_class(key)}",
            )
        except Exception as e:  # botocore errors carry the useful message
            raise StorageError(f"s3://{self.cfg.bucket}/{self._key(key)}: {e}") from e

    def delete(self, key: str) -> bool:
        full = self._key(key)
        try:
            self.client.head_object(Bucket=self.cfg.bucket, Key=full)
        except Exception:
            return False
        try:
            self.client.delete_object(Bucket=self.cfg.bucket, Key=full)
        except Exception as e:
            raise StorageError(f"s3://{self.cfg.bucket}/{full}: {e}") from e
        return True

    def _pages(self, prefix: str, **kw: object) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._root() + _check_prefix(prefix)
        try:
            yield from paginator.paginate(Bucket=self.cfg.bucket, Prefix=full, **kw)
        except Exception as e:
            raise StorageError(f"s3://{self.cfg.bucket}/{full}: {e}") from e

    def list_files(self, prefix: str) -> Iterator[StoredObject]:
        cut = len(self._root())
        for page in self._pages(prefix):
            for obj in page.get("Contents", []):
                yield StoredObject(
                    obj["Key"][cut:], int(obj["Size"]), obj["LastModified"].timestamp()
                )

    def children(self, prefix: str) -> list[str]:
        cut = len(self._root() + _check_prefix(prefix))
        names = set()
        for page in self._pages(prefix, Delimiter="/"):
            for p in page.get("CommonPrefixes", []):
                names.add(p["Prefix"][cut:].rstrip("/"))
        return sorted(names)

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
    return LocalDirStorage(resolve_path(cfg.dir), UrlSigner(load_url_secret, cfg.url_expiry_s))
