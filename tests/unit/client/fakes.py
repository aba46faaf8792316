"""A fake gateway on ``httpx.MockTransport``: the answers of the HTTP API, scripted per test."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

BASE = "http://gw.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


def status_body(rid: str = "r1", status: str = "IN_QUEUE", **extra: Any) -> dict[str, Any]:
    root = f"{BASE}/v1/queue/requests/{rid}"
    return {
        "request_id": rid,
        "model": "sd15-tiny",
        "status": status,
        "priority": "interactive",
        "submitted_at": 1.5,
        "status_url": f"{root}/status",
        "result_url": root,
        "cancel_url": f"{root}/cancel",
        "stream_url": f"{root}/stream",
        **extra,
    }


def result_body(rid: str = "r1", n: int = 1) -> dict[str, Any]:
    outputs = [
        {
            "key": f"dev/2026/01/01/{rid}/{i}.png",
            "path": f"dev/2026/01/01/{rid}/{i}.png",
            "url": f"{BASE}/v1/files/dev/2026/01/01/{rid}/{i}.png",
            "seed": 7 + i,
            "width": 64,
            "height": 64,
            "content_type": "image/png",
            "sha256": "0" * 64,
        }
        for i in range(n)
    ]
    return {
        "id": rid,
        "request_id": rid,
        "model": "sd15-tiny",
        "status": "COMPLETED",
        "priority": "interactive",
        "seed": 7,
        "parameters": {"width": 64, "height": 64},
        "timings": {"queue_s": 0.1, "compute_s": 0.5, "total_s": 0.7, "new_timing_s": 1},
        "batch": {"id": "b", "images": n, "requests": 1},
        "outputs": outputs,
        "images": outputs,
        "a_key_added_later": {"x": 1},
    }


def error(status: int, type_: str, message: str = "bad", fields=None, headers=None):
    body = {"error": {"type": type_, "message": message, "fields": fields or []}}
    return httpx.Response(status, json=body, headers=headers or {})


def sse(*events: tuple[str, dict[str, Any]], tail: str = "") -> bytes:
    text = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    return (text + tail).encode()


Handler = Callable[[httpx.Request], httpx.Response]


class FakeGateway:
    """Routes by ``(method, path)`` to a list of answers consumed in order (the last one
    repeats); records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[httpx.Response | Handler | Exception]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *answers: httpx.Response | Handler | Exception):
        self.routes[(method, path)] = list(answers)
        return self

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answers = self.routes.get((request.method, request.url.path))
        if not answers:
            return error(404, "not_found", f"no route {request.method} {request.url.path}")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        # a fresh copy: an answer may repeat
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.read())

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)
