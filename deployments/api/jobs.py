"""Generation jobs: the sync call (``/v1/models/{id}/generate``) and the queue API
(``/v1/queue/...``: submit, status, result, cancel, server-sent events).

First stop of a generation request: FastAPI parses the body (``GenerateRequest``) and headers,
``Caller`` finds the tenant; ``GatewayService`` validates, stores inputs and hands the job to
the scheduler, and its answer is the response body (``schemas``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, StreamingResponse

from genmedia.deployments.api.bodies import body_openapi, json_body
from genmedia.deployments.api.deps import BaseUrl, Caller, Deadline, IdemKey, Prefer, Service
from genmedia.deployments.api.errors import AUTH, BODY, UNAVAILABLE, error_responses
from genmedia.deployments.api.schemas import (
    BulkSubmitBody,
    BulkSubmitResult,
    CancelAccepted,
    JobResult,
    JobStatusBody,
)
from genmedia.deployments.intake.bulk import submit_many
from genmedia.deployments.intake.headers import parse_prefer_wait
from genmedia.deployments.protocol import JobStatus
from genmedia.models.params import GenerateRequest

router = APIRouter()

ModelId = Annotated[str, Path(description="Catalog id of the model (GET /v1/models lists them).")]
RequestId = Annotated[str, Path(description="The job's request_id (from the submit).")]
Logs = Annotated[
    bool,
    Query(
        description="1: add the job's log lines (queued, model and adapter loads, pauses, "
        "started, finished), each {t, message}.",
    ),
]
# Bodies are parsed and validated on a gateway thread, not on the event loop (api/bodies.py).
Body = Annotated[GenerateRequest, Depends(json_body(GenerateRequest))]
BulkBody = Annotated[BulkSubmitBody, Depends(json_body(BulkSubmitBody))]

_SUBMIT_ERRORS = {
    **BODY,
    403: "forbidden: the tenant may not use this model or priority class.",
    404: "model_not_found: no model with this id. file_not_found: 'image' or 'mask_image' "
    "names a file the caller does not have.",
    422: "invalid_request: a field or header breaks its type or bound (fields names each, "
    "with the limit); invalid_input: 'image' or 'mask_image' is not a usable image; "
    "invalid_webhook_url: the webhook URL breaks a rule.",
    429: "Refused at admission, with Retry-After: rate_limited, tenant_queue_full, "
    "model_queue_full, deadline_unmeetable, storage_quota_exceeded.",
}
_NOT_FOUND = {404: "not_found: no job with this id for the caller's tenant."}


@router.post(
    "/v1/models/{model_id}/generate",
    tags=["generate"],
    summary="Generate and wait for the result (sync; interactive by default)",
    response_model=JobResult,
    response_model_exclude_unset=True,
    openapi_extra=body_openapi(GenerateRequest),
    responses={
        202: {
            "model": JobStatusBody,
            "description": "With 'Prefer: wait=N': the job still runs after N seconds; its "
            "status and URLs, as the queue API's submit answers.",
        },
        **error_responses(
            AUTH,
            _SUBMIT_ERRORS,
            UNAVAILABLE,
            {
                409: "cancelled: the job was cancelled while the call waited.",
                500: "The job failed: generation_failed, worker_lost, ...",
                504: "timeout: not finished within the server's request timeout (the job goes on; "
                "see its status URL); deadline_expired: X-Deadline-Seconds passed in the queue.",
            },
        ),
    },
)
async def generate(
    model_id: ModelId,
    body: Body,
    service: Service,
    base_url: BaseUrl,
    caller: Caller,
    deadline: Deadline = None,
    idempotency_key: IdemKey = None,
    prefer: Prefer = None,
) -> Any:
    wait_s = parse_prefer_wait(prefer)
    out = await service.generate(
        caller,
        model_id,
        body,
        base_url,
        deadline=deadline,
        idempotency_key=idempotency_key,
        wait_s=wait_s,
    )
    if isinstance(out, dict):
        return out
    # Prefer: wait passed with the job still running: its status, as the queue API's 202
    return JSONResponse(service.public_status(out, base_url), status_code=202)


@router.post(
    "/v1/queue/models/{model_id}",
    tags=["queue"],
    status_code=202,
    summary="Submit a job; answers at once with its URLs",
    response_model=JobStatusBody,
    response_model_exclude_unset=True,
    openapi_extra=body_openapi(GenerateRequest),
    responses={
        200: {
            "model": JobResult,
            "description": "With 'Prefer: wait=N': the job ended within N seconds; its result.",
        },
        **error_responses(AUTH, _SUBMIT_ERRORS, UNAVAILABLE),
    },
)
async def submit(
    model_id: ModelId,
    body: Body,
    service: Service,
    base_url: BaseUrl,
    caller: Caller,
    deadline: Deadline = None,
    idempotency_key: IdemKey = None,
    prefer: Prefer = None,
) -> Any:
    wait_s = parse_prefer_wait(prefer)  # 422 before the job is submitted
    accepted = await service.submit(
        caller, model_id, body, deadline=deadline, idempotency_key=idempotency_key
    )
    if wait_s is None:
        return service.public_status(accepted, base_url)
    status = await service.wait(caller, accepted.job.request_id, wait_s)
    if status.status is JobStatus.COMPLETED:  # Prefer: wait: the finished job's result
        return JSONResponse(service.result_body(status, base_url, body.return_base64))
    return {"created": accepted.created, **service.public_status(status, base_url)}


@router.post(
    "/v1/queue/models/{model_id}/batch",
    tags=["queue"],
    summary="Submit many jobs in one call; one answer per job (202 with its job, or its 4xx)",
    response_model=BulkSubmitResult,
    response_model_exclude_unset=True,
    openapi_extra=body_openapi(BulkSubmitBody),
    responses=error_responses(
        AUTH,
        BODY,
        {
            403: "forbidden: the tenant may not use this model.",
            404: "model_not_found: no model with this id.",
            422: "invalid_request: 'requests' is missing, empty or longer than the catalog's "
            "server.max_bulk_items, or X-Deadline-Seconds is invalid. Each job's own errors "
            "are answered in its item, not here.",
            429: "rate_limited: the tenant is over its request rate (the call counts once).",
        },
        UNAVAILABLE,
    ),
)
async def submit_batch(
    model_id: ModelId,
    body: BulkBody,
    service: Service,
    base_url: BaseUrl,
    caller: Caller,
    deadline: Deadline = None,
) -> dict[str, Any]:
    """Jobs are validated one by one and admitted in request order, in one scheduler call and
    group-committed store transactions; an accepted item is in the store when this answers."""
    return await submit_many(service, caller, model_id, body.requests, base_url, deadline)


@router.get(
    "/v1/queue/requests/{request_id}/status",
    tags=["queue"],
    summary="IN_QUEUE (position, ETA), IN_PROGRESS (step), COMPLETED, FAILED, ...",
    response_model=JobStatusBody,
    response_model_exclude_unset=True,
    responses=error_responses(AUTH, _NOT_FOUND, UNAVAILABLE),
)
async def status(
    request_id: RequestId, service: Service, base_url: BaseUrl, caller: Caller, logs: Logs = False
) -> dict[str, Any]:
    return await service.status(caller, request_id, base_url, logs)


@router.get(
    "/v1/queue/requests/{request_id}",
    tags=["queue"],
    summary="The result of a finished job (409 while it runs); a job that ended without one "
    "answers its status",
    response_model=JobResult | JobStatusBody,
    response_model_exclude_unset=True,
    responses=error_responses(
        AUTH,
        _NOT_FOUND,
        UNAVAILABLE,
        {
            409: "not_finished: the job is IN_QUEUE or IN_PROGRESS; retry after Retry-After.",
            422: "invalid_request: return_base64 is not a boolean.",
        },
    ),
)
async def result(
    request_id: RequestId,
    service: Service,
    base_url: BaseUrl,
    caller: Caller,
    return_base64: bool = False,
) -> dict[str, Any]:
    return await service.result(caller, request_id, base_url, return_base64)


@router.put(
    "/v1/queue/requests/{request_id}/cancel",
    tags=["queue"],
    status_code=202,
    summary="Cancel: a queued job leaves the queue, a running one stops between steps",
    response_model=CancelAccepted,
    response_model_exclude_unset=True,
    responses=error_responses(
        AUTH,
        _NOT_FOUND,
        UNAVAILABLE,
        {400: "already_completed: the job has already ended."},
    ),
)
async def cancel(request_id: RequestId, service: Service, caller: Caller) -> dict[str, Any]:
    return await service.cancel(caller, request_id)


@router.get(
    "/v1/queue/requests/{request_id}/stream",
    tags=["queue"],
    summary="Server-sent events: status changes and step progress until the end",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "'event: status' lines whose data is a JobStatusBody, and "
            '\'event: keepalive\' repeats (data with "type": "keepalive") while nothing '
            "changes; the stream ends after a terminal status.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **error_responses(AUTH, _NOT_FOUND, UNAVAILABLE),
    },
)
async def stream(
    request_id: RequestId, service: Service, base_url: BaseUrl, caller: Caller, logs: Logs = False
) -> StreamingResponse:
    events = await service.stream(caller, request_id, base_url, logs)

    async def sse() -> AsyncIterator[str]:
        async for event in events:
            name = "keepalive" if event.get("type") == "keepalive" else "status"
            yield f"event: {name}\ndata: {json.dumps(event)}\n\n"

    return StreamingResponse(
        sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
