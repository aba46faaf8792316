"""The queue API and the scheduler on a real local Ray Serve: status, progress, cancel,
webhooks, idempotency, deadlines, backpressure, usage, isolation, priority."""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from genmedia.deployments.webhooks.signing import receiver_secret
from tests.integration.conftest import CAPPED_KEY, OTHER_KEY, TINY_KEY, WEBHOOK_SECRET
from tests.sse import stream_events

pytestmark = pytest.mark.integration
SLOW = {"num_inference_steps": 50, "width": 256, "height": 256}  # seconds on the tiny UNet


def submit(http, model="sd15-tiny", headers=None, **body):
    body.setdefault("prompt", "a lighthouse")
    return http.post(f"/v1/queue/models/{model}", json=body, headers=headers or {})


def wait_status(http, rid, want, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"/v1/queue/requests/{rid}/status")
        if r.status_code == 200 and r.json()["status"] in want:
            return r.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"{rid} never reached {want}: {r.text}")
        time.sleep(0.05)


def occupy_sd15(http, n=2, model="sd15-tiny"):
    """Fill both slots of the sd15 worker with long interactive jobs; returns their ids."""
    ids = [
        submit(http, model=model, priority="interactive", seed=i, **SLOW).json()["request_id"]
        for i in range(n)
    ]
    for rid in ids:
        wait_status(http, rid, {"IN_PROGRESS"})
    while wait_status(http, ids[0], {"IN_PROGRESS"})["progress"]["step"] < 1:
        time.sleep(0.05)
    return ids


def finish(http, ids):
    for rid in ids:
        http.put(f"/v1/queue/requests/{rid}/cancel")
    for rid in ids:
        wait_status(http, rid, {"COMPLETED", "CANCELLED", "FAILED"})


