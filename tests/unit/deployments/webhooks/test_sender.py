"""The scheduler's webhook sender over a real job store and a real local receiver: the event
filter, progress throttling, one delivery id across retries, the concurrency caps."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

from genmedia.deployments.protocol import JobStatusView, PriorityClass
from genmedia.deployments.store.jobs import JobRecord, JobStatus, OutboxState
from genmedia.deployments.store.sql.store import SQLJobStore
from genmedia.deployments.webhooks.delivery import DeliveryCaps
from genmedia.deployments.webhooks.sender import WebhookSender
from genmedia.models.server_config import WebhookPolicy
from tests.unit.deployments.store.stores import sqlite_store

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
POLICY = WebhookPolicy(
    allowed_hosts=["127.0.0.1"], timeout_s=5.0, backoff_base_s=0.05, backoff_max_s=0.1
)


@dataclass(frozen=True)
class T:
    id: str
    webhook_secret: str | None = SECRET
    webhook_events: list[str] = field(default_factory=lambda: ["completed"])


def view(rec: JobRecord) -> JobStatusView:
    return JobStatusView(rec.id, rec.model_id, rec.status, PriorityClass.BATCH, 1.0, rec.tenant)


def rec(i, tenant="a", url="http://127.0.0.1:9/h", status=JobStatus.IN_QUEUE):
    return JobRecord(
        id=f"j{i}",
        tenant=tenant,
        model_id="m",
        priority="batch",
        status=status,
        job={},
        submitted_at=1.0,
        webhook_url=url,
    )


def sender(store, tenants, policy=POLICY, clock=time.time):
    return WebhookSender(store, tenants, policy, view, lambda e: None, clock=clock)


def test_filter_picks_started_progress_and_terminal_events(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    now = [100.0]
    tenants = {"a": T("a"), "b": T("b", webhook_events=["started", "progress", "completed"])}
    s = sender(store, tenants, clock=lambda: now[0])
    for status, want_a, want_b in (
        (JobStatus.IN_QUEUE, [], []),
        (JobStatus.IN_PROGRESS, [], ["job.started"]),
        (JobStatus.COMPLETED, ["job.completed"], ["job.completed"]),
        (JobStatus.EXPIRED, ["job.expired"], ["job.expired"]),
    ):
        assert [e.event_type for e in s.events(rec(1, "a", status=status))] == want_a
        assert [e.event_type for e in s.events(rec(1, "b", status=status))] == want_b
    assert s.events(rec(1, "b", url=None, status=JobStatus.COMPLETED)) == []
    (ev,) = s.events(rec(7, "b", status=JobStatus.CANCELLED))
    assert ev.payload["type"] == "job.cancelled" and ev.payload["request_id"] == "j7"
    assert "tenant" not in ev.payload and ev.next_attempt_at == 100.0
    running = [rec(1, "a", status=JobStatus.IN_PROGRESS), rec(2, "b", status=JobStatus.IN_PROGRESS)]
    s.progress(running)
    s.progress(running)  # within progress_interval_s: nothing more
    now[0] += POLICY.progress_interval_s
    s.progress(running)
    assert [e.event_type for e in store.webhooks_of("j2")] == ["job.progress"] * 2
    assert store.webhooks_of("j1") == []  # tenant a wants terminal events only


class Receiver:
    """A local HTTP receiver answering from a script of statuses (200 after it), holding each
    request ``hold_s``; records headers, body and how many requests per path ran at once."""

    def __init__(self, script=(), hold_s=0.0):
        self.script, self.hold_s = list(script), hold_s
        self.requests: list[tuple[str, dict, bytes]] = []
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        lock = threading.Lock()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    rx.requests.append((self.path, dict(self.headers), body))
                    rx.now[self.path] = rx.now.get(self.path, 0) + 1
                    rx.peak[self.path] = max(rx.peak.get(self.path, 0), rx.now[self.path])
                    rx.peak_total = max(rx.peak_total, sum(rx.now.values()))
                    status = rx.script.pop(0) if rx.script else 200
                time.sleep(rx.hold_s)
                with lock:
                    rx.now[self.path] -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def run_until_settled(s: WebhookSender, store: SQLJobStore, job_ids, timeout=60.0):
    async def go():
        task = asyncio.create_task(s.run())
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                events = [e for j in job_ids for e in store.webhooks_of(j)]
                if events and all(e.state != OutboxState.PENDING for e in events):
                    return events
                await asyncio.sleep(0.05)
            raise AssertionError("events still pending")
        finally:
            task.cancel()
            await s.aclose()

    return asyncio.run(go())


def test_retried_delivery_keeps_its_id_and_signs_every_attempt(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    s = sender(store, {"a": T("a")})
    with Receiver(script=[503]) as rx:
        store.add_webhooks(s.events(rec(1, url=rx.base + "/a", status=JobStatus.COMPLETED)))
        (ev,) = run_until_settled(s, store, ["j1"])
    assert (ev.state, ev.attempts, ev.last_error) == ("delivered", 2, None)
    assert [r[1]["webhook-id"] for r in rx.requests] == [ev.id, ev.id]
    for _, headers, body in rx.requests:
        assert Webhook(SECRET).verify(body, headers)["request_id"] == "j1"


def test_gives_up_after_max_attempts(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    s = sender(store, {"a": T("a")}, policy=POLICY.model_copy(update={"max_attempts": 2}))
    with Receiver(script=[503, 503, 503]) as rx:
        store.add_webhooks(s.events(rec(1, url=rx.base + "/a", status=JobStatus.FAILED)))
        (ev,) = run_until_settled(s, store, ["j1"])
    assert (ev.state, ev.attempts, ev.last_error) == ("failed", 2, "receiver answered 503")
    assert len(rx.requests) == 2


def test_caps_per_tenant_and_overall(tmp_path):
    store = sqlite_store(tmp_path / "jobs.sqlite")
    policy = POLICY.model_copy(update={"max_concurrent": 3, "max_concurrent_per_tenant": 2})
    s = sender(store, {"a": T("a"), "b": T("b")}, policy=policy)
    with Receiver(hold_s=0.3) as rx:
        ids = []
        for i in range(8):
            tenant = "a" if i < 6 else "b"  # a's backlog is older: b must still get its turn
            r = rec(i, tenant, url=f"{rx.base}/{tenant}", status=JobStatus.COMPLETED)
            store.add_webhooks(s.events(r))
            ids.append(r.id)
        events = run_until_settled(s, store, ids)
    assert all(e.state == OutboxState.DELIVERED for e in events) and len(rx.requests) == 8
    assert rx.peak["/a"] <= 2 and rx.peak["/b"] <= 2 and rx.peak_total <= 3
    assert rx.peak_total >= 2  # deliveries did overlap
    first_b = next(i for i, r in enumerate(rx.requests) if r[0] == "/b")
    assert first_b < 6  # b did not wait behind all of a's backlog


def test_delivery_caps_count():
    caps = DeliveryCaps(total=3, per_tenant=2)
    assert caps.try_acquire("a") and caps.try_acquire("a") and not caps.try_acquire("a")
    assert caps.full_tenants() == ["a"] and caps.try_acquire("b") and caps.full()
    assert not caps.try_acquire("c") and caps.in_flight() == 3 and caps.in_flight("a") == 2
    caps.release("a")
    assert caps.full_tenants() == [] and caps.try_acquire("c") and caps.in_flight("c") == 1
    for t in ("a", "b", "c"):
        caps.release(t)
    assert caps.in_flight() == 0 and not caps.full()
