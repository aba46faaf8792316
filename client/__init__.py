"""genmedia's Python client: ``Client`` and ``AsyncClient`` for the HTTP API, typed answers and
one exception per error; ``genmedia run`` (``cli.py``) is built on it.

The caller's side of a request's way, in its own package: it imports httpx and pydantic, never
Ray, torch, diffusers or anything else of genmedia (``pip install genmedia[client]`` lists what
it needs).

    from genmedia.client import Client

    with Client("http://127.0.0.1:8000", api_key) as client:
        result = client.subscribe("sd15-tiny", {"prompt": "a red fox"}, on_update=print)
        client.save_all(result, "out/")
"""

from genmedia.client.aio import AsyncClient
from genmedia.client.errors import (
    AuthenticationError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    FieldError,
    GatewayTimeout,
    GenmediaError,
    InvalidRequest,
    JobCancelled,
    JobExpired,
    JobFailed,
    NotFinished,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ServerError,
    Unavailable,
    UnsupportedMediaType,
)
from genmedia.client.sync import Client
from genmedia.client.types import (
    BulkItem,
    BulkSubmission,
    JobHandle,
    KeepaliveEvent,
    LogEntry,
    ModelInfo,
    Output,
    Preview,
    Progress,
    Result,
    Status,
    StatusEvent,
    StreamEvent,
    Timings,
    Upload,
)

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "BadRequest",
    "BulkItem",
    "BulkSubmission",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "FieldError",
    "GatewayTimeout",
    "GenmediaError",
    "InvalidRequest",
    "JobCancelled",
    "JobExpired",
    "JobFailed",
    "JobHandle",
    "KeepaliveEvent",
    "LogEntry",
    "ModelInfo",
    "NotFinished",
    "NotFound",
    "Output",
    "PayloadTooLarge",
    "PermissionDenied",
    "Preview",
    "Progress",
    "RateLimited",
    "RequestTimeout",
    "Result",
    "ServerError",
    "Status",
    "StatusEvent",
    "StreamEvent",
    "Timings",
    "Unavailable",
    "UnsupportedMediaType",
    "Upload",
]
