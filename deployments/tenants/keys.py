"""API keys: their format, the record a tenants file stores, hashing and checking.

Used on the first stop of every ``/v1`` call (``auth.Authenticator`` finds the tenant of a bearer
key) and by ``genmedia tenants`` when it creates a key. Keys look like ``gm_<key id>_<secret>``:
the key id (8 hex chars) is public and finds the record, the file stores only ``sha256:<hex>`` of
the whole key. The keys are random with 190+ bits of entropy, so a plain SHA-256 is the standard
choice (a slow password hash adds nothing here); hashes are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

KEY_PREFIX = "gm_"
_KEY_RE = re.compile(r"^gm_([0-9a-f]{8})_([A-Za-z0-9_-]{32,128})$")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class ApiKeyRecord(BaseModel):
    """One API key of a tenant, as stored: its public id and the hash of the whole key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        pattern=r"^[0-9a-f]{8}$",
        description="Public key id: the 8 hex chars after 'gm_' in the key; finds the record.",
    )
    hash: str = Field(
        description="'sha256:<64 hex>' of the whole key 'gm_<id>_<secret>'; never the key itself."
    )
    created_at: datetime | None = Field(
        default=None, description="When the key was created (UTC, ISO 8601); informational."
    )
    description: str = Field(
        default="", max_length=500, description="Free text: who or what uses this key."
    )

    @field_validator("id", mode="before")
    @classmethod
    def _id_is_text(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError("YAML read this key id as a number: quote it, e.g. id: '01234567'")
        return v

    @field_validator("hash", mode="before")
    @classmethod
    def _hash_format(cls, v: object) -> object:
        if isinstance(v, str) and v.startswith(KEY_PREFIX):
            raise ValueError(
                "looks like a plaintext key; store only its hash (genmedia tenants add-key)"
            )
        if not isinstance(v, str) or not _HASH_RE.match(v):
            raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits")
        return v


def hash_api_key(key: str) -> str:
    """The stored form of a key: 'sha256:<hex>' of the whole key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def parse_api_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key 'gm_<8 hex>_<32-128 url-safe chars>', else None."""
    m = _KEY_RE.match(key)
    return (m.group(1), m.group(2)) if m else None


def verify_api_key(key: str, record: ApiKeyRecord) -> bool:
    """Whether ``key`` is the key of ``record`` (constant-time hash comparison)."""
    return hmac.compare_digest(hash_api_key(key).encode(), record.hash.encode())


def key_record(key: str, description: str = "", now: datetime | None = None) -> ApiKeyRecord:
    """The record to store for a well-formed plaintext key (ValueError otherwise)."""
    parsed = parse_api_key(key)
    if parsed is None:
        raise ValueError("not a well-formed key: expected gm_<8 hex>_<32+ url-safe characters>")
    created = (now or datetime.now(UTC)).replace(microsecond=0)
    return ApiKeyRecord(
        id=parsed[0], hash=hash_api_key(key), created_at=created, description=description
    )


def new_api_key(description: str = "") -> tuple[str, str, ApiKeyRecord]:
    """A fresh random key: (key id, plaintext key, record to store). Show the plaintext once."""
    key_id = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"  # 43 chars, 256 bits
    return key_id, key, key_record(key, description)