def test_submit_status_result_and_stream(http):
    r = submit(http, num_inference_steps=6, seed=3)
    assert r.status_code == 202, r.text
    body = r.json()
    rid = body["request_id"]
    assert body["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    for name in ("status_url", "result_url", "cancel_url", "stream_url"):
        assert body[name].endswith(rid) or rid in body[name]
    events = stream_events(http, f"/v1/queue/requests/{rid}/stream")
    assert events[-1]["status"] == "COMPLETED"
    steps = [e["progress"]["step"] for e in events if e["status"] == "IN_PROGRESS"]
    assert steps and steps[-1] == 6 and steps == sorted(steps)
    result = http.get(f"/v1/queue/requests/{rid}").json()
    assert result["status"] == "COMPLETED" and result["images"][0]["seed"] == 3
    timings = result["timings"]
    assert set(timings) >= {"queue_s", "load_s", "wait_s", "paused_s", "compute_s", "store_s"}
    assert 0 < timings["device_s"] <= timings["compute_s"] <= timings["total_s"]
    assert timings["paused_s"] >= 0
    assert http.get(result["images"][0]["url"]).status_code == 200


def test_queued_position_eta_and_cancel_queued_and_running(http):
    busy = occupy_sd15(http)
    queued = submit(http, priority="batch", num_inference_steps=2).json()["request_id"]
    st = wait_status(http, queued, {"IN_QUEUE"})
    assert st["queue_position"] == 0 and "eta_s" in st
    r = http.get(f"/v1/queue/requests/{queued}")
    assert r.status_code == 409 and r.json()["error"]["type"] == "not_finished"
    assert http.put(f"/v1/queue/requests/{queued}/cancel").status_code == 202
    assert wait_status(http, queued, {"CANCELLED"})["status"] == "CANCELLED"
    r = http.put(f"/v1/queue/requests/{queued}/cancel")
    assert r.status_code == 400 and r.json()["error"]["type"] == "already_completed"
    # A running job stops between steps and frees its slot: the next job starts long before
    # the cancelled one would have finished.
    nxt = submit(http, priority="interactive", num_inference_steps=2).json()["request_id"]
    step_before = wait_status(http, busy[0], {"IN_PROGRESS"})["progress"]["step"]
    t0 = time.monotonic()
    assert http.put(f"/v1/queue/requests/{busy[0]}/cancel").status_code == 202
    assert wait_status(http, busy[0], {"CANCELLED"})["status"] == "CANCELLED"
    wait_status(http, nxt, {"IN_PROGRESS", "COMPLETED"})
    freed_after = time.monotonic() - t0
    assert step_before < 50 and freed_after < 5.0
    assert http.put("/v1/queue/requests/does-not-exist/cancel").status_code == 404
    finish(http, [*busy[1:], nxt])


def test_interactive_preempts_a_running_batch_call(http, serve_app):
    from ray import serve

    bulk = submit(http, priority="batch", seed=1, **SLOW).json()["request_id"]
    while wait_status(http, bulk, {"IN_PROGRESS"})["progress"]["step"] < 1:
        time.sleep(0.05)  # computing, not just dispatched
    t0 = time.monotonic()
    r = http.post("/v1/models/sd15-tiny/generate", json={"prompt": "now", "num_inference_steps": 2})
    latency = time.monotonic() - t0
    assert r.status_code == 200
    assert wait_status(http, bulk, {"IN_PROGRESS", "COMPLETED"})["status"] == "IN_PROGRESS"
    assert latency < 5.0  # did not wait for the 50-step batch call
    info = serve.get_deployment_handle("worker-sd15", "genmedia").info.remote().result()
    assert info["preemptions"] >= 1
    finish(http, [bulk])


def test_idempotency_key_returns_the_same_job(http):
    h = {"Idempotency-Key": "order-42"}
    a = submit(http, headers=h, num_inference_steps=2).json()
    b = submit(http, headers=h, num_inference_steps=2).json()
    assert a["request_id"] == b["request_id"]
    c = submit(http, headers={"Idempotency-Key": "order-43"}, num_inference_steps=2).json()
    assert c["request_id"] != a["request_id"]
    assert submit(http, headers={"Idempotency-Key": "bad key!"}).status_code == 422


def test_deadline_expired_in_queue_or_rejected_at_submit(http):
    # sd15-tiny-fresh has never run: with no service-time estimate the deadline is admitted,
    # and it passes while the job waits behind the two long calls.
    busy = occupy_sd15(http, model="sd15-tiny-fresh")
    r = submit(
        http, model="sd15-tiny-fresh", headers={"X-Deadline-Seconds": "0.5"}, priority="batch"
    )
    assert r.status_code == 202, r.text
    st = wait_status(http, r.json()["request_id"], {"EXPIRED"}, timeout=10)
    assert st["error"]["type"] == "deadline_expired"
    finish(http, busy)
    # sd15-tiny has run: long calls ahead make a 0.5 s deadline unmeetable, refused at submit.
    busy = occupy_sd15(http)
    r = submit(http, headers={"X-Deadline-Seconds": "0.5"}, priority="batch", **SLOW)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["type"] == "deadline_unmeetable"
    assert int(r.headers["retry-after"]) >= 1
    assert submit(http, headers={"X-Deadline-Seconds": "soon"}).status_code == 422
    finish(http, busy)


def test_backpressure_and_rate_limit_answer_429(base_url, http):
    busy = occupy_sd15(http)
    with httpx.Client(
        base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {TINY_KEY}"}
    ) as tiny:  # 4 calls a minute (a read costs a fifth of one), one queued job
        r = submit(tiny, priority="interactive")
        assert r.status_code == 403  # tiny may only use the batch class
        assert r.headers["x-ratelimit-limit"] == "4"
        first = submit(tiny, num_inference_steps=2)
        assert first.status_code == 202, first.text
        assert int(first.headers["x-ratelimit-remaining"]) == 2
        r = submit(tiny, num_inference_steps=2)
        assert r.status_code == 429 and r.json()["error"]["type"] == "tenant_queue_full"
        assert int(r.headers["retry-after"]) >= 1
        r = submit(tiny, num_inference_steps=2)  # its last token
        assert r.status_code == 429 and r.json()["error"]["type"] == "tenant_queue_full"
        r = submit(tiny, num_inference_steps=2)  # the fifth call within the minute
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-remaining"] == "0"
        finish(http, busy)
        status = f"/v1/queue/requests/{first.json()['request_id']}/status"
        for _ in range(20):  # a read needs a fifth of a token: back within seconds
            st = tiny.get(status)
            if st.status_code != 429:
                break
            time.sleep(float(st.headers["retry-after"]))
        assert st.json()["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")  # not lost


def test_bulk_submit_answers_per_item_and_max_concurrent_jobs_limits_running_jobs(base_url):
    with httpx.Client(
        base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {CAPPED_KEY}"}
    ) as capped:
        items = [{"prompt": f"bulk {i}", "num_inference_steps": 3, "seed": i} for i in range(4)]
        items.insert(2, {"prompt": "too wide", "width": 7})
        r = capped.post("/v1/queue/models/sd15-tiny/batch", json={"requests": items})
        assert r.status_code == 200, r.text
        answers = r.json()["items"]
        assert [a["status"] for a in answers] == [202, 202, 422, 202, 202]
        ids = [a["job"]["request_id"] for a in answers if a["status"] == 202]
        spans = []
        for job_id in ids:  # none refused: the jobs over the cap waited in the queue
            st = wait_status(capped, job_id, {"COMPLETED"})
            result = capped.get(f"/v1/queue/requests/{job_id}").json()
            start = st["submitted_at"] + result["timings"]["queue_s"]
            spans.append((start, st["finished_at"]))
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 0.05, spans  # one running at a time (clock rounding)


def test_tenant_isolation_and_usage(base_url, http):
    rid = submit(http, num_inference_steps=2).json()["request_id"]
    result = None
    for _ in range(600):
        result = http.get(f"/v1/queue/requests/{rid}")
        if result.status_code == 200:
            break
        time.sleep(0.05)
    path = result.json()["images"][0]["path"]
    with httpx.Client(
        base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {OTHER_KEY}"}
    ) as other:
        assert other.get(f"/v1/queue/requests/{rid}/status").status_code == 404
        assert other.get(f"/v1/queue/requests/{rid}").status_code == 404
        assert other.put(f"/v1/queue/requests/{rid}/cancel").status_code == 404
        assert other.get(f"/v1/files/{path}").status_code == 404
        assert other.get("/v1/usage").json()["models"] == {}
    usage = http.get("/v1/usage").json()
    sd15 = usage["models"]["sd15-tiny"]
    assert usage["tenant"] == "dev" and sd15["jobs"] >= 1 and sd15["images"] >= 1
    assert sd15["steps"] >= 2 and sd15["compute_s"] > 0


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((dict(self.headers), body))
        self.send_response(503 if len(_Receiver.received) == 1 else 200)  # one retry
        self.end_headers()

    def log_message(self, *args):
        pass


def test_completion_webhook_is_signed_and_retried(http):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        rid = submit(http, num_inference_steps=2, webhook_url=url).json()["request_id"]
        wait_status(http, rid, {"COMPLETED"})
        deadline = time.monotonic() + 20
        while len(_Receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_Receiver.received) == 2  # 503 then 200
        headers, body = _Receiver.received[-1]
        event = json.loads(body)
        assert event["request_id"] == rid and event["status"] == "COMPLETED"
        assert event["type"] == "job.completed"
        # Standard Webhooks, checked by the standardwebhooks package as a receiver would; the
        # tenant's plain secret is the key bytes ('whsec_' + base64 of it for the library)
        assert Webhook(receiver_secret(WEBHOOK_SECRET)).verify(body, headers) == event
        with pytest.raises(WebhookVerificationError):
            Webhook(receiver_secret("wrong-secret-0123456789")).verify(body, headers)
        ids = {h["webhook-id"] for h, _ in _Receiver.received}
        assert len(ids) == 1 and ids.pop().startswith("msg_")  # one delivery id across retries
    finally:
        server.shutdown()
    r = submit(http, webhook_url="http://169.254.169.254/latest")
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["limit"] == "public_address"
