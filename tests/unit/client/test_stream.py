"""Server-sent events: the decoder, typed events, reconnects, ``wait`` and ``subscribe``."""

from __future__ import annotations

import base64

import httpx
import pytest

from genmedia.client import (
    Client,
    ConnectionFailed,
    JobCancelled,
    KeepaliveEvent,
    RequestTimeout,
    StatusEvent,
)
from genmedia.client._core import SSEDecoder, SSEMessage, stream_event
from tests.unit.client.fakes import BASE, FakeGateway, result_body, sse, status_body

STREAM = "/v1/queue/requests/r1/stream"
RESULT = "/v1/queue/requests/r1"
SUBMIT = "/v1/queue/models/sd15-tiny"


def make(gw: FakeGateway, **kw) -> tuple[Client, list[float]]:
    client = Client(BASE, "gm_key", transport=gw.transport(), **kw)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return client, sleeps


def running(step: int, total: int = 4, **extra):
    return status_body("r1", "IN_PROGRESS", progress={"step": step, "total": total}, **extra)


def test_decoder_follows_the_event_stream_rules():
    lines = [
        ": a comment",
        "event: status",
        'data: {"a":',
        "data:  1}",
        "id: 7",
        "retry: 100",
        "unknown: field",
        "",
        "",
        "data: plain\r",
        "\r",
        "event: status",
        "data: last, without the final blank line",
    ]
    msgs = list(SSEDecoder().messages(lines))
    assert msgs == [
        SSEMessage("status", '{"a":\n 1}', "7"),
        SSEMessage("message", "plain", "7"),
        SSEMessage("status", "last, without the final blank line", "7"),
    ]


def test_events_are_typed_unknown_keys_kept_and_unknown_events_skipped():
    png = base64.b64encode(b"\x89PNG...").decode()
    preview = {"step": 2, "png_base64": png, "width": 8, "height": 8, "palette": "new"}
    data = running(2, preview=preview, something_new=[1, 2])
    import json

    event = stream_event(SSEMessage("status", json.dumps(data)))
    assert isinstance(event, StatusEvent) and event.progress and event.progress.step == 2
    assert event.preview and event.preview.png() == b"\x89PNG..." and event.preview.width == 8
    assert event.status.model_extra == {"something_new": [1, 2]}
    keep = stream_event(SSEMessage("keepalive", json.dumps({"type": "keepalive", **data})))
    assert isinstance(keep, KeepaliveEvent)
    assert stream_event(SSEMessage("log", json.dumps(data))) is None
    assert stream_event(SSEMessage("status", "not json")) is None
    assert stream_event(SSEMessage("status", '{"no": "status"}')) is None


def test_stream_yields_statuses_until_the_end_and_hides_keepalives():
    body = sse(
        ("status", status_body("r1", "IN_QUEUE", queue_position=1, eta_s=2.0)),
        ("keepalive", {"type": "keepalive", **status_body("r1", "IN_QUEUE", queue_position=0)}),
        ("status", running(1)),
        ("status", running(4)),
        ("status", status_body("r1", "COMPLETED")),
    )
    headers = {"content-type": "text/event-stream"}
    gw = FakeGateway().on("GET", STREAM, httpx.Response(200, content=body, headers=headers))
    client, _ = make(gw)
    events = list(client.stream("r1"))
    assert [e.status.status for e in events] == [
        "IN_QUEUE",
        "IN_PROGRESS",
        "IN_PROGRESS",
        "COMPLETED",
    ]
    assert all(isinstance(e, StatusEvent) for e in events)
    assert gw.requests[0].headers["accept"] == "text/event-stream"
    assert len(list(client.stream("r1", keepalives=True))) == 5


def test_a_broken_stream_is_reopened_and_gives_up_after_max_retries():
    first = httpx.Response(200, content=sse(("status", running(1))))  # ends early
    second = httpx.Response(
        200, content=sse(("status", running(3)), ("status", status_body("r1", "COMPLETED")))
    )
    gw = FakeGateway().on("GET", STREAM, first, second)
    client, sleeps = make(gw)
    steps = [e.progress.step if e.progress else None for e in client.stream("r1")]
    assert steps == [1, 3, None] and len(sleeps) == 1
    gw = FakeGateway().on("GET", STREAM, httpx.Response(200, content=sse(("status", running(1)))))
    client, sleeps = make(gw, max_retries=2)
    with pytest.raises(ConnectionFailed, match="ended before the job"):
        list(client.stream("r1"))
    assert len(gw.requests) == 3 and len(sleeps) == 2  # the first try, 2 reopenings


def test_subscribe_sees_progress_and_returns_the_result():
    body = sse(
        ("status", status_body("r1", "IN_QUEUE", queue_position=0)),
        ("status", running(2)),
        ("status", running(4)),
        ("status", status_body("r1", "COMPLETED", finished_at=3.0)),
    )
    gw = FakeGateway().on("POST", SUBMIT, httpx.Response(202, json=status_body("r1")))
    gw.on("GET", STREAM, httpx.Response(200, content=body))
    gw.on("GET", RESULT, httpx.Response(200, json=result_body("r1")))
    client, _ = make(gw)
    seen = []
    result = client.subscribe("sd15-tiny", {"prompt": "x"}, on_update=seen.append)
    assert result.request_id == "r1" and len(result.outputs) == 1
    assert [e.progress.step for e in seen if e.progress] == [2, 4]
    assert seen[-1].status.done


def test_wait_raises_the_job_failure_and_its_timeout():
    cancelled = status_body("r1", "CANCELLED", error={"type": "cancelled", "message": "by you"})
    gw = FakeGateway().on("GET", STREAM, httpx.Response(200, content=sse(("status", cancelled))))
    client, _ = make(gw)
    with pytest.raises(JobCancelled) as e:
        client.wait("r1")
    assert e.value.request_id == "r1" and e.value.job_status == "CANCELLED"
    body = sse(("status", running(1)), ("keepalive", {"type": "keepalive", **running(1)}))
    gw = FakeGateway().on("GET", STREAM, httpx.Response(200, content=body))
    client, _ = make(gw)
    with pytest.raises(RequestTimeout) as t:
        client.wait("r1", timeout=0)
    assert t.value.type == "wait_timeout" and t.value.request_id == "r1"
