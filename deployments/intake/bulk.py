"""Bulk submit: many jobs of one model in one call (``POST /v1/queue/models/{id}/batch``).

Where it sits: after the API layer has checked the body's shape (a bounded list), before the
scheduler. Each item is validated on its own, off the event loop on the batch lane's thread
(``GatewayService._pools``); the valid ones go to the scheduler in one call, which admits them
in group-committed store transactions (``serve/scheduler.py``). Every item gets its own answer,
in request order: 202 with its job, or its own 4xx/429. Nothing is answered 202 before the
store holds it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from genmedia.deployments.errors import ApiError, validation_fields
from genmedia.deployments.intake.headers import parse_deadline
from genmedia.deployments.intake.service import body_sha256
from genmedia.deployments.protocol import PriorityClass, Rejection, Submission, SubmitAccepted
from genmedia.models.params import BulkItem

if TYPE_CHECKING:
    from genmedia.deployments.intake.service import GatewayService
    from genmedia.deployments.tenants.schema import Tenant
    from genmedia.models.catalog import ModelEntry

LANE = PriorityClass.BATCH


def _refused(index: int, e: ApiError) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": index,
        "status": e.status,
        "error": {"type": e.type, "message": e.message, "fields": e.fields},
    }
    retry = (e.headers or {}).get("Retry-After")
    if retry is not None:
        out["retry_after_s"] = float(retry)
    return out


def _rejection(index: int, r: Rejection) -> dict[str, Any]:
    fields = [{"field": r.field, "message": r.message, "limit": None}] if r.field else []
    out: dict[str, Any] = {
        "index": index,
        "status": r.status,
        "error": {"type": r.type, "message": r.message, "fields": fields},
    }
    if r.retry_after_s is not None:
        out["retry_after_s"] = round(r.retry_after_s, 3)
    return out


def _check_items(
    service: GatewayService,
    tenant: Tenant,
    entry: ModelEntry,
    items: list[dict[str, Any]],
    deadline_s: float | None,
) -> list[Submission | BulkItem | ApiError]:
    """Each item parsed and resolved against the model (runs on the batch lane's thread). An
    item with an input image or a webhook comes back parsed only: those checks do I/O."""
    out: list[Submission | BulkItem | ApiError] = []
    for i, raw in enumerate(items):
        try:
            item = BulkItem.model_validate(raw)
        except ValidationError as e:
            fields = validation_fields(e.errors(), prefix=f"requests[{i}]")
            summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
            out.append(ApiError(422, "invalid_request", summary, fields))
            continue
        if item.image is not None or item.mask_image is not None or item.webhook_url:
            out.append(item)
            continue
        try:
            priority = service.priority_of(tenant, entry, item, sync=False)
            job = service.resolve_job(entry, item, uuid.uuid4().hex, None, {})
        except ApiError as e:
            out.append(e)
            continue
        out.append(
            Submission(
                tenant=tenant.id,
                model_id=entry.id,
                priority=PriorityClass(priority),
                job=job,
                deadline_s=deadline_s,
                idempotency_key=item.idempotency_key,
                body_sha256=None if item.idempotency_key is None else body_sha256(entry, item),
            )
        )
    return out


async def submit_many(
    service: GatewayService,
    tenant: Tenant,
    model_id: str,
    items: list[dict[str, Any]],
    base_url: str,
    deadline: str | None = None,
) -> dict[str, Any]:
    """The bulk route's answer: per item, 202 with the job or the item's error."""
    entry = service.entry(model_id)
    if not tenant.allows_model(model_id):
        service.auth.authorize(tenant, model_id, None)  # the 403 naming the model
    limit = service.catalog.server.max_bulk_items
    if len(items) > limit:
        raise ApiError(
            422,
            "invalid_request",
            f"requests: at most {limit} jobs per bulk submit (got {len(items)})",
            [{"field": "requests", "message": "too many jobs", "limit": limit}],
        )
    deadline_s = parse_deadline(deadline)
    checked = await service.off_loop(LANE, _check_items, service, tenant, entry, items, deadline_s)
    answers: list[dict[str, Any] | None] = [None] * len(items)
    subs: list[Submission] = []
    where: list[int] = []
    for i, c in enumerate(checked):
        if isinstance(c, BulkItem):  # inputs or a webhook: checked one at a time
            try:
                priority = service.priority_of(tenant, entry, c, sync=False)
                c = await service.submission(
                    tenant, entry, c, priority, deadline_s, c.idempotency_key, sync=False
                )
            except ApiError as e:
                c = e
        if isinstance(c, ApiError):
            answers[i] = _refused(i, c)
        else:
            subs.append(c)
            where.append(i)
    if subs:
        async with service.bulk_calls:
            results = await service.call(service.scheduler.submit_many(subs))
        for sub, result in zip(subs, results, strict=True):  # refused: no input bytes kept
            await service.storage_guard.settle(sub, result)
        for i, sub, result in zip(where, subs, results, strict=True):
            answers[i] = _answer(service, i, sub, result, base_url)
    done = [a for a in answers if a is not None]
    accepted = sum(1 for a in done if a["status"] == 202)
    return {"accepted": accepted, "refused": len(done) - accepted, "items": done}


def _answer(
    service: GatewayService,
    index: int,
    sub: Submission,
    result: SubmitAccepted | Rejection,
    base_url: str,
) -> dict[str, Any]:
    if isinstance(result, Rejection):
        service.metrics.rejected.labels(sub.model_id, result.type).inc()
        return _rejection(index, result)
    service.metrics.submitted.labels(sub.model_id, sub.priority).inc()
    return {"index": index, "status": 202, "job": service.public_status(result, base_url)}
