"""Authentication and authorization: the first stop of every ``/v1`` call.

The gateway authenticates the ``Authorization: Bearer`` key (401), then authorizes the model and
priority class (403) before a request is validated or queued. Both answer as ``ApiError``, so the
API's error handler turns them into the usual error body.
"""

from __future__ import annotations

import hmac

from genmedia.deployments.errors import ApiError
from genmedia.deployments.protocol import KeyTable
from genmedia.deployments.tenants.keys import hash_api_key, parse_api_key
from genmedia.deployments.tenants.runtime import key_index, with_quotas
from genmedia.deployments.tenants.schema import Tenant, TenantsFile


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
        self.file = tenants_file
        self.tenants: dict[str, Tenant] = {t.id: t for t in tenants_file.tenants}
        self._by_key_id = key_index(self.tenants, ())

    def apply(self, table: KeyTable) -> None:
        """Keys and quotas changed at run time (``runtime.py``) on top of the tenants file:
        revoked keys refused from now on, added keys accepted, quota overrides in the tenants
        answered (``tenants`` is updated in place: holders of the mapping see the change)."""
        tenants = with_quotas(self.file.tenants, table.quotas)
        self._by_key_id = key_index(tenants, table.keys)
        self.tenants.update(tenants)

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
        cls = str(priority_class or tenant.default_class)  # the value, also for an enum member
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
