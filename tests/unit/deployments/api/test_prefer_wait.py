"""``Prefer: wait=N`` without Ray: the queue submit answers the finished job's result (200) or
the usual 202 body, the sync route answers 202 with the status instead of a 504, a bad value is
a 422 naming the header, and every status body carries ``response_url``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from genmedia.deployments.intake.headers import parse_prefer_wait
from genmedia.deployments.protocol import JobStatus
from tests.unit.deployments.api.test_api import fields, make_client
from tests.unit.deployments.fakes import FakeScheduler

SUBMIT = "/v1/queue/models/sd15-tiny"


class SlowScheduler(FakeScheduler):
    """Accepts every job and never finishes one."""

    async def submit(self, sub):
        accepted = await super().submit(sub)
        job = replace(accepted.job, status=JobStatus.IN_QUEUE, result=None, finished_at=None)
        self.jobs[job.request_id] = job
        return replace(accepted, job=job)

    async def submit_and_wait(self, sub, timeout_s):
        return (await self.submit(sub)).job

    async def wait(self, job_id, tenant, timeout_s):
        return await self.status(job_id, tenant)


def test_a_job_that_ends_in_time_answers_its_result(client):
    r = client.post(SUBMIT, json={"prompt": "x"}, headers={"Prefer": "wait=5"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "COMPLETED" and r.json()["images"]


def test_a_job_still_running_answers_the_usual_202_body(storage):
    client = make_client(SlowScheduler(storage), storage)
    r = client.post(SUBMIT, json={"prompt": "x"}, headers={"Prefer": "respond-async, wait=1"})
    assert r.status_code == 202 and r.json()["status"] == "IN_QUEUE"
    assert r.json()["response_url"] == r.json()["result_url"]
    sync = client.post(
        "/v1/models/sd15-tiny/generate", json={"prompt": "x"}, headers={"Prefer": "wait=1"}
    )
    assert sync.status_code == 202 and sync.json()["status_url"]


@pytest.mark.parametrize("value", ["wait=0", "wait=61", "wait=abc", "wait"])
def test_a_bad_wait_is_a_422_naming_prefer(client, value):
    r = client.post(SUBMIT, json={"prompt": "x"}, headers={"Prefer": value})
    assert r.status_code == 422 and fields(r)["Prefer"]["limit"] == 60


def test_other_preferences_are_ignored():
    assert parse_prefer_wait("respond-async") is None
    assert parse_prefer_wait("wait=2.5") == 2.5
