"""Client over a fake gateway: retries and Retry-After, error classes, typed answers, files."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from genmedia.client import (
    AuthenticationError,
    BadRequest,
    Client,
    ConnectionFailed,
    GatewayTimeout,
    InvalidRequest,
    JobCancelled,
    JobExpired,
    JobFailed,
    NotFinished,
    NotFound,
    Output,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    Result,
    ServerError,
    Unavailable,
)
from genmedia.client.errors import parse_retry_after
from tests.unit.client.fakes import BASE, PNG, FakeGateway, error, result_body, status_body

SUBMIT = "/v1/queue/models/sd15-tiny"
GENERATE = "/v1/models/sd15-tiny/generate"
RUNNING = httpx.Response(
    200, json=status_body("r1", "IN_PROGRESS", progress={"step": 2, "total": 4})
)


def make(gw: FakeGateway, **kw) -> tuple[Client, list[float]]:
    client = Client(BASE, "gm_key", transport=gw.transport(), **kw)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return client, sleeps


def test_429_waits_retry_after_then_succeeds_with_the_same_idempotency_key():
    gw = FakeGateway().on(
        "POST",
        SUBMIT,
        error(429, "rate_limited", headers={"Retry-After": "2"}),
        error(503, "unavailable", headers={"Retry-After": "0.5"}),
        httpx.Response(202, json=status_body("r1", created=True)),
    )
    client, sleeps = make(gw)
    handle = client.submit("sd15-tiny", {"prompt": "x"}, priority="batch", deadline_s=30)
    assert handle.request_id == "r1" and handle.created is True
    assert handle.result_url == f"{BASE}/v1/queue/requests/r1"
    assert sleeps == [2.0, 0.5]
    calls = gw.calls("POST", SUBMIT)
    keys = {c.headers["idempotency-key"] for c in calls}
    assert len(calls) == 3 and len(keys) == 1 and keys.pop().startswith("gmc-")
    assert calls[0].headers["authorization"] == "Bearer gm_key"
    assert calls[0].headers["x-deadline-seconds"] == "30"
    assert json.loads(calls[0].content) == {"prompt": "x", "priority": "batch"}


def test_retries_are_bounded_and_the_last_error_carries_retry_after():
    full = error(429, "tenant_queue_full", headers={"Retry-After": "1"})
    gw = FakeGateway().on("POST", SUBMIT, full)
    client, sleeps = make(gw, max_retries=2)
    with pytest.raises(RateLimited) as e:
        client.submit("sd15-tiny", {"prompt": "x"}, idempotency_key="order-1")
    assert e.value.retry_after == 1.0 and e.value.type == "tenant_queue_full"
    assert sleeps == [1.0, 1.0] and len(gw.requests) == 3
    assert {r.headers["idempotency-key"] for r in gw.requests} == {"order-1"}


def test_a_retry_after_longer_than_the_cap_is_raised_not_waited():
    late = error(429, "deadline_unmeetable", headers={"Retry-After": "900"})
    gw = FakeGateway().on("POST", SUBMIT, late)
    client, sleeps = make(gw, max_retry_wait_s=60)
    with pytest.raises(RateLimited) as e:
        client.submit("sd15-tiny", {"prompt": "x"})
    assert e.value.retry_after == 900 and sleeps == [] and len(gw.requests) == 1


def test_503_without_retry_after_backs_off_exponentially():
    gw = FakeGateway().on("GET", "/v1/queue/requests/r1/status", error(503, "unavailable"))
    client, sleeps = make(gw, max_retries=3)
    with pytest.raises(Unavailable) as e:
        client.status("r1")
    assert e.value.retry_after is None and len(sleeps) == 3
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0 and 1.0 <= sleeps[2] <= 2.0


def test_connection_errors_retry_reads_but_not_the_read_timeout_of_the_sync_call():
    gw = FakeGateway().on(
        "GET",
        "/v1/queue/requests/r1/status",
        httpx.ReadError("reset"),
        httpx.ConnectError("refused"),
        RUNNING,
    )
    client, sleeps = make(gw)
    status = client.status("r1")
    assert status.progress and status.progress.step == 2 and len(sleeps) == 2
    gw = FakeGateway().on("POST", GENERATE, httpx.ReadTimeout("slow"))
    client, sleeps = make(gw)
    with pytest.raises(RequestTimeout):
        client.run("sd15-tiny", {"prompt": "x"})
    assert len(gw.requests) == 1  # a read timeout of the sync call is not waited out again
    gw = FakeGateway().on("GET", "/v1/models", httpx.ConnectError("refused"))
    client, sleeps = make(gw, max_retries=1)
    with pytest.raises(ConnectionFailed) as e:
        client.models()
    assert e.value.status is None and e.value.type == "connection_error" and len(sleeps) == 1


@pytest.mark.parametrize(
    ("status", "type_", "cls"),
    [
        (400, "malformed_json", BadRequest),
        (401, "unauthorized", AuthenticationError),
        (403, "forbidden", PermissionDenied),
        (404, "model_not_found", NotFound),
        (413, "payload_too_large", PayloadTooLarge),
        (422, "invalid_request", InvalidRequest),
        (500, "internal", ServerError),
        (502, "bad_gateway", ServerError),
    ],
)
def test_error_statuses_map_to_classes_with_fields_and_limits(status, type_, cls):
    fields = [{"field": "width", "message": "over the bound", "limit": 1024}]
    gw = FakeGateway().on("POST", SUBMIT, error(status, type_, "it broke", fields))
    client, _ = make(gw)
    with pytest.raises(cls) as e:
        client.submit("sd15-tiny", {"prompt": "x"})
    err = e.value
    assert (err.status, err.type, err.message) == (status, type_, "it broke")
    assert err.field == "width" and err.limit == 1024
    assert "width: over the bound (limit: 1024)" in str(err)


def test_an_error_that_is_not_json_keeps_its_text():
    gw = FakeGateway().on("GET", "/v1/models", httpx.Response(502, text="Bad Gateway"))
    client, _ = make(gw)
    with pytest.raises(ServerError) as e:
        client.models()
    assert e.value.type == "http_error" and e.value.message == "Bad Gateway"


def test_run_answers_a_typed_result_and_maps_job_failures():
    gw = FakeGateway().on("POST", GENERATE, httpx.Response(200, json=result_body("r9", n=2)))
    client, _ = make(gw)
    result = client.run("sd15-tiny", {"prompt": "x", "seed": 7})
    assert result.request_id == "r9" and [o.seed for o in result.outputs] == [7, 8]
    assert result.images == result.outputs and result.outputs[0].width == 64
    assert result.timings and result.timings.total_s == 0.7
    assert result.model_extra and result.model_extra["a_key_added_later"] == {"x": 1}
    assert gw.requests[0].headers["idempotency-key"].startswith("gmc-")
    for answer, cls, job_status in [
        (error(500, "generation_failed", "boom"), JobFailed, "FAILED"),
        (error(409, "cancelled", "cancelled"), JobCancelled, "CANCELLED"),
        (error(504, "deadline_expired", "late"), JobExpired, "EXPIRED"),
    ]:
        client, _ = make(FakeGateway().on("POST", GENERATE, answer))
        with pytest.raises(cls) as e:
            client.run("sd15-tiny", {"prompt": "x"})
        assert e.value.job_status == job_status and e.value.status == answer.status_code
    client, _ = make(FakeGateway().on("POST", GENERATE, error(504, "timeout", "goes on")))
    with pytest.raises(GatewayTimeout):
        client.run("sd15-tiny", {"prompt": "x"})


def test_result_not_finished_failed_and_cancel():
    rid_path = "/v1/queue/requests/r1"
    gw = FakeGateway().on(
        "GET",
        rid_path,
        error(409, "not_finished", headers={"Retry-After": "1"}),
        httpx.Response(
            200,
            json=status_body("r1", "FAILED", error={"type": "generation_failed", "message": "oom"}),
        ),
    )
    cancelled = {"request_id": "r1", "status": "CANCELLATION_REQUESTED"}
    gw.on("PUT", rid_path + "/cancel", httpx.Response(202, json=cancelled))
    client, sleeps = make(gw)
    with pytest.raises(NotFinished) as nf:
        client.result("r1")
    assert nf.value.retry_after == 1.0 and sleeps == []  # 409 is not retried
    with pytest.raises(JobFailed) as e:
        client.result("r1")
    assert e.value.type == "generation_failed" and e.value.message == "oom"
    assert e.value.job is not None and e.value.job.status == "FAILED"
    assert client.cancel("r1").status == "CANCELLATION_REQUESTED"


def test_status_with_logs_and_fields_added_later():
    body = status_body(
        "r1",
        "IN_PROGRESS",
        progress={"step": 1, "total": 4},
        logs=[{"t": 1.0, "message": "model loaded", "level": "info"}],
        response_url=f"{BASE}/v1/queue/requests/r1",
        brand_new={"a": 1},
    )
    gw = FakeGateway().on("GET", "/v1/queue/requests/r1/status", httpx.Response(200, json=body))
    client, _ = make(gw)
    status = client.status("r1", logs=True)
    assert gw.requests[0].url.params["logs"] == "1"
    assert status.logs and status.logs[0].message == "model loaded"
    assert status.response_url and not status.done and status.progress
    assert status.progress.fraction == 0.25


def test_upload_sniffs_the_type_and_downloads_send_the_key_only_to_the_gateway(tmp_path):
    upload = {"id": "upl_1", "url": f"{BASE}/v1/files/x.png", "width": 8, "height": 8}
    gw = FakeGateway().on("POST", "/v1/files", httpx.Response(201, json=upload))
    gw.on("GET", "/v1/files/dev/2026/01/01/r1/0.png", httpx.Response(200, content=PNG))
    gw.on("GET", "/bucket/0.png", httpx.Response(200, content=b"s3"))
    client, _ = make(gw)
    assert client.upload(PNG).id == "upl_1"
    assert gw.requests[-1].headers["content-type"] == "image/png"
    path = tmp_path / "in.webp"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    client.upload(path)
    assert gw.requests[-1].headers["content-type"] == "image/webp"
    with pytest.raises(ValueError, match="content_type"):
        client.upload(b"not an image")

    res = Result.model_validate(result_body("r1"))
    paths = client.save_all(res, tmp_path / "out")
    assert [p.name for p in paths] == ["r1-0.png"] and paths[0].read_bytes() == PNG
    assert gw.requests[-1].headers["authorization"] == "Bearer gm_key"
    elsewhere = Output(url="http://s3.test/bucket/0.png")
    assert client.download(elsewhere) == b"s3"
    assert "authorization" not in gw.requests[-1].headers
    inline = Output(url=f"{BASE}/v1/files/a.png", base64=base64.b64encode(b"abc").decode())
    n = len(gw.requests)
    assert client.download(inline) == b"abc" and len(gw.requests) == n
    assert client.save(inline, tmp_path / "f.png").read_bytes() == b"abc"


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) == 6.0
    assert parse_retry_after("-3") == 0.0


def test_defaults_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("GENMEDIA_URL", "http://env.test:9/")
    monkeypatch.setenv("GENMEDIA_API_KEY", "gm_env")
    with Client() as client:
        assert client.base_url == "http://env.test:9" and client.api_key == "gm_env"
    with pytest.raises(ValueError):
        Client(BASE, "k", max_retries=-1)
