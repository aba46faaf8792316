"""The gateway's error shape and the handlers that keep bad input from becoming a 500.

First thing on a request's way: the body-size limit (413) runs before FastAPI reads the body;
malformed JSON answers 400, a wrong type or a bound 422, each naming the field (and the limit).
Every error body is ``{"error": {"type", "message", "fields": [{"field", "message", "limit"}]}}``.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiError(Exception):
    """An error the API answers with its own status and type."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        fields: list[dict] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.fields = fields or []
        self.headers = headers


def error_body(type_: str, message: str, fields: list[dict] | None = None) -> dict:
    return {"error": {"type": type_, "message": message, "fields": fields or []}}


def _field_name(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _limit_of(err: dict) -> object:
    ctx = err.get("ctx") or {}
    for key in ("le", "ge", "lt", "gt", "max_length", "min_length", "expected"):
        if key in ctx:
            return ctx[key]
    return None


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
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
    fields = []
    for e in errors:
        field = _field_name(tuple(e.get("loc", ())))
        message = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            message = "unknown field"
        elif e.get("type") == "missing":
            message = "field required"
        fields.append({"field": field, "message": message, "limit": _limit_of(e)})
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return JSONResponse(status_code=422, content=error_body("invalid_request", summary, fields))


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.status,
        content=error_body(exc.type, exc.message, exc.fields),
        headers=exc.headers,
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
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
        if scope["type"] != "http" or self.limit is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
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
                if received > self.limit:
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
