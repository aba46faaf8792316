"""The gateway's service over the scheduler's typed answers: refusals, ends of sync jobs,
status bodies, cancels and adapter calls become the HTTP answers and ``ApiError``s they were."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.protocol import (
    AdapterDeleted,
    AdapterError,
    AdapterInfo,
    AdapterRecord,
    JobError,
    JobStatus,
    JobStatusView,
    PriorityClass,
    Rejection,
    Submission,
)
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.schema import Tenant, parse_tenants
from genmedia.models.catalog import LoraEntry, load_catalog
from genmedia.models.params import GenerateRequest
from tests.unit.deployments.fakes import FakeScheduler

T = TypeVar("T")
BASE = "http://gw/"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class Scripted(FakeScheduler):
    """Ends sync jobs as told; answers adapter calls as told."""

    def __init__(self, storage: LocalDirStorage) -> None:
        super().__init__(storage)
        self.end: JobStatusView | None = None
        self.adapter_answer: AdapterRecord | AdapterDeleted | AdapterError | None = None

    async def submit_and_wait(self, sub: Submission, timeout_s: float) -> JobStatusView | Rejection:
        out = await super().submit_and_wait(sub, timeout_s)
        if isinstance(out, Rejection) or self.end is None:
            return out
        return replace(self.end, request_id=out.request_id)

    async def register_adapter(self, spec: LoraEntry) -> AdapterRecord | AdapterError:
        assert not isinstance(self.adapter_answer, AdapterDeleted)
        return self.adapter_answer or await super().register_adapter(spec)


@pytest.fixture
def scheduler(tmp_path: Path) -> Scripted:
    return Scripted(LocalDirStorage(tmp_path))


@pytest.fixture
def tenant() -> Tenant:
    tenants = parse_tenants({"tenants": [{"id": "dev", "api_keys": [], "admin": True}]})
    return tenants.tenants[0]


@pytest.fixture
def service(scheduler: Scripted, tenant: Tenant, tmp_path: Path) -> GatewayService:
    auth = Authenticator(parse_tenants({"tenants": [tenant.model_dump()]}))
    return GatewayService(load_catalog(), scheduler, auth, storage=scheduler.storage)


def test_a_refusal_is_its_status_with_retry_after(service, scheduler, tenant) -> None:
    scheduler.reject = Rejection(429, "deadline_unmeetable", "late", 2.2, field="deadline")
    with pytest.raises(ApiError) as e:
        run(service.submit(tenant, "sd15-tiny", GenerateRequest(prompt="x")))
    assert e.value.status == 429 and e.value.type == "deadline_unmeetable"
    assert e.value.headers == {"Retry-After": "3"}
    assert e.value.fields and e.value.fields[0]["field"] == "deadline"


def test_an_accepted_submit_says_created_and_hides_tenant_and_result(service, tenant) -> None:
    accepted = run(service.submit(tenant, "sd15-tiny", GenerateRequest(prompt="x")))
    body = service.public_status(accepted, BASE)
    assert next(iter(body)) == "created" and body["created"] is True
    assert "tenant" not in body and "result" not in body
    assert body["status"] == "COMPLETED" and body["priority"] == "interactive"
    assert body["status_url"] == f"{BASE}v1/queue/requests/{body['request_id']}/status"


@pytest.mark.parametrize(
    ("status", "error", "code", "kind"),
    [
        (JobStatus.FAILED, JobError("generation_failed", "boom"), 500, "generation_failed"),
        (JobStatus.EXPIRED, JobError("deadline_expired", "late"), 504, "deadline_expired"),
        (JobStatus.CANCELLED, None, 409, "cancelled"),
        (JobStatus.IN_PROGRESS, None, 504, "timeout"),
    ],
)
def test_a_sync_job_that_ends_without_a_result(
    service, scheduler, tenant, status, error, code, kind
) -> None:
    scheduler.end = JobStatusView(
        "-", "sd15-tiny", status, PriorityClass.INTERACTIVE, 0.0, "dev", error=error
    )
    with pytest.raises(ApiError) as e:
        run(service.generate(tenant, "sd15-tiny", GenerateRequest(prompt="x"), BASE))
    assert (e.value.status, e.value.type) == (code, kind)


def test_unknown_jobs_are_404_and_finished_ones_cannot_be_cancelled(service, tenant) -> None:
    for call in (
        service.status(tenant, "nope", BASE),
        service.result(tenant, "nope", BASE),
        service.cancel(tenant, "nope"),
        service.stream(tenant, "nope", BASE),
    ):
        with pytest.raises(ApiError) as e:
            run(call)
        assert e.value.status == 404
    accepted = run(service.submit(tenant, "sd15-tiny", GenerateRequest(prompt="x")))
    with pytest.raises(ApiError) as e:
        run(service.cancel(tenant, accepted.job.request_id))
    assert (e.value.status, e.value.type) == (400, "already_completed")


def test_adapter_answers(service, scheduler, tenant) -> None:
    spec = {"id": "a", "base_model": "sd15-tiny", "source": "tiny://sd15/a"}
    scheduler.adapter_answer = AdapterError(422, "invalid_adapter", "source", "bad keys")
    with pytest.raises(ApiError) as e:
        run(service.register_adapter(tenant, spec))
    assert (e.value.status, e.value.type) == (422, "invalid_adapter")
    assert e.value.fields == [{"field": "source", "message": "bad keys", "limit": None}]
    info = AdapterInfo("/w/a", 1, "h", 4, 2)
    scheduler.adapter_answer = AdapterRecord(
        "a", "sd15-tiny", "tiny://sd15/a", "", "api", "ready", registered_at=1.0, info=info
    )
    body = run(service.register_adapter(tenant, LoraEntry.model_validate(spec)))
    assert body["id"] == "a" and body["sha256"] == "h" and "path" not in body
