"""What ``Client`` and ``AsyncClient`` share, without I/O: the request each method sends, the
retry rule, the SSE decoder and the parsing of answers.

First and last step of a call on the caller's side: a method builds a ``Call`` (route, body,
headers, whether a repeat is safe), the client sends it and retries it under ``RetryPolicy``
(429 and 503 honouring ``Retry-After``; connection errors where a repeat cannot run a job
twice), and a parser turns the answer into the types of ``types.py`` or an exception of
``errors.py``.
"""

from __future__ import annotations

import json
import mimetypes
import random
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from genmedia.client.errors import (
    JOB_ERRORS,
    ConnectionFailed,
    GenmediaError,
    JobFailed,
    RequestTimeout,
    error_from_body,
    parse_retry_after,
)
from genmedia.client.types import (
    BulkItem,
    JobHandle,
    KeepaliveEvent,
    Result,
    Status,
    StatusEvent,
    StreamEvent,
)

DEFAULT_TIMEOUT_S = 60.0
# The sync route holds the call up to the server's request_timeout_s (600 s by default).
RUN_TIMEOUT_S = 630.0
# The stream repeats a keepalive every 15 s; a read waits longer than that.
STREAM_READ_TIMEOUT_S = 60.0
DEFAULT_BULK_CHUNK = 1000
USER_AGENT = "genmedia-client/0.1"
# The sync route's answers for a job that ended without a result (besides 504 deadline_expired).
_JOB_FAILURE_STATUSES = {409: "CANCELLED", 500: "FAILED"}


def new_idempotency_key() -> str:
    """A key for one logical submit, reused by its retries (1-128 of [A-Za-z0-9_.:-])."""
    return f"gmc-{uuid.uuid4().hex}"


@dataclass
class Call:
    """One HTTP request as the client sends it. ``idempotent``: sending it twice cannot create
    a second job or file, so a broken connection may be retried."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True
    timeout: float | None = None  # read timeout when longer than the client's
    stream: bool = False  # a server-sent event stream (a longer read timeout)
    auth: bool = True  # send the API key (not to hosts other than the gateway)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: at most ``max_retries`` repeats after the first try.

    429 and 503 wait ``Retry-After`` (or an exponential backoff without one), unless the
    server asks for more than ``max_wait_s``: then the error is raised at once with its
    ``retry_after``. Connection errors before anything was sent are always retried; a broken
    connection or a read timeout only for idempotent calls."""

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_wait_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        base: float = min(self.max_backoff_s, self.backoff_s * 2.0**attempt)
        return base * (0.5 + random.random() / 2)

    def after_response(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before repeating, or None to raise the answer's error."""
        if response.status_code not in (429, 503) or attempt >= self.max_retries:
            return None
        advised = parse_retry_after(response.headers.get("retry-after"))
        if advised is None:
            return self.backoff(attempt)
        return advised if advised <= self.max_wait_s else None

    def after_error(self, call: Call, error: httpx.TransportError, attempt: int) -> float | None:
        if attempt >= self.max_retries:
            return None
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):  # nothing was sent
            return self.backoff(attempt)
        # A read timeout of a long call (the sync route) is not worth waiting out again.
        long_wait = call.timeout is not None and isinstance(error, httpx.ReadTimeout)
        if call.idempotent and not long_wait and not isinstance(error, httpx.WriteTimeout):
            return self.backoff(attempt)
        return None


def transport_error(call: Call, error: httpx.TransportError) -> GenmediaError:
    what = f"{call.method} {call.path}"
    if isinstance(error, httpx.TimeoutException):
        return RequestTimeout(f"{what}: no answer in time ({error})", type="timeout")
    reason = str(error) or type(error).__name__
    return ConnectionFailed(f"{what}: {reason}", type="connection_error")


