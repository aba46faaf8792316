"""Tenants, API keys, authorization and rate limits: who may call genmedia, and how much.

First stop of every ``/v1`` call: the gateway authenticates the ``Authorization: Bearer`` key
(401), authorizes the model and priority class (403) and applies the tenant's rate limit (429)
before a request is validated or queued. The scheduler reads the tenant's weight and quotas;
webhooks are signed with its secret. Pure: no Ray, no torch, no I/O beyond reading the file.

Keys look like ``gm_<key id>_<secret>``: the key id (8 hex chars) is public and finds the record,
the file stores only ``sha256:<hex>`` of the whole key. The keys are random with 190+ bits of
entropy, so a plain SHA-256 is the standard choice (a slow password hash adds nothing here);
hashes are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from genmedia.deployments.api.errors import ApiError
from genmedia.models.config_issues import field_errors, loc

PriorityClass = Literal["interactive", "batch"]
PRIORITY_CLASSES: tuple[str, ...] = ("interactive", "batch")
DEV_TENANT_ID = "dev"
DEV_KEY_ENV = "GENMEDIA_DEV_API_KEY"
DEV_WEBHOOK_SECRET_ENV = "GENMEDIA_DEV_WEBHOOK_SECRET"
KEY_PREFIX = "gm_"
_KEY_RE = re.compile(r"^gm_([0-9a-f]{8})_([A-Za-z0-9_-]{32,128})$")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

TenantId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="Tenant id: lowercase letters, digits, '.', '_' and '-' (like model ids).",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKeyRecord(_Strict):
    """One API key of a tenant, as stored: its public id and the hash of the whole key."""

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


class Quotas(_Strict):
    """Limits that keep one tenant from taking the cluster."""

    max_concurrent_jobs: int = Field(
        default=8, ge=1, le=10_000, description="Jobs of this tenant running at once on workers."
    )
    requests_per_minute: int = Field(
        default=600,
        ge=1,
        le=1_000_000,
        description="Token-bucket rate limit of /v1 calls: bursts up to this many, refilled at "
        "this many per minute; beyond it 429 with Retry-After.",
    )
    max_queued_jobs: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Accepted jobs of this tenant waiting in the queue; beyond it submit is 429.",
    )


class Tenant(_Strict):
    """One tenant: its keys, its fair share, what it may use and how much."""

    id: TenantId
    api_keys: list[ApiKeyRecord] = Field(
        default_factory=list,
        description="API keys (hashed); a tenant without keys cannot call the API.",
    )
    weight: float = Field(
        default=1.0,
        gt=0.0,
        le=1000.0,
        description="Fair-share weight inside a priority class: throughput shares between "
        "backlogged tenants are proportional to it.",
    )
    allowed_classes: list[PriorityClass] = Field(
        default_factory=lambda: list(PRIORITY_CLASSES),
        min_length=1,
        description="Priority classes the tenant may ask for: 'interactive' (latency) and/or "
        "'batch' (throughput).",
    )
    default_class: PriorityClass = Field(
        default="interactive",
        description="Class of requests that name none; must be among allowed_classes "
        "(default: 'interactive' if allowed, else the first allowed class).",
    )
    allowed_models: list[str] | None = Field(
        default=None, description="Model ids the tenant may use; left out: every model served."
    )
    quotas: Quotas = Field(default_factory=Quotas, description="Concurrency, rate and queue caps.")
    admin: bool = Field(
        default=False,
        description="May register and delete LoRA adapters (POST/DELETE /v1/admin/loras).",
    )
    webhook_secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        repr=False,
        description="Shared secret for the HMAC-SHA256 signature of completion webhooks; without "
        "it webhooks are sent unsigned.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_class_from_allowed(cls, data: object) -> object:
        if isinstance(data, dict) and "default_class" not in data:
            allowed = data.get("allowed_classes")
            if isinstance(allowed, list) and allowed and "interactive" not in allowed:
                return {**data, "default_class": allowed[0]}
        return data

    @field_validator("allowed_classes")
    @classmethod
    def _unique_classes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists a class twice")
        return v

    @field_validator("default_class")
    @classmethod
    def _default_allowed(cls, v: str, info: ValidationInfo) -> str:
        allowed = info.data.get("allowed_classes")
        if allowed is not None and v not in allowed:
            raise ValueError(f"{v!r} is not among allowed_classes {allowed}")
        return v

    @field_validator("allowed_models")
    @classmethod
    def _models_listed(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("must list at least one model id (or be left out for every model)")
        return v

    def allows_class(self, priority_class: str) -> bool:
        return priority_class in self.allowed_classes

    def allows_model(self, model_id: str) -> bool:
        return self.allowed_models is None or model_id in self.allowed_models


def _conflicts(tenants: list[Tenant]) -> list[tuple[str, str, str]]:
    """Cross-tenant clashes as (tenant id, field, message): duplicate tenant/key ids and hashes."""
    found: list[tuple[str, str, str]] = []
    tenant_seen: set[str] = set()
    key_owner: dict[str, str] = {}
    hash_owner: dict[str, str] = {}
    for t in tenants:
        if t.id in tenant_seen:
            found.append((t.id, "id", "duplicate tenant id"))
        tenant_seen.add(t.id)
        for i, k in enumerate(t.api_keys):
            if k.id in key_owner:
                found.append(
                    (t.id, f"api_keys.{i}.id", f"key id {k.id} is also used by {key_owner[k.id]!r}")
                )
            else:
                key_owner[k.id] = t.id
            if k.hash in hash_owner:
                found.append(
                    (t.id, f"api_keys.{i}.hash", f"same key hash as one of {hash_owner[k.hash]!r}")
                )
            else:
                hash_owner[k.hash] = t.id
    return found


class TenantsFile(_Strict):
    """A tenants file: the format version and the tenants."""

    version: Literal[1] = Field(default=1, description="Tenants file format version.")
    tenants: list[Tenant] = Field(min_length=1, description="The tenants allowed to call the API.")
    source: str | None = Field(
        default=None, exclude=True, description="File the tenants were read from (set on load)."
    )

    @model_validator(mode="after")
    def _no_conflicts(self) -> TenantsFile:
        found = _conflicts(self.tenants)
        if found:
            raise PydanticCustomError(
                "tenants_conflict",
                "; ".join(f"tenant {t!r}: {f}: {m}" for t, f, m in found),
            )
        return self

    def tenant(self, tenant_id: str) -> Tenant | None:
        return next((t for t in self.tenants if t.id == tenant_id), None)


# -- errors ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TenantsIssue:
    """One problem found in a tenants file, located by file, tenant id and field."""

    file: str
    tenant_id: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"tenant {self.tenant_id!r}" if self.tenant_id else "tenants file"
        return f"{self.file}: {where}: {self.field}: {self.message}"


class TenantsError(Exception):
    """Every issue found in a tenants file."""

    def __init__(self, issues: list[TenantsIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def parse_tenants(data: object, file: str = "<tenants>") -> TenantsFile:
    """Validate tenants data; raise TenantsError listing every issue found."""
    if not isinstance(data, dict):
        raise TenantsError([TenantsIssue(file, None, "(root)", "must be a mapping")])
    issues: list[TenantsIssue] = []
    valid: list[Tenant] = []
    raw_tenants = data.get("tenants")
    if isinstance(raw_tenants, list):
        for i, raw in enumerate(raw_tenants):
            tid = raw.get("id") if isinstance(raw, dict) else None
            tid = tid if isinstance(tid, str) else f"#{i}"
            try:
                valid.append(Tenant.model_validate(raw))
            except ValidationError as e:
                issues += [TenantsIssue(file, tid, f, m) for f, m in field_errors(e)]
    seen: set[str] = set()
    for raw in raw_tenants if isinstance(raw_tenants, list) else ():
        tid = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(tid, str):
            if tid in seen:
                issues.append(TenantsIssue(file, tid, "id", "duplicate tenant id"))
            seen.add(tid)
    issues += [TenantsIssue(file, t, f, m) for t, f, m in _conflicts(valid) if f != "id"]
    tenants_file = None
    try:
        tenants_file = TenantsFile.model_validate({**data, "source": file})
    except ValidationError as e:
        for err in e.errors():
            if err["loc"][:1] == ("tenants",) and len(err["loc"]) > 1:
                continue  # already reported per tenant above
            if err["type"] == "tenants_conflict":
                continue  # already reported per key above
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            issues.append(TenantsIssue(file, None, loc(err["loc"]), msg))
    if issues:
        raise TenantsError(issues)
    assert tenants_file is not None
    return tenants_file


def read_tenants_data(path: str | Path) -> tuple[str, object]:
    """The resolved file name and the parsed YAML of a tenants file; TenantsError if unreadable."""
    file = str(Path(path).resolve())
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise TenantsError(
            [TenantsIssue(str(path), None, "(file)", e.strerror or str(e))]
        ) from None
    try:
        return file, yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        raise TenantsError([TenantsIssue(file, None, where, f"invalid YAML: {e}")]) from None


def load_tenants(path: str | Path | None = None) -> TenantsFile:
    """Read and validate a tenants file; None: the development default (see development_tenants).

    With None the dev key is only knowable through $GENMEDIA_DEV_API_KEY; a caller that must print
    the key calls ``development_tenants()`` itself, once, and hands the file to every replica.
    """
    if path is None:
        return development_tenants()[0]
    file, data = read_tenants_data(path)
    return parse_tenants(data, file)


# -- keys --------------------------------------------------------------------------------------
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


def development_tenants() -> tuple[TenantsFile, str]:
    """The embedded default: one admin tenant 'dev' with every class and model; (file, key).

    The key is $GENMEDIA_DEV_API_KEY when set (it must be well-formed: TenantsError otherwise),
    else freshly generated: print it at start-up. $GENMEDIA_DEV_WEBHOOK_SECRET (16+ chars), when
    set, becomes the dev tenant's webhook secret.
    """
    env_key = os.environ.get(DEV_KEY_ENV)
    file = "<development tenants>"
    if env_key:
        env_key = env_key.strip()
        if parse_api_key(env_key) is None:
            raise TenantsError(
                [
                    TenantsIssue(
                        file,
                        DEV_TENANT_ID,
                        f"${DEV_KEY_ENV}",
                        "not a well-formed key: expected gm_<8 hex>_<32+ url-safe characters> "
                        "(e.g. from `genmedia tenants create`)",
                    )
                ]
            )
        key, record = env_key, key_record(env_key, f"development key from ${DEV_KEY_ENV}")
    else:
        _, key, record = new_api_key("development key generated at start-up")
    tenant: dict = {"id": DEV_TENANT_ID, "api_keys": [record.model_dump()], "admin": True}
    secret = os.environ.get(DEV_WEBHOOK_SECRET_ENV)
    if secret:
        tenant["webhook_secret"] = secret
    return parse_tenants({"version": 1, "tenants": [tenant]}, file), key


# -- authentication / authorization ------------------------------------------------------------
class AuthError(ApiError):
    """401 (no or bad key) or 403 (class or model not allowed); an ApiError the gateway answers."""

    def __init__(self, status: int, message: str, field: str | None = None):
        type_ = {401: "unauthorized", 403: "forbidden"}.get(status, "auth_error")
        fields = [{"field": field, "message": message, "limit": None}] if field else None
        headers = {"WWW-Authenticate": 'Bearer realm="genmedia"'} if status == 401 else None
        super().__init__(status, type_, message, fields, headers)


_MISSING = "missing API key: send 'Authorization: Bearer <key>'"
_INVALID = "invalid API key"
_DUMMY_HASH = hash_api_key("gm_00000000_" + "0" * 43)


class Authenticator:
    """Finds the tenant of a bearer key and checks what it may use. Build once per tenants file."""

    def __init__(self, tenants_file: TenantsFile):
        self.tenants: dict[str, Tenant] = {t.id: t for t in tenants_file.tenants}
        self._by_key_id: dict[str, list[tuple[str, Tenant]]] = {}
        for t in tenants_file.tenants:
            for k in t.api_keys:
                self._by_key_id.setdefault(k.id, []).append((k.hash, t))

    def authenticate(self, authorization_header: str | None) -> Tenant:
        """The tenant of 'Bearer <key>'; AuthError(401) when missing, malformed or unknown."""
        if authorization_header is None or not authorization_header.strip():
            raise AuthError(401, _MISSING)
        scheme, _, key = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError(401, _INVALID)
        key = key.strip()
        if not key:
            raise AuthError(401, _MISSING)
        parsed = parse_api_key(key)
        if parsed is None:
            raise AuthError(401, _INVALID)
        digest = hash_api_key(key).encode()
        candidates = self._by_key_id.get(parsed[0])
        if not candidates:
            hmac.compare_digest(digest, _DUMMY_HASH.encode())  # same work for unknown key ids
            raise AuthError(401, _INVALID)
        for stored, tenant in candidates:
            if hmac.compare_digest(digest, stored.encode()):
                return tenant
        raise AuthError(401, _INVALID)

    def authorize(self, tenant: Tenant, model_id: str, priority_class: str | None) -> None:
        """AuthError(403) naming the class or model the tenant may not use (None: default class).

        An unknown class name is a 422 of the request schema, not this check's business.
        """
        cls = priority_class or tenant.default_class
        if not tenant.allows_class(cls):
            raise AuthError(
                403,
                f"tenant {tenant.id!r} may not use priority class {cls!r}; "
                f"allowed: {', '.join(tenant.allowed_classes)}",
                field="priority_class",
            )
        if not tenant.allows_model(model_id):
            raise AuthError(
                403, f"tenant {tenant.id!r} may not use model {model_id!r}", field="model_id"
            )


# -- rate limiting -----------------------------------------------------------------------------
class RateLimiter:
    """Token bucket per tenant: capacity = requests_per_minute, refilled rpm/60 tokens a second.

    Pure (the caller passes ``now``, any monotonic seconds) and not thread-safe: one per event
    loop. Per gateway replica, so the cluster-wide limit is rpm x replicas unless the caller
    shares one (e.g. in the scheduler).
    """

    def __init__(self, limits: Mapping[str, int]):
        self.limits = dict(limits)
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, last refill)

    @classmethod
    def for_tenants(cls, tenants_file: TenantsFile) -> RateLimiter:
        return cls({t.id: t.quotas.requests_per_minute for t in tenants_file.tenants})

    def try_acquire(self, tenant_id: str, now: float) -> float:
        """0.0 when a request is admitted (a token taken), else seconds until one is available.

        KeyError for a tenant the limiter was not built with.
        """
        rpm = self.limits[tenant_id]
        rate = rpm / 60.0
        tokens, last = self._buckets.get(tenant_id, (float(rpm), now))
        if now > last:
            tokens = min(float(rpm), tokens + (now - last) * rate)
            last = now
        if tokens >= 1.0:
            self._buckets[tenant_id] = (tokens - 1.0, last)
            return 0.0
        self._buckets[tenant_id] = (tokens, last)
        return (1.0 - tokens) / rate


def retry_after_header(seconds: float) -> str:
    """A Retry-After header value (whole seconds, at least 1) for a wait in seconds."""
    return str(max(1, math.ceil(seconds)))
