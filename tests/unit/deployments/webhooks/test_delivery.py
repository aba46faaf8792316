"""Webhook delivery to a real local receiver: retries, backoff, signatures, refusals."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from genmedia.deployments.webhooks.delivery import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    backoff_delay,
    deliver,
)
from genmedia.deployments.webhooks.signing import SIGNATURE_HEADER, verify
from genmedia.models.server_config import WebhookPolicy
from tests.unit.deployments.webhooks.fakes import DNS, fake_resolver

SECRET = "whsec_" + "k" * 26


def test_backoff_delay_shape():
    p = WebhookPolicy(backoff_base_s=1.0, backoff_max_s=10.0, jitter=0.2)
    assert [backoff_delay(n, p, rng=lambda: 0.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(2, p, rng=lambda: 1.0) == pytest.approx(3.2)
    assert backoff_delay(0, p, retry_after_s=7) == 7  # honoured within the cap
    assert backoff_delay(0, p, retry_after_s=60, rng=lambda: 0.0) == 1  # above it: ignored
    assert backoff_delay(100, p, rng=lambda: 0.0) == 10


# -- delivery against a real local receiver ---------------------------------------------------
class _QuietServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for handlers: nothing outlives the test

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeout test) is expected, not worth a traceback


class Receiver:
    """An HTTP server on 127.0.0.1 (random port) answering from a script of
    (status, headers, delay_s); records every request."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                status, headers, delay = (
                    receiver.script.pop(0) if receiver.script else (200, {}, 0.0)
                )
                if delay:
                    receiver.closing.wait(delay)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.closing = threading.Event()
        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> Receiver:
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()  # wake a handler still sleeping; server_close() joins them all
        self.server.shutdown()
        self.server.server_close()


LOCAL = WebhookPolicy(
    allowed_hosts=["127.0.0.1"], timeout_s=2.0, backoff_base_s=0.5, backoff_max_s=30.0
)
EVENT = {"type": "job.completed", "request_id": "r-1", "status": "COMPLETED", "tenant": "acme"}


def run_deliver(url, event=EVENT, secret=SECRET, policy=LOCAL, **kw):
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    result = asyncio.run(
        deliver(url, event, secret, policy, sleep=fake_sleep, resolve=kw.pop("resolve", DNS), **kw)
    )
    return result, sleeps


def test_retries_503_then_succeeds_signed():
    with Receiver([(503, {}, 0), (503, {}, 0)]) as rx:
        result, sleeps = run_deliver(rx.url)
    assert (result.ok, result.attempts, result.status_code, result.error) == (True, 3, 200, None)
    assert len(rx.requests) == 3
    # exponential backoff: base * 2^n, less up to jitter (20 %)
    assert len(sleeps) == 2
    for n, s in enumerate(sleeps):
        assert 0.8 * 0.5 * 2**n <= s <= 0.5 * 2**n, sleeps
    for i, req in enumerate(rx.requests):
        h = req["headers"]
        assert verify(SECRET, req["body"], h[SIGNATURE_HEADER], time.time())
        assert not verify("wrong-secret-0123456", req["body"], h[SIGNATURE_HEADER], time.time())
        assert h[EVENT_HEADER] == "job.completed" and h["X-Genmedia-Attempt"] == str(i + 1)
        assert h["Content-Type"] == "application/json"
        assert json.loads(req["body"]) == EVENT
    ids = {r["headers"][DELIVERY_HEADER] for r in rx.requests}
    assert len(ids) == 1 and ids == {result.delivery_id}  # receivers dedupe on it
    uuid.UUID(result.delivery_id)


def test_exact_exponential_shape_without_jitter():
    with Receiver([(500, {}, 0)] * 4) as rx:
        result, sleeps = run_deliver(rx.url, rng=lambda: 0.0)
    assert result.ok and result.attempts == 5
    assert sleeps == [0.5, 1.0, 2.0, 4.0]


def test_4xx_is_not_retried():
    with Receiver([(400, {}, 0)]) as rx:
        result, sleeps = run_deliver(rx.url)
    assert (result.ok, result.attempts, result.status_code) == (False, 1, 400)
    assert "400" in result.error and sleeps == [] and len(rx.requests) == 1


def test_redirects_are_not_followed():
    with Receiver([(302, {"Location": "http://169.254.169.254/"}, 0)]) as rx:
        result, sleeps = run_deliver(rx.url)
    assert (result.ok, result.attempts, result.status_code) == (False, 1, 302)
    assert "redirects are not followed" in result.error and len(rx.requests) == 1
    assert sleeps == []


def test_429_retry_after_honoured_within_cap():
    script = [(429, {"Retry-After": "7"}, 0), (429, {"Retry-After": "3600"}, 0)]
    with Receiver(script) as rx:
        result, sleeps = run_deliver(rx.url, rng=lambda: 0.0)
    assert result.ok and result.attempts == 3
    assert sleeps == [7.0, 1.0]  # the second Retry-After exceeds backoff_max_s: backoff instead


def test_unreachable_port_gives_up_after_max_attempts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = LOCAL.model_copy(update={"max_attempts": 3})
    result, sleeps = run_deliver(f"http://127.0.0.1:{port}/hook", policy=policy)
    assert (result.ok, result.attempts, result.status_code) == (False, 3, None)
    assert "connection failed" in result.error and "3 attempt" in result.error
    assert len(sleeps) == 2


def test_timeout_is_retried():
    policy = LOCAL.model_copy(update={"timeout_s": 0.2, "max_attempts": 2})
    with Receiver([(200, {}, 0.6), (200, {}, 0)]) as rx:
        result, sleeps = run_deliver(rx.url, policy=policy)
    assert result.ok and result.attempts == 2 and len(sleeps) == 1


def test_connects_to_the_checked_address_with_the_original_host():
    resolve = fake_resolver({"hooks.tenant.test": ["127.0.0.1"]})
    with Receiver() as rx:
        result, _ = run_deliver(f"http://hooks.tenant.test:{rx.port}/hook", resolve=resolve)
    assert result.ok
    assert rx.requests[0]["headers"]["Host"] == f"hooks.tenant.test:{rx.port}"


def test_url_rechecked_before_each_attempt():
    answers = iter([["127.0.0.1"], ["10.0.0.7"]])  # DNS changes after the first try

    def resolve(host, port, *a, **k):
        return fake_resolver({host: next(answers)})(host, port)

    with Receiver([(503, {}, 0)]) as rx:
        result, sleeps = run_deliver(f"http://rebind.test:{rx.port}/hook", resolve=resolve)
    assert not result.ok and result.attempts == 2 and len(rx.requests) == 1
    assert "public_address" in result.error and "10.0.0.7" in result.error
    assert len(sleeps) == 1


def test_refused_urls_and_bad_events_never_raise():
    result, sleeps = run_deliver("http://10.0.0.1/hook")
    assert (result.ok, result.attempts) == (False, 1) and "public_address" in result.error
    assert sleeps == []
    result, sleeps = run_deliver("http://nxdomain.test/hook")  # DNS may come back: retried
    assert result.attempts == LOCAL.max_attempts and "resolve" in result.error
    result, _ = run_deliver("http://127.0.0.1:1/hook", event={"when": object()})
    assert not result.ok and result.attempts == 0 and "TypeError" in result.error


def test_unsigned_without_secret_and_custom_event_type():
    with Receiver() as rx:
        result, _ = run_deliver(rx.url, event={"type": "job.failed", "id": 1}, secret=None)
    assert result.ok
    h = rx.requests[0]["headers"]
    assert SIGNATURE_HEADER not in h and h[EVENT_HEADER] == "job.failed"