def error_of(response: httpx.Response) -> GenmediaError:
    """The exception for an error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_from_body(
        response.status_code,
        body,
        text=response.text,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        request_id=response.headers.get("x-request-id"),
    )


def auth_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def same_origin(url: str, base_url: str) -> bool:
    """True when ``url`` is on the gateway: only then does a download send the API key."""
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc) or not a.netloc


def _seg(value: str) -> str:
    return quote(value, safe="")


# -- calls ---------------------------------------------------------------------------------------
def submit_headers(idempotency_key: str | None, deadline_s: float | None) -> dict[str, str]:
    headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
    if deadline_s is not None:
        headers["X-Deadline-Seconds"] = f"{deadline_s:g}"
    return headers


def job_body(
    arguments: Mapping[str, Any], priority: str | None, webhook_url: str | None
) -> dict[str, Any]:
    body = dict(arguments)
    if priority is not None:
        body["priority"] = priority
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    return body


def run_call(
    model: str,
    arguments: Mapping[str, Any],
    *,
    priority: str | None,
    idempotency_key: str | None,
    deadline_s: float | None,
    timeout: float | None,
) -> Call:
    return Call(
        "POST",
        f"/v1/models/{_seg(model)}/generate",
        json=job_body(arguments, priority, None),
        headers=submit_headers(idempotency_key, deadline_s),
        timeout=timeout or RUN_TIMEOUT_S,
    )


def submit_call(
    model: str,
    arguments: Mapping[str, Any],
    *,
    priority: str | None,
    webhook_url: str | None,
    idempotency_key: str | None,
    deadline_s: float | None,
) -> Call:
    return Call(
        "POST",
        f"/v1/queue/models/{_seg(model)}",
        json=job_body(arguments, priority, webhook_url),
        headers=submit_headers(idempotency_key, deadline_s),
    )


def bulk_calls(
    model: str,
    items: Sequence[Mapping[str, Any]],
    *,
    priority: str | None,
    webhook_url: str | None,
    deadline_s: float | None,
    chunk_size: int,
) -> Iterator[tuple[int, Call]]:
    """One call per chunk of ``chunk_size`` items, with the index of its first item. Items
    without an ``idempotency_key`` get one, so a repeated chunk does not submit twice."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    headers = {} if deadline_s is None else {"X-Deadline-Seconds": f"{deadline_s:g}"}
    for start in range(0, len(items), chunk_size):
        chunk = []
        for item in items[start : start + chunk_size]:
            body = job_body(item, priority, webhook_url)
            body.setdefault("idempotency_key", new_idempotency_key())
            chunk.append(body)
        path = f"/v1/queue/models/{_seg(model)}/batch"
        yield start, Call("POST", path, json={"requests": chunk}, headers=dict(headers))


def job_call(method: str, request_id: str, suffix: str = "", **params: Any) -> Call:
    return Call(method, f"/v1/queue/requests/{_seg(request_id)}{suffix}", params=params)


def stream_call(request_id: str) -> Call:
    call = job_call("GET", request_id, "/stream")
    call.headers["Accept"] = "text/event-stream"
    call.stream = True
    return call


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


def sniff_content_type(data: bytes) -> str | None:
    for magic, ctype in _MAGIC:
        if data.startswith(magic):
            return ctype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def upload_call(source: str | Path | bytes, content_type: str | None) -> Call:
    """POST /v1/files: the raw bytes with their type (given, from the file name, or sniffed)."""
    if isinstance(source, bytes | bytearray):
        data, guessed = bytes(source), None
    else:
        path = Path(source)
        data, guessed = path.read_bytes(), mimetypes.guess_type(path.name)[0]
    ctype = content_type or sniff_content_type(data) or guessed
    if ctype is None:
        raise ValueError("cannot tell the upload's content type: pass content_type=")
    # a repeat would store the file twice: only a connection never made is retried
    headers = {"Content-Type": ctype}
    return Call("POST", "/v1/files", content=data, headers=headers, idempotent=False)


