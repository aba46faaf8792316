"""The client's exceptions: one class per error the gateway answers, built from its error body.

Last step of a call that went wrong: the gateway answers
``{"error": {"type", "message", "fields": [{"field", "message", "limit"}]}}`` with a status;
``error_from_response`` turns that into the class of the status, carrying the type, the fields
at fault and their limits (and ``Retry-After`` for 429 and 503). A job that ended without a
result (FAILED, CANCELLED, EXPIRED) raises ``JobFailed`` or one of its subclasses.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "FieldError",
    "GatewayTimeout",
    "GenmediaError",
    "InvalidRequest",
    "JobCancelled",
    "JobExpired",
    "JobFailed",
    "NotFinished",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RequestTimeout",
    "ServerError",
    "Unavailable",
    "UnsupportedMediaType",
    "error_from_body",
    "parse_retry_after",
]


@dataclass(frozen=True)
class FieldError:
    """One request part at fault: a body field (dotted path), a header, 'model_id', ..."""

    field: str
    message: str
    limit: Any = None

    def __str__(self) -> str:
        limit = "" if self.limit is None else f" (limit: {self.limit})"
        return f"{self.field}: {self.message}{limit}"


class GenmediaError(Exception):
    """Base of every client error.

    ``status`` is the HTTP status (None when no answer came), ``type`` the gateway's code in
    lower snake_case, ``fields`` the request parts at fault with their limits; ``field`` and
    ``limit`` are the first one's, for the common single-field error."""

    status: int | None
    type: str
    message: str
    fields: list[FieldError]
    request_id: str | None
    body: Any

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str = "error",
        fields: list[FieldError] | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.fields = list(fields or [])
        self.request_id = request_id
        self.body = body

    @property
    def field(self) -> str | None:
        return self.fields[0].field if self.fields else None

    @property
    def limit(self) -> Any:
        return self.fields[0].limit if self.fields else None

    def __str__(self) -> str:
        head = f"{self.status} {self.type}" if self.status is not None else self.type
        text = f"{head}: {self.message}"
        if self.fields:
            text += " [" + "; ".join(str(f) for f in self.fields) + "]"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status!r}, {self.type!r}, {self.message!r})"


class ConnectionFailed(GenmediaError):
    """No answer: the connection could not be made or broke (after the retries)."""


class RequestTimeout(ConnectionFailed):
    """No answer within the client's timeout."""


class BadRequest(GenmediaError):
    """400: malformed JSON, an invalid file path, cancel of a job that already ended."""


class AuthenticationError(GenmediaError):
    """401: no API key, or not a valid one."""


class PermissionDenied(GenmediaError):
    """403: the tenant may not use this model or priority class (or an admin route)."""


class NotFound(GenmediaError):
    """404: unknown model (``model_not_found``, field 'model_id'), job or file."""


class Conflict(GenmediaError):
    """409: e.g. the sync call's job was cancelled."""


class NotFinished(Conflict):
    """409 ``not_finished``: the result of a job that is still queued or running."""

    retry_after: float | None = None


class PayloadTooLarge(GenmediaError):
    """413: the body is over the gateway's limit (``limit`` holds it)."""


class UnsupportedMediaType(GenmediaError):
    """415: an upload whose Content-Type is not an accepted image type."""


class InvalidRequest(GenmediaError):
    """422: a field breaks its type or bound; ``fields`` names each with its limit."""


class RateLimited(GenmediaError):
    """429: refused at admission (rate, tenant quotas, full queue, unmeetable deadline);
    ``retry_after`` is the server's advice in seconds."""

    retry_after: float | None = None


class ServerError(GenmediaError):
    """5xx the client has no better class for."""


class Unavailable(ServerError):
    """503: the scheduler cannot be reached now; ``retry_after`` in seconds."""

    retry_after: float | None = None


class GatewayTimeout(ServerError):
    """504: the sync call did not finish in the server's time (the job goes on: see
    ``request_id``), or its deadline passed in the queue."""


class JobFailed(GenmediaError):
    """The job ended without a result. ``job_status`` is FAILED, CANCELLED or EXPIRED,
    ``type`` and ``message`` the job's error; ``job`` the last status seen (if any)."""

    job_status: str = "FAILED"
    job: Any = None


class JobCancelled(JobFailed):
    job_status = "CANCELLED"


class JobExpired(JobFailed):
    job_status = "EXPIRED"


_BY_STATUS: dict[int, type[GenmediaError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
    504: GatewayTimeout,
}
JOB_ERRORS: dict[str, type[JobFailed]] = {
    "FAILED": JobFailed,
    "CANCELLED": JobCancelled,
    "EXPIRED": JobExpired,
}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _fields(raw: Any) -> list[FieldError]:
    out = []
    for f in raw if isinstance(raw, list) else []:
        if isinstance(f, Mapping):
            out.append(
                FieldError(str(f.get("field", "")), str(f.get("message", "")), f.get("limit"))
            )
    return out


def error_from_body(
    status: int,
    body: Any,
    *,
    text: str = "",
    retry_after: float | None = None,
    request_id: str | None = None,
) -> GenmediaError:
    """The exception for an error answer: ``body`` is its parsed JSON (or None), ``text`` the
    raw body for answers that are not the gateway's error shape."""
    detail = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(detail, Mapping):
        type_ = str(detail.get("type") or "http_error")
        message = str(detail.get("message") or "")
        fields = _fields(detail.get("fields"))
    else:
        type_, fields = "http_error", []
        message = text.strip()[:500] or f"HTTP {status}"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else GenmediaError)
    if status == 409 and type_ == "not_finished":
        cls = NotFinished
    err = cls(message, status=status, type=type_, fields=fields, request_id=request_id, body=body)
    if isinstance(err, RateLimited | Unavailable | NotFinished):
        err.retry_after = retry_after
    return err
