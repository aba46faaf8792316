"""Webhook delivery to a real local receiver: retries, backoff, Standard Webhooks headers,
refusals, the total deadline of an attempt and the host lookup's timeout."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from genmedia.deployments.webhooks.delivery import backoff_delay, deliver
from genmedia.deployments.webhooks.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from genmedia.models.server_config import WebhookPolicy
from tests.unit.deployments.webhooks.fakes import DNS, fake_resolver

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()


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
    for req in rx.requests:
        h = req["headers"]
        # what a receiver runs: the standardwebhooks package's own verification
        assert Webhook(SECRET).verify(req["body"], h) == EVENT
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + base64.b64encode(b"w" * 24).decode()).verify(req["body"], h)
        assert abs(int(h[TIMESTAMP_HEADER]) - time.time()) < 60
        assert h["Content-Type"] == "application/json"
        assert json.loads(req["body"]) == EVENT
    ids = {r["headers"][ID_HEADER] for r in rx.requests}
    assert len(ids) == 1 and ids == {result.delivery_id}  # receivers dedupe on it
    assert result.delivery_id.startswith("msg_")


def test_given_delivery_id_is_sent():
    with Receiver() as rx:
        result, _ = run_deliver(rx.url, delivery_id="msg_fixed")
    assert result.ok and rx.requests[0]["headers"][ID_HEADER] == "msg_fixed"


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
    assert not result.ok and result.attempts == 0 and "not JSON" in result.error


def test_unsigned_without_secret():
    with Receiver() as rx:
        result, _ = run_deliver(rx.url, event={"type": "job.failed", "id": 1}, secret=None)
    assert result.ok
    h = {k.lower(): v for k, v in rx.requests[0]["headers"].items()}
    assert SIGNATURE_HEADER not in h and h[ID_HEADER].startswith("msg_") and TIMESTAMP_HEADER in h


# -- the total deadline of one attempt and the host lookup's timeout ----------------------------
class Dribbler:
    """A TCP receiver that sends its answer one byte every 0.1 s: each read is quick, the whole
    answer is not (only a total deadline stops it)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn):
        answer = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 400 + b"\r\nContent-Length: 0\r\n\r\n"
        with conn:
            conn.settimeout(1.0)
            for byte in answer:
                if self.stop.wait(0.1):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self):
        self.stop.set()
        self.sock.close()


def test_total_deadline_stops_a_dribbling_receiver():
    rx = Dribbler()
    policy = LOCAL.model_copy(update={"timeout_s": 0.5, "max_attempts": 1})
    try:
        start = time.monotonic()
        result, _ = run_deliver(f"http://127.0.0.1:{rx.port}/hook", policy=policy)
        took = time.monotonic() - start
    finally:
        rx.close()
    assert not result.ok and "longer than 0.5s" in result.error
    assert took < 10  # the answer alone would take 40 s at one byte per 0.1 s


def test_host_lookup_has_its_own_timeout():
    def slow_dns(host, port, *a, **k):
        time.sleep(3.0)
        return DNS("hooks.example.com", port)

    policy = LOCAL.model_copy(update={"resolve_timeout_s": 0.1, "max_attempts": 1})
    start = time.monotonic()
    result, _ = run_deliver("http://slow.example.com/hook", policy=policy, resolve=slow_dns)
    assert not result.ok and "resolve" in result.error and "within 0.1s" in result.error
    assert time.monotonic() - start < 2.5  # did not wait for the 3 s lookup
