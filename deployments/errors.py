"""The error a request's handling raises to be answered with its own HTTP status and type.

Raised below the HTTP layer (intake's validation and admission, tenants' 401/403) and answered by
``api/errors.py``, which turns it into ``{"error": {"type", "message", "fields"}}`` with
``status`` and ``headers``. No FastAPI here, so the layers below api can raise it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class ApiError(Exception):
    """An error the API answers with its own status and type."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        fields: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.fields = fields or []
        self.headers = headers


def _field_name(loc: Iterable[object], prefix: str = "") -> str:
    parts = [str(p) for p in loc if p != "body"]
    name = ".".join(parts)
    if prefix:
        return f"{prefix}.{name}" if name else prefix
    return name or "body"


def _limit_of(err: Mapping[str, Any]) -> object:
    ctx = err.get("ctx") or {}
    for key in ("le", "ge", "lt", "gt", "max_length", "min_length", "expected"):
        if key in ctx:
            return ctx[key]
    return None


def validation_fields(errors: Iterable[Mapping[str, Any]], prefix: str = "") -> list[dict]:
    """Pydantic's errors as the error body's ``fields``: each field's dotted name (under
    ``prefix``, e.g. ``requests[3]``), what is wrong with it and its limit."""
    fields = []
    for e in errors:
        message = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            message = "unknown field"
        elif e.get("type") == "missing":
            message = "field required"
        field = _field_name(e.get("loc", ()), prefix)
        fields.append({"field": field, "message": message, "limit": _limit_of(e)})
    return fields
