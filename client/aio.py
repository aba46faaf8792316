"""``AsyncClient``: the asyncio twin of ``Client`` (``sync.py``), method for method.

The caller's end of a request's way: ``run`` (the sync route), ``submit`` / ``status`` /
``result`` / ``cancel`` / ``stream`` (the queue API), ``subscribe`` (submit, follow the stream,
fetch the result), ``upload`` (input images), ``submit_many`` (the bulk route) and output
downloads. Each method builds its call in ``_core``, sends it with the retry policy and
returns the types of ``types.py`` or raises the errors of ``errors.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from genmedia.client import _core as core
from genmedia.client._base import ClientBase
from genmedia.client.errors import ConnectionFailed, GenmediaError, RequestTimeout
from genmedia.client.types import (
    BulkSubmission,
    JobHandle,
    KeepaliveEvent,
    ModelInfo,
    Output,
    RequestRef,
    Result,
    Status,
    StreamEvent,
    Upload,
    request_id_of,
)

OnUpdate = Callable[[StreamEvent], Any]  # may return an awaitable, which is awaited


class AsyncClient(ClientBase):
    """An asyncio client; use it as ``async with`` or call ``await aclose()``.

    ``Client(base_url, api_key, timeout=60, max_retries=3)``; ``transport`` replaces the
    network (tests: ``httpx.MockTransport``)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = core.DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        max_retry_wait_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_wait_s=max_retry_wait_s,
        )
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())
        self._sleep: Callable[[float], Any] = asyncio.sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- transport ---------------------------------------------------------------------------
    async def _send(
        self,
        call: core.Call,
        *,
        stream: bool = False,
        errors: Callable[[httpx.Response], GenmediaError] = core.error_of,
    ) -> httpx.Response:
        """Send with retries; a success answer or the error raised. A streamed answer must be
        closed by the caller."""
        attempt = 0
        while True:
            try:
                response = await self._http.send(self._build(self._http, call), stream=stream)
            except httpx.TransportError as e:
                delay = self.retry.after_error(call, e, attempt)
                if delay is None:
                    raise core.transport_error(call, e) from e
            else:
                if response.is_success:
                    return response
                if stream:
                    await response.aread()
                    await response.aclose()
                delay = self.retry.after_response(response, attempt)
                if delay is None:
                    raise errors(response)
            attempt += 1
            await self._sleep(delay)

    # -- models ------------------------------------------------------------------------------
    async def models(self) -> list[ModelInfo]:
        """The models the caller may use, with their parameter schemas."""
        body = (await self._send(core.Call("GET", "/v1/models"))).json()
        return [ModelInfo.model_validate(m) for m in body.get("models", [])]

    # -- generation --------------------------------------------------------------------------
    async def run(
        self,
        model: str,
        arguments: Mapping[str, Any],
        *,
        priority: str | None = None,
        idempotency_key: str | None = None,
        deadline_s: float | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Generate and wait on one connection (the sync route). A job that fails raises
        ``JobFailed``; one not finished in the server's time ``GatewayTimeout``."""
        call = core.run_call(
            model,
            arguments,
            priority=priority,
            idempotency_key=idempotency_key,
            deadline_s=deadline_s,
            timeout=timeout,
        )
        return core.parse_result((await self._send(call, errors=core.run_error)).json())

    async def submit(
        self,
        model: str,
        arguments: Mapping[str, Any],
        *,
        priority: str | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        deadline_s: float | None = None,
    ) -> JobHandle:
        """Queue a job; answers at once. Retries reuse one Idempotency-Key (``idempotency_key``,
        or one made up here), so a repeated submit never runs the job twice."""
        call = core.submit_call(
            model,
            arguments,
            priority=priority,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
            deadline_s=deadline_s,
        )
        return JobHandle.from_body((await self._send(call)).json())

    async def submit_many(
        self,
        model: str,
        arguments: Sequence[Mapping[str, Any]],
        *,
        priority: str | None = None,
        webhook_url: str | None = None,
        deadline_s: float | None = None,
        chunk_size: int = core.DEFAULT_BULK_CHUNK,
    ) -> BulkSubmission:
        """Queue many jobs through the bulk route (``chunk_size`` items a call). Each item is
        accepted (``handle``) or refused (``error``); a whole-call error is raised."""
        items = []
        for start, call in core.bulk_calls(
            model,
            arguments,
            priority=priority,
            webhook_url=webhook_url,
            deadline_s=deadline_s,
            chunk_size=chunk_size,
        ):
            items.extend(core.parse_bulk(start, (await self._send(call)).json()))
        return BulkSubmission(items)

    async def status(self, request: RequestRef, *, logs: bool = False) -> Status:
        params = {"logs": 1} if logs else {}
        call = core.job_call("GET", request_id_of(request), "/status", **params)
        return Status.model_validate((await self._send(call)).json())

    async def result(self, request: RequestRef, *, return_base64: bool = False) -> Result:
        """The result of a finished job. ``NotFinished`` while it runs; ``JobFailed`` (or
        ``JobCancelled``, ``JobExpired``) when it ended without one."""
        params = {"return_base64": "true"} if return_base64 else {}
        call = core.job_call("GET", request_id_of(request), **params)
        return core.parse_result((await self._send(call)).json())

    async def cancel(self, request: RequestRef) -> Status:
        """Ask to cancel: answers status ``CANCELLATION_REQUESTED``; ``BadRequest``
        (``already_completed``) when the job has ended."""
        call = core.job_call("PUT", request_id_of(request), "/cancel")
        return Status.model_validate((await self._send(call)).json())

    async def stream(
        self, request: RequestRef, *, keepalives: bool = False
    ) -> AsyncIterator[StreamEvent]:
        """The job's events until it ends: ``StatusEvent`` (and ``KeepaliveEvent`` with
        ``keepalives``). A stream that breaks before the end is reopened (it restarts with the
        current status), up to ``max_retries`` times without news in between."""
        request_id = request_id_of(request)
        failures = 0
        last: Status | None = None
        seen: tuple[object, ...] | None = None
        while True:
            try:
                response = await self._send(core.stream_call(request_id), stream=True)
                try:
                    async for msg in core.SSEDecoder().amessages(response.aiter_lines()):
                        event = core.stream_event(msg)
                        if event is None:
                            continue
                        last = event.status
                        if core.news_key(last) != seen:  # the job moved: the stream works
                            seen, failures = core.news_key(last), 0
                        if keepalives or not isinstance(event, KeepaliveEvent):
                            yield event
                finally:
                    await response.aclose()
            except httpx.TransportError as e:
                error: GenmediaError = core.transport_error(core.stream_call(request_id), e)
            else:
                error = ConnectionFailed(f"the stream of {request_id} ended before the job did")
            if last is not None and last.done:
                return
            if failures >= self.retry.max_retries:
                raise error
            await self._sleep(self.retry.backoff(failures))
            failures += 1

    async def wait(
        self,
        request: RequestRef,
        *,
        on_update: OnUpdate | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Follow the job's stream to its end and return its result. ``on_update`` sees every
        event (keepalives too); ``timeout`` bounds the whole wait (``RequestTimeout``)."""
        request_id = request_id_of(request)
        deadline = None if timeout is None else time.monotonic() + timeout
        async for event in self.stream(request_id, keepalives=True):
            if on_update is not None:
                outcome = on_update(event)
                if inspect.isawaitable(outcome):
                    await outcome
            if event.status.done:
                if event.status.status != "COMPLETED":
                    raise core.job_failure(event.status)
                break
            if deadline is not None and time.monotonic() > deadline:
                raise RequestTimeout(
                    f"request {request_id} not finished after {timeout:g}s (it goes on)",
                    type="wait_timeout",
                    request_id=request_id,
                )
        return await self.result(request_id)

    async def subscribe(
        self,
        model: str,
        arguments: Mapping[str, Any],
        *,
        on_update: OnUpdate | None = None,
        priority: str | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        deadline_s: float | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Submit, follow the stream (``on_update`` per event) and return the result."""
        handle = await self.submit(
            model,
            arguments,
            priority=priority,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
            deadline_s=deadline_s,
        )
        return await self.wait(handle, on_update=on_update, timeout=timeout)

    # -- files -------------------------------------------------------------------------------
    async def upload(self, source: str | Path | bytes, content_type: str | None = None) -> Upload:
        """Upload an input image (a path or bytes; PNG, JPEG or WebP); send its ``id`` as
        ``image`` or ``mask_image``."""
        return Upload.model_validate(
            (await self._send(core.upload_call(source, content_type))).json()
        )

    async def download(self, output: Output | str) -> bytes:
        """An output's bytes (inline base64 when the result carried it)."""
        inline = self._inline(output) if isinstance(output, Output) else None
        if inline is not None:
            return inline
        return (await self._send(self._download_call(output))).content

    async def save(self, output: Output, dest: str | Path) -> Path:
        """Write an output to ``dest`` (a file, or a folder: ``<request id>-<name>`` in it)."""
        path = self._save_path(output, dest)
        path.write_bytes(await self.download(output))
        return path

    async def save_all(self, result: Result, out_dir: str | Path) -> list[Path]:
        """Write every output of a result into ``out_dir``; their paths, in output order."""
        paths = []
        for output, path in self._result_paths(result, out_dir):
            path.write_bytes(await self.download(output))
            paths.append(path)
        return paths
