"""The scheduler's webhook side: which events a job change owes, and the loop that delivers them.

The scheduler passes ``events`` as the ``outbox=`` of its store transitions, so a job's event
(``job.started``, or the terminal ``job.completed`` / ``failed`` / ``cancelled`` / ``expired``)
commits with its state; ``progress`` adds throttled ``job.progress`` events while a call runs.
The tenant's ``webhook_events`` filter (``started``, ``progress``, ``completed``; default
``completed``) picks which. ``run`` reads due outbox rows (those a previous replica left too),
makes one attempt per row (``delivery.attempt``: total deadline, Standard Webhooks headers)
within the ``DeliveryCaps`` (overall and per tenant), and writes the outcome back. No Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from genmedia.deployments.protocol import JobStatusView
from genmedia.deployments.store.jobs import (
    TERMINAL,
    FencedOut,
    JobRecord,
    JobStatus,
    JobStore,
    OutboxEvent,
)
from genmedia.deployments.webhooks.delivery import (
    DeliveryCaps,
    attempt,
    backoff_delay,
    make_client,
)
from genmedia.deployments.webhooks.urls import Resolver
from genmedia.models.server_config import WebhookPolicy

logger = logging.getLogger("ray.serve")

POLL_S = 1.0  # the outbox is read at least this often (and at every new event)
DEFAULT_EVENTS = ("completed",)


class WebhookSender:
    """See the module docstring. ``tenants`` maps tenant id to an object with
    ``webhook_secret`` and ``webhook_events``; ``view`` is the scheduler's job view (it must not
    use the store: ``events`` runs inside a store transaction); ``on_fenced`` is called when the
    store refuses this scheduler's writes."""

    def __init__(
        self,
        store: JobStore,
        tenants: Mapping[str, Any],
        policy: WebhookPolicy,
        view: Callable[[JobRecord], JobStatusView],
        on_fenced: Callable[[FencedOut], None],
        *,
        clock: Callable[[], float] = time.time,
        resolve: Resolver = socket.getaddrinfo,
    ):
        self.store, self.tenants, self.policy, self.view = store, tenants, policy, view
        self.on_fenced, self.clock, self.resolve = on_fenced, clock, resolve
        self.caps = DeliveryCaps(policy.max_concurrent, policy.max_concurrent_per_tenant)
        self._client = make_client(policy)
        self._wakeup = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task] = {}  # delivery id -> its attempt
        self._progress_sent: dict[str, float] = {}  # job id -> its last job.progress event

    # -- what a job change owes --------------------------------------------------------------
    def _wants(self, tenant_id: str, kind: str) -> bool:
        tenant = self.tenants.get(tenant_id)
        return kind in (getattr(tenant, "webhook_events", None) or DEFAULT_EVENTS)

    def _event(self, rec: JobRecord, event_type: str) -> OutboxEvent:
        assert rec.webhook_url is not None  # only jobs with a webhook URL come here
        now = self.clock()
        return OutboxEvent(
            job_id=rec.id,
            tenant=rec.tenant,
            url=rec.webhook_url,
            event_type=event_type,
            payload={"type": event_type, **self.view(rec).as_dict(tenant=False)},
            created_at=now,
            next_attempt_at=now,
        )

    def events(self, rec: JobRecord) -> list[OutboxEvent]:
        """The event a job's move writes in the same store transaction: ``job.started`` or the
        terminal ``job.<status>``, when the job has a webhook URL and its tenant wants it."""
        if not rec.webhook_url:
            return []
        if rec.status in TERMINAL:
            self._progress_sent.pop(rec.id, None)
            kind, event_type = "completed", f"job.{str(rec.status).lower()}"
        elif rec.status == JobStatus.IN_PROGRESS:
            kind, event_type = "started", "job.started"
        else:
            return []
        return [self._event(rec, event_type)] if self._wants(rec.tenant, kind) else []

    def progress(self, recs: list[JobRecord]) -> None:
        """``job.progress`` events of running jobs whose tenant wants them, at most one per job
        every ``progress_interval_s`` (their own small write)."""
        now = self.clock()
        out = []
        for rec in recs:
            if not rec.webhook_url or not self._wants(rec.tenant, "progress"):
                continue
            if now - self._progress_sent.get(rec.id, -math.inf) < self.policy.progress_interval_s:
                continue
            self._progress_sent[rec.id] = now
            out.append(self._event(rec, "job.progress"))
        if out:
            self.store.add_webhooks(out)
            self.wake()

    def wake(self) -> None:
        """New events in the outbox: look now rather than at the next poll."""
        self._wakeup.set()

    # -- delivery ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Start an attempt for every due event while the caps leave room; at every wake-up or
        finished attempt, else every ``POLL_S``. Returns when fenced out; cancelling it cancels
        the attempts in flight (their rows stay due)."""
        try:
            while True:
                try:
                    self._start_due()
                except FencedOut as e:
                    self.on_fenced(e)
                    return
                except Exception:
                    logger.exception("could not read the webhook outbox")
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), POLL_S)
        finally:
            for task in list(self._in_flight.values()):
                task.cancel()

    def _start_due(self) -> None:
        """Fill the free slots with due events, earliest first; a tenant that reaches its cap
        is left out of the next read, so a younger event of another tenant gets the slot."""
        now = self.clock()
        while not self.caps.full():
            room = self.caps.total - self.caps.in_flight()
            due = self.store.webhooks_due(
                now, room, skip_ids=list(self._in_flight), skip_tenants=self.caps.full_tenants()
            )
            for ev in due:
                if self.caps.try_acquire(ev.tenant):
                    task = asyncio.get_running_loop().create_task(self._send(ev))
                    self._in_flight[ev.id] = task
            if len(due) < room:
                return  # nothing more is due
            # every read starts an event or fills a tenant's cap: the loop ends

    async def _send(self, ev: OutboxEvent) -> None:
        """One attempt at one event (its caps slot taken); the outcome goes back to the outbox:
        delivered, failed for good, or due again after the backoff."""
        policy = self.policy
        try:
            tenant = self.tenants.get(ev.tenant)
            secret = getattr(tenant, "webhook_secret", None)
            tried = await attempt(
                self._client, ev.url, ev.body(), ev.id, secret, policy, resolve=self.resolve
            )
            now = self.clock()
            attempts = ev.attempts + 1
            retry_at = None
            if not tried.ok and not tried.final and attempts < policy.max_attempts:
                retry_at = now + backoff_delay(attempts - 1, policy, tried.retry_after_s)
            self.store.webhook_attempted(
                ev.id, now, delivered=tried.ok, error=tried.error, retry_at=retry_at
            )
            if not tried.ok and retry_at is None:
                logger.warning(
                    "webhook %s (%s of %s) to host %s failed after %d attempt(s): %s",
                    ev.id,
                    ev.event_type,
                    ev.job_id,
                    urlsplit(ev.url).hostname,  # query strings often carry tokens
                    attempts,
                    tried.error,
                )
        except FencedOut as e:
            self.on_fenced(e)
        except Exception:
            logger.exception("webhook %s of %s: recording the attempt failed", ev.id, ev.job_id)
        finally:
            self.caps.release(ev.tenant)
            self._in_flight.pop(ev.id, None)
            self._wakeup.set()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()
