"""The error a request's handling raises to be answered with its own HTTP status and type.

Raised below the HTTP layer (intake's validation and admission, tenants' 401/403) and answered by
``api/errors.py``, which turns it into ``{"error": {"type", "message", "fields"}}`` with
``status`` and ``headers``. No FastAPI here, so the layers below api can raise it.
"""

from __future__ import annotations

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