# -- answers ------------------------------------------------------------------------------------
def job_failure(status: Status) -> JobFailed:
    cls = JOB_ERRORS.get(status.status, JobFailed)
    err = status.error
    message = (err.message if err else None) or f"request {status.request_id} ended {status.status}"
    failure = cls(
        message,
        type=(err.type if err else None) or status.status.lower(),
        request_id=status.request_id,
        body=status.model_dump(),
    )
    failure.job_status = status.status
    failure.job = status
    return failure


def parse_result(body: Mapping[str, Any]) -> Result:
    """The result route's answer: a result, or the status of a job that ended without one
    (raised as ``JobFailed``)."""
    if body.get("status") != "COMPLETED":
        raise job_failure(Status.model_validate(body))
    if "outputs" not in body:  # answers from before "outputs" existed
        body = {**body, "outputs": body.get("images") or []}
    return Result.model_validate(body)


def run_error(response: httpx.Response) -> GenmediaError:
    """The sync route's error: a job that ended FAILED (500) or CANCELLED (409) is a
    ``JobFailed``; 504 ``deadline_expired`` a ``JobExpired``; the rest as everywhere."""
    err = error_of(response)
    if response.status_code == 504 and err.type == "deadline_expired":
        job_status = "EXPIRED"
    elif response.status_code in _JOB_FAILURE_STATUSES and isinstance(err.body, Mapping):
        job_status = _JOB_FAILURE_STATUSES[response.status_code]
    else:
        return err
    cls = JOB_ERRORS[job_status]
    failure = cls(err.message, status=err.status, type=err.type, body=err.body)
    failure.request_id = err.request_id
    failure.job_status = job_status
    return failure


def parse_bulk(start: int, body: Mapping[str, Any]) -> list[BulkItem]:
    """The bulk route's items, with indexes counted over the whole ``submit_many`` list."""
    out: list[BulkItem] = []
    for raw in body.get("items") or []:
        index = start + int(raw.get("index", len(out)))
        status = int(raw.get("status", 0))
        retry = raw.get("retry_after_s")
        if 200 <= status < 300 and isinstance(raw.get("job"), Mapping):
            out.append(BulkItem(index, status, handle=JobHandle.from_body(raw["job"])))
            continue
        error = error_from_body(
            status, {"error": raw.get("error")}, retry_after=retry, text=json.dumps(raw)
        )
        out.append(BulkItem(index, status, error=error, retry_after_s=retry))
    return out


# -- server-sent events --------------------------------------------------------------------------
@dataclass
class SSEMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None


class SSEDecoder:
    """Lines of a ``text/event-stream`` in, messages out (the WHATWG rules: ``event``,
    ``data`` joined by newlines, ``id``; comments and unknown fields skipped; a blank line
    ends a message)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SSEMessage | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data and not self._event:
                return None
            msg = SSEMessage(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return msg
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._id = value
        return None

    def messages(self, lines: Iterable[str]) -> Iterator[SSEMessage]:
        for line in lines:
            msg = self.feed(line)
            if msg is not None:
                yield msg
        last = self.feed("")  # a stream that ends without the final blank line
        if last is not None:
            yield last

    async def amessages(self, lines: AsyncIterable[str]) -> AsyncIterator[SSEMessage]:
        async for line in lines:
            msg = self.feed(line)
            if msg is not None:
                yield msg
        last = self.feed("")
        if last is not None:
            yield last


def news_key(status: Status) -> tuple[object, ...]:
    """What changes as a job moves (a keepalive or a reopened stream repeats it)."""
    step = status.progress.step if status.progress else None
    return (status.status, step, status.queue_position)


def stream_event(msg: SSEMessage) -> StreamEvent | None:
    """A typed event, or None for an event this client does not know (skipped)."""
    if msg.event not in ("status", "keepalive", "message") or not msg.data:
        return None
    try:
        data = json.loads(msg.data)
    except ValueError:
        return None
    if not isinstance(data, Mapping) or "request_id" not in data or "status" not in data:
        return None
    status = Status.model_validate(data)
    if msg.event == "keepalive" or data.get("type") == "keepalive":
        return KeepaliveEvent(status)
    return StatusEvent(status)
