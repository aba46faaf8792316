"""Request bodies parsed and validated off the event loop.

First step of a submit's way after the HTTP layer has read the bytes: the gateway hands the raw
body to a worker thread, or a large one to its parse process (``GatewayService.parse_body``,
``intake/parse_pool.py``), where pydantic parses and validates it in one pass (its own JSON
parser, bounded by the model's parse-time limits); a body of at most ``INLINE_BODY_BYTES``
parses at once, as its parse costs less than the hop. A hostile body costs that thread or
process milliseconds and the event loop at most microseconds, so ``/healthz`` and other
requests keep being answered. Malformed JSON is a 400, a type or bound a 422 naming the field
and the limit: the same answers as the error handlers give. No FastAPI here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from genmedia.deployments.errors import ApiError, validation_fields

M = TypeVar("M", bound=BaseModel)
# Bodies up to INLINE_BODY_BYTES parse where they arrive: at most ~0.1 ms of pydantic, however
# hostile (measured: 1 KB of nested lists in unknown fields), less than a hop to a thread costs.
INLINE_BODY_BYTES = 1024
SMALL_BODY_BYTES = 64 * 1024  # bodies up to this parse on the gateway's threads, larger apart
MAX_REPORTED_ERRORS = 64  # past this many, one error names the count (building each costs µs)


def parse_json(
    raw: bytes, model: type[M], on_errors: Callable[[list[Any]], ApiError] | None = None
) -> M:
    """``raw`` as ``model``; ApiError 400 (malformed JSON) or 422 (the fields at fault), or
    what ``on_errors`` makes of pydantic's errors (a route answering another API's shape)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        if e.error_count() > MAX_REPORTED_ERRORS:
            raise ApiError(
                422,
                "invalid_request",
                f"body: {e.error_count()} invalid or unknown fields",
                [{"field": "body", "message": f"{e.error_count()} errors",
                  "limit": MAX_REPORTED_ERRORS}],
            ) from None  # fmt: skip
        errors = e.errors(include_url=False)
        if on_errors is not None:
            raise on_errors(errors) from None
        bad_json = next((err for err in errors if err.get("type") == "json_invalid"), None)
        if bad_json is not None:
            detail = (bad_json.get("ctx") or {}).get("error", "")
            raise ApiError(
                400,
                "malformed_json",
                f"request body is not valid JSON: {detail}".rstrip(": "),
                [{"field": "body", "message": "invalid JSON", "limit": None}],
            ) from None
        fields = validation_fields(errors)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        raise ApiError(422, "invalid_request", summary, fields) from None
