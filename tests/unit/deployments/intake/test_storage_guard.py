"""The gateway's storage guard without HTTP: which answers keep a request's inline inputs, and
usage counted from the storage and kept in step with this replica's writes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.storage_guard import StorageGuard
from genmedia.deployments.protocol import (
    JobStatus,
    JobStatusView,
    PriorityClass,
    Rejection,
    SubmitAccepted,
)
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.schema import Tenant


def view(request_id: str) -> JobStatusView:
    return JobStatusView(request_id, "m", JobStatus.IN_QUEUE, PriorityClass.BATCH, 0.0, "t")


def sub(request_id: str, inputs: dict[str, str]):
    return SimpleNamespace(
        tenant="t", job=SimpleNamespace(request_id=request_id, extra={"inputs": inputs})
    )


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        (SubmitAccepted(created=True, job=view("r1")), True),
        (SubmitAccepted(created=False, job=view("r0")), False),  # an idempotent replay
        (Rejection(429, "rate_limited", "slow", 1.0), False),
        (view("r1"), True),  # the sync path's answer
        (view("r0"), False),
    ],
)
def test_settle_keeps_only_a_new_jobs_inline_inputs(tmp_path, answer, kept):
    storage = LocalDirStorage(tmp_path)
    storage.put("t/inputs/r1/image", b"i", "application/octet-stream")
    storage.put("t/uploads/upl_1.png", b"u", "image/png")
    inputs = {"image": "t/inputs/r1/image", "mask": "t/uploads/upl_1.png"}
    asyncio.run(StorageGuard(storage).settle(sub("r1", inputs), answer))  # type: ignore[arg-type]
    assert (storage.get("t/inputs/r1/image") is not None) is kept
    assert storage.get("t/uploads/upl_1.png") is not None  # a named upload is never deleted


def test_usage_is_listed_then_kept_in_step(tmp_path):
    storage = LocalDirStorage(tmp_path)
    storage.put("t/uploads/a.png", b"a" * 100, "image/png")
    storage.put("t/2026/12/03/r/0.png", b"o" * 1000, "image/png")  # outputs do not count
    now = [0.0]
    guard = StorageGuard(storage, clock=lambda: now[0])
    tenant = Tenant(id="t", quotas={"max_stored_files": 2, "max_stored_bytes": 1024})
    assert guard.usage("t") == (100, 1)
    guard.put(tenant, "t/uploads/b.png", b"b" * 10, "image/png", upload=True)
    assert guard.usage("t") == (110, 2)
    with pytest.raises(ApiError) as e:
        guard.put(tenant, "t/uploads/c.png", b"c", "image/png", upload=True)
    assert e.value.status == 429 and e.value.fields[0]["field"] == "quotas.max_stored_files"
    guard.discard("t", ["t/uploads/b.png"])
    assert guard.usage("t") == (100, 1)
    storage.delete("t/uploads/a.png")  # retention, or another replica
    now[0] = 31.0
    assert guard.usage("t") == (0, 0)
