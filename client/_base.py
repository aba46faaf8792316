"""Settings both clients share: the gateway's URL, the key, timeouts and the retry policy.

Where a caller's program meets genmedia: ``Client`` and ``AsyncClient`` take these the same
way, from arguments or from ``GENMEDIA_URL`` / ``GENMEDIA_API_KEY``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from genmedia.client._core import (
    DEFAULT_TIMEOUT_S,
    STREAM_READ_TIMEOUT_S,
    Call,
    RetryPolicy,
    auth_headers,
    same_origin,
)
from genmedia.client.types import Output, Result

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientBase:
    """``base_url`` (default ``$GENMEDIA_URL``, else http://127.0.0.1:8000), ``api_key``
    (default ``$GENMEDIA_API_KEY``), ``timeout`` seconds per call (``run`` waits longer: the
    server's own limit), ``max_retries`` repeats of a refused (429/503) or broken call, and
    ``max_retry_wait_s``: a Retry-After longer than that is raised, not waited."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        max_retry_wait_s: float = 60.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = (base_url or os.environ.get("GENMEDIA_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("GENMEDIA_API_KEY")
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries, max_wait_s=max_retry_wait_s)

    def _http_options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "headers": auth_headers(self.api_key),
            "timeout": httpx.Timeout(self.timeout),
            "follow_redirects": False,
        }

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, STREAM_READ_TIMEOUT_S))

    def _build(self, http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        args: dict[str, Any] = {"params": call.params or None, "headers": call.headers}
        if call.json is not None:
            args["json"] = call.json
        if call.content is not None:
            args["content"] = call.content
        if call.stream:
            args["timeout"] = self._stream_timeout()
        elif call.timeout is not None:
            args["timeout"] = httpx.Timeout(self.timeout, read=max(self.timeout, call.timeout))
        request = http.build_request(call.method, call.path, **args)
        if not call.auth:
            request.headers.pop("Authorization", None)
        return request

    def _download_call(self, target: Output | str) -> Call:
        """GET an output: the API key goes only to the gateway itself, never to a presigned
        URL elsewhere."""
        url = target.url if isinstance(target, Output) else target
        if url.startswith("/"):
            url = self.base_url + url
        call = Call("GET", url, auth=same_origin(url, self.base_url))
        call.headers["Accept"] = "*/*"
        return call

    @staticmethod
    def _save_path(output: Output, dest: str | Path) -> Path:
        path = Path(dest)
        if path.is_dir():
            path = path / output.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _inline(output: Output) -> bytes | None:
        if output.base64:
            import base64

            return base64.b64decode(output.base64)
        return None

    @staticmethod
    def _result_paths(result: Result, out_dir: str | Path) -> list[tuple[Output, Path]]:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return [(o, folder / o.filename) for o in result.outputs]
