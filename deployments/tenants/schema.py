"""The tenants file: its schema, reading and validating it, and the development default.

Read once at start-up (``genmedia serve``/``deploy``, ``genmedia tenants``); the gateway builds its
``auth.Authenticator`` and ``ratelimit.RateLimiter`` from the result, the scheduler reads each
tenant's weight and quotas, and webhooks are signed with its secret. Pure: no Ray, no torch, no
I/O beyond reading the file. Every problem is reported with file, tenant id and field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

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

from genmedia.deployments.protocol import PRIORITY_CLASSES, PriorityClass
from genmedia.deployments.tenants.keys import ApiKeyRecord, key_record, new_api_key, parse_api_key
from genmedia.deployments.webhooks.signing import signing_key
from genmedia.models.config_issues import field_errors, loc

DEV_TENANT_ID = "dev"
DEV_KEY_ENV = "GENMEDIA_DEV_API_KEY"
DEV_WEBHOOK_SECRET_ENV = "GENMEDIA_DEV_WEBHOOK_SECRET"

TenantId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="Tenant id: lowercase letters, digits, '.', '_' and '-' (like model ids).",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quotas(_Strict):
    """Limits that keep one tenant from taking the cluster."""

    max_concurrent_jobs: int = Field(
        default=8,
        ge=1,
        le=10_000,
        description="Jobs of this tenant running at once on workers; more wait in the queue, in "
        "fair order (they are not refused).",
    )
    requests_per_minute: int = Field(
        default=600,
        ge=1,
        le=1_000_000,
        description="Token-bucket rate limit of /v1 calls: bursts up to this many, refilled at "
        "this many per minute; beyond it 429 with Retry-After.",
    )
    max_queued_jobs: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Accepted jobs of this tenant waiting in the queue; beyond it submit is 429.",
    )
    max_stored_bytes: int = Field(
        default=1_073_741_824,
        ge=1024,
        le=1_099_511_627_776,
        description="Bytes of input files the tenant may keep stored (uploads and the inline "
        "images of its jobs, as stored after re-encoding); an upload or a submit with an inline "
        "image beyond it is 429 storage_quota_exceeded. Outputs do not count (retention bounds "
        "them).",
    )
    max_stored_files: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Input files the tenant may keep stored (uploads and inline images); beyond "
        "it an upload or a submit with an inline image is 429 storage_quota_exceeded.",
    )
    uploads_per_minute: int = Field(
        default=60,
        ge=1,
        le=1_000_000,
        description="Token-bucket rate limit of POST /v1/files per gateway replica: bursts up "
        "to this many, refilled at this many per minute; beyond it 429 with Retry-After.",
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
        default=PriorityClass.INTERACTIVE,
        description="Class of requests that name none; must be among allowed_classes "
        "(default: 'interactive' if allowed, else the first allowed class).",
    )
    allowed_models: list[str] | None = Field(
        default=None, description="Model ids the tenant may use; left out: every model served."
    )
    quotas: Quotas = Field(default_factory=Quotas, description="Concurrency, rate and queue caps.")
    admin: bool = Field(
        default=False,
        description="May register and delete LoRA adapters (POST/DELETE /v1/admin/loras), read "
        "/metrics with its key and see adapter sources in /v1/loras.",
    )
    webhook_secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        repr=False,
        description="Signing secret of the tenant's webhooks (Standard Webhooks "
        "webhook-signature, HMAC-SHA256): 'whsec_' + base64 of 16+ key bytes, or a plain secret "
        "of 16+ characters used as the key bytes (receivers then take 'whsec_' + base64 of "
        "it); without it webhooks are sent unsigned.",
    )
    webhook_events: list[Literal["started", "progress", "completed"]] = Field(
        default=["completed"],
        min_length=1,
        description="Which events the tenant's jobs with a webhook_url send: 'started' "
        "(job.started), 'progress' (job.progress, throttled), 'completed' (the terminal "
        "job.completed / failed / cancelled / expired).",
    )

    @field_validator("webhook_secret")
    @classmethod
    def _usable_secret(cls, v: str | None) -> str | None:
        if v is not None:
            signing_key(v)  # WebhookSecretError (a ValueError) names the problem
        return v

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
    def _unique_classes(cls, v: list[PriorityClass]) -> list[PriorityClass]:
        if len(set(v)) != len(v):
            raise ValueError("lists a class twice")
        return v

    @field_validator("default_class")
    @classmethod
    def _default_allowed(cls, v: PriorityClass, info: ValidationInfo) -> PriorityClass:
        allowed = info.data.get("allowed_classes")
        if allowed is not None and v not in allowed:
            names = [str(c) for c in allowed]
            raise ValueError(f"{str(v)!r} is not among allowed_classes {names}")
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


# -- reading and validating -----------------------------------------------------------------------
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


# -- the development default ----------------------------------------------------------------------
def development_tenants() -> tuple[TenantsFile, str]:
    """The embedded default: one tenant 'dev' (not an admin) with every class and model;
    (file, key).

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
    # not an admin: the development key registers no adapters (use a tenants file for that)
    tenant: dict[str, Any] = {"id": DEV_TENANT_ID, "api_keys": [record.model_dump()]}
    secret = os.environ.get(DEV_WEBHOOK_SECRET_ENV)
    if secret:
        tenant["webhook_secret"] = secret
    return parse_tenants({"version": 1, "tenants": [tenant]}, file), key
