"""The gateway's error shape and the handlers that keep bad input from becoming a 500.

First thing on a request's way: the body-size limit (413) runs before FastAPI reads the body;
malformed JSON answers 400, a wrong type or a bound 422, each naming the field (and the limit).
Every error body is ``{"error": {"type", "message", "fields": [{"field", "message", "limit"}]}}``
(``schemas.ErrorBody``), its ``type`` a code in lower snake_case; ``error_responses`` documents
which statuses and codes a route answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genmedia.deployments.api.schemas import ErrorBody
from genmedia.deployments.errors import ApiError, validation_fields


def error_body(type_: str, message: str, fields: list[dict] | None = None) -> dict:
    return {"error": {"type": type_, "message": message, "fields": fields or []}}


_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {
        "Retry-After": {
            "description": "Seconds before a retry can pass.",
            "schema": {"type": "integer"},
        }
    },
    503: {"Retry-After": {"description": "Seconds before a retry.", "schema": {"type": "integer"}}},
}


# Error statuses most /v1 routes share, as ``error_responses`` groups.
AUTH = {401: "unauthorized: no API key, or not a valid one."}
UNAVAILABLE = {503: "unavailable: the scheduler cannot be reached now; retry after Retry-After."}
BODY = {
    400: "malformed_json: the body is not valid JSON.",
    413: "payload_too_large: the body is over the gateway's limit.",
    422: "invalid_request: a field of the body or a header breaks its type or bound "
    "(fields names each, with the limit).",
}


def error_responses(*groups: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route's error statuses, each answering ``ErrorBody``. A group
    maps a status to the ``type`` codes it carries and when; a later group's text wins."""
    described: dict[int, str] = {}
    for group in groups:
        described.update(group)
    out: dict[int | str, dict[str, Any]] = {}
    for status, text in sorted(described.items()):
        out[status] = {"model": ErrorBody, "description": text}
        if status in _HEADERS:
            out[status]["headers"] = _HEADERS[status]
    return out


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        msg = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (msg.get("ctx") or {}).get("error", "")
        return JSONResponse(
            status_code=400,
            content=error_body(
                "malformed_json",
                f"request body is not valid JSON: {detail}".rstrip(": "),
                [{"field": "body", "message": "invalid JSON", "limit": None}],
            ),
        )
    fields = validation_fields(errors)
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return JSONResponse(status_code=422, content=error_body("invalid_request", summary, fields))


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    # the caller's rate-limit headers (api/deps.py), on refusals as on answers
    headers = {**getattr(request.state, "ratelimit_headers", {}), **(exc.headers or {})}
    return JSONResponse(
        status_code=exc.status,
        content=error_body(exc.type, exc.message, exc.fields),
        headers=headers or None,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        status_code=exc.status_code, content=error_body(type_, str(exc.detail)), headers=exc.headers
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class BodySizeLimit:
    """ASGI middleware: 413 for a body over ``limit_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit_bytes: int | None = None):
        self.app = app
        self.limit = limit_bytes

    def _too_large(self) -> bytes:
        return json.dumps(
            error_body(
                "payload_too_large",
                f"request body exceeds {self.limit} bytes",
                [{"field": "body", "message": "too large", "limit": self.limit}],
            )
        ).encode()

    async def _send_413(self, send: Send) -> None:
        body = self._too_large()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = False
            if too_big:
                await self._send_413(send)
                return
        received = 0
        rejected = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer 413 now; the app sees a disconnected client and its own
                    # response (if any) is dropped below.
                    rejected = True
                    if not response_started:
                        await self._send_413(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise  # an oversized body's disconnect is expected; anything else is not
