"""The webhook outbox: events owed to receivers, written with the job change that caused them.

A job's terminal state (or its start, or a progress step, per the tenant's event filter) and its
webhook event are committed in ONE job-store transaction (``SQLJobStore.transition_many`` with
``outbox=``), so a crash after the commit still finds the event in the store's
``webhook_outbox`` table. The scheduler's delivery loop reads due rows (``webhooks_due``), sends
them (``webhooks/delivery.py``) and writes the outcome back (``webhook_attempted``): delivered,
failed for good, or pending again at the next backoff time. The delivery id (``webhook-id``) is
made with the row: the same on every retry and after a restart. No Ray imports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum

from genmedia.deployments.webhooks.signing import new_delivery_id


class OutboxState(StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    DELIVERED = "delivered"  # a 2xx answered it
    FAILED = "failed"  # refused for good, or out of attempts


@dataclass
class OutboxEvent:
    """One webhook event for one job, from its creation to delivered / failed."""

    job_id: str
    tenant: str
    url: str
    event_type: str  # job.completed, job.failed, ..., job.started, job.progress
    payload: dict  # the event body (JSON object)
    created_at: float
    id: str = field(default_factory=new_delivery_id)  # delivery id: stable across retries
    next_attempt_at: float = 0.0  # 0: due at once
    attempts: int = 0
    state: OutboxState = OutboxState.PENDING
    last_error: str | None = None
    finished_at: float | None = None  # when delivered or given up

    def body(self) -> bytes:
        """The bytes sent (and signed): compact JSON of the payload."""
        return json.dumps(self.payload, separators=(",", ":")).encode()
