"""The queue API's request headers, checked at the gateway before anything else is done.

``X-Deadline-Seconds`` (seconds from now until the job must have started) and
``Idempotency-Key`` (a retried submit answers the first job); a bad value is a 422 naming the
header and its limit. No Ray, no FastAPI.
"""

from __future__ import annotations

import re

from genmedia.deployments.errors import ApiError

IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
MAX_DEADLINE_S = 7 * 24 * 3600.0


def parse_deadline(value: str | None) -> float | None:
    """The ``X-Deadline-Seconds`` header: seconds from now until the job must have started."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not (0 < seconds <= MAX_DEADLINE_S):
        raise ApiError(
            422,
            "invalid_request",
            f"X-Deadline-Seconds must be a number of seconds in (0, {MAX_DEADLINE_S:g}]",
            [
                {
                    "field": "X-Deadline-Seconds",
                    "message": "invalid deadline",
                    "limit": MAX_DEADLINE_S,
                }
            ],
        )
    return seconds


def parse_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.match(value):
        raise ApiError(
            422,
            "invalid_request",
            "Idempotency-Key must be 1-128 characters of letters, digits, '_', '.', ':' or '-'",
            [{"field": "Idempotency-Key", "message": "invalid format", "limit": 128}],
        )
    return value


MAX_PREFER_WAIT_S = 60.0
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9]+(?:\.[0-9]+)?)\s*(?:[,;]|$)")


def parse_prefer_wait(value: str | None) -> float | None:
    """``Prefer: wait=N`` (RFC 7240; Replicate's rule): seconds a submit may hold its answer for
    the job to end, at most ``MAX_PREFER_WAIT_S``; None without a ``wait`` preference. Other
    preferences are ignored, as RFC 7240 asks."""
    if value is None or "wait" not in value:
        return None
    m = _PREFER_WAIT.search(value[:256])
    seconds = float(m.group(1)) if m else float("nan")
    if not (0 < seconds <= MAX_PREFER_WAIT_S):
        raise ApiError(
            422,
            "invalid_request",
            f"Prefer: wait=N takes seconds in (0, {MAX_PREFER_WAIT_S:g}]",
            [{"field": "Prefer", "message": "invalid wait", "limit": MAX_PREFER_WAIT_S}],
        )
    return seconds
