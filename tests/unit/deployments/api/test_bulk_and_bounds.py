"""The bulk submit route and the parse-time bounds, without Ray: per-item answers (valid,
invalid, refused by the scheduler, duplicate idempotency keys), the catalog's bound on items,
every list field bounded before any other work, a hostile body answered in milliseconds, and
an input path with a backslash or NUL answered 422 naming ``image``."""

from __future__ import annotations

import time

import pytest

from genmedia.deployments.intake.bodies import MAX_REPORTED_ERRORS
from genmedia.deployments.protocol import Rejection, Submission, SubmitAccepted
from genmedia.models.params import HARD_MAX_LORAS
from tests.unit.deployments.api.test_api import OTHER_KEY, fields, make_client
from tests.unit.deployments.fakes import FakeScheduler

URL = "/v1/queue/models/sd15-tiny/batch"


class RefusingScheduler(FakeScheduler):
    """Accepts the first ``room`` jobs of a call, refuses the rest as a full queue; answers a
    repeated idempotency key with the first job."""

    def __init__(self, storage, room: int) -> None:
        super().__init__(storage)
        self.room = room
        self.calls = 0
        self.keys: dict[str, SubmitAccepted] = {}

    async def submit_many(self, subs: list[Submission]) -> list[SubmitAccepted | Rejection]:
        self.calls += 1
        out: list[SubmitAccepted | Rejection] = []
        for sub in subs:
            if sub.idempotency_key in self.keys:
                first = self.keys[sub.idempotency_key]
                out.append(SubmitAccepted(created=False, job=first.job))
            elif self.room <= 0:
                out.append(Rejection(429, "tenant_queue_full", "queue full", 1.0))
            else:
                self.room -= 1
                a = await self.submit(sub)
                assert isinstance(a, SubmitAccepted)
                out.append(a)
                if sub.idempotency_key:
                    self.keys[sub.idempotency_key] = a
        return out


@pytest.fixture
def refusing(storage):
    return RefusingScheduler(storage, room=3)


def test_bulk_answers_each_item_in_order(refusing, storage):
    client = make_client(refusing, storage)
    items = [
        {"prompt": "a", "idempotency_key": "k1"},
        {"prompt": "b", "width": 7},  # the model's bound: 422 for this item only
        {"prompt": "c", "idempotency_key": "k1"},  # the same key: the first job again
        {"prompt": "d", "unknown": 1},  # not a field
        {"prompt": "e"},
        {"prompt": "f"},
        {"prompt": "g"},  # over the scheduler's room: 429 with its retry time
    ]
    r = client.post(URL, json={"requests": items})
    assert r.status_code == 200, r.text
    body = r.json()
    got = [(i["index"], i["status"]) for i in body["items"]]
    assert got == [(0, 202), (1, 422), (2, 202), (3, 422), (4, 202), (5, 202), (6, 429)]
    assert (body["accepted"], body["refused"]) == (4, 3)
    first, dup = body["items"][0]["job"], body["items"][2]["job"]
    assert dup["request_id"] == first["request_id"] and dup["created"] is False
    assert first["status_url"].endswith(f"/v1/queue/requests/{first['request_id']}/status")
    assert body["items"][1]["error"]["fields"][0]["field"] == "width"
    assert body["items"][3]["error"]["fields"][0]["field"] == "requests[3].unknown"
    assert body["items"][6]["error"]["type"] == "tenant_queue_full"
    assert body["items"][6]["retry_after_s"] == 1.0
    assert refusing.calls == 1  # one scheduler call for the whole bulk submit


def test_bulk_whole_request_errors(client):
    assert client.post(URL, json={"requests": []}).status_code == 422
    r = client.post(URL, json={"requests": [{"prompt": "x"}] * 1001})  # catalog default 1000
    assert r.status_code == 422
    assert fields(r)["requests"]["limit"] == 1000
    assert client.post("/v1/queue/models/nope/batch", json={"requests": [{}]}).status_code == 404
    r = client.post(URL, json={"requests": [{"prompt": "x"}]}, headers={"Authorization": "x"})
    assert r.status_code == 401


def test_bulk_for_a_model_the_tenant_may_not_use_is_403(scheduler, storage):
    client = make_client(scheduler, storage, key=OTHER_KEY)  # allowed: sdxl-tiny only
    r = client.post(URL, json={"requests": [{"prompt": "x"}]})
    assert r.status_code == 403 and fields(r)["model_id"]


def test_every_list_field_is_bounded_at_parse_time(client):
    loras = [{"id": f"a{i}"} for i in range(HARD_MAX_LORAS + 1)]
    r = client.post("/v1/queue/models/sd15-tiny", json={"prompt": "x", "loras": loras})
    assert r.status_code == 422 and fields(r)["loras"]["limit"] == HARD_MAX_LORAS
    r = client.post(URL, json={"requests": [{"prompt": "x"}] * 10_001})
    assert r.status_code == 422 and fields(r)["requests"]["limit"] == 10_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 10**6),
        ("num_inference_steps", 10**9),
        ("num_images", 10**4),
        ("num_frames", 10**9),
        ("fps", 10**6),
        ("duration_s", 1e12),
        ("guidance_scale", 1e300),
    ],
)
def test_numbers_are_bounded_at_parse_time(client, field, value):
    r = client.post("/v1/queue/models/sd15-tiny", json={"prompt": "x", field: value})
    assert r.status_code == 422 and fields(r)[field]["limit"] is not None


def test_a_hostile_body_costs_milliseconds(client):
    loras = [{"id": f"adapter-{i}"} for i in range(20_000)]  # ~310 KB of distinct ids
    body = {"prompt": "x", "loras": loras}
    # the first large body also starts the gateway's parse process (intake/parse_pool.py)
    assert client.post("/v1/queue/models/sd15-tiny", json=body).status_code == 422
    t0 = time.perf_counter()
    r = client.post("/v1/queue/models/sd15-tiny", json=body)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 422
    assert elapsed < 1.0  # seconds before the bound (a quadratic scan); about 20 ms now


@pytest.mark.parametrize("path", ["dev/uploads/a\\b.png", "dev/uploads/a\x00b.png", "dev/../x"])
def test_an_input_path_with_a_backslash_or_nul_is_422_naming_image(client, path):
    r = client.post(
        "/v1/queue/models/sd15-tiny",
        json={"prompt": "x", "image": f"http://testserver/v1/files/{path}"},
    )
    assert r.status_code == 422, r.text
    assert "image" in fields(r)


def test_single_submits_still_take_one_scheduler_call_each(scheduler, client):
    assert client.post("/v1/queue/models/sd15-tiny", json={"prompt": "x"}).status_code == 202
    assert len(scheduler.subs) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/queue/models/sd15-tiny", {"prompt": "x", **{f"k{i}": i for i in range(50_000)}}),
        (URL, {"requests": [{"prompt": "x"}], **{f"k{i}": i for i in range(50_000)}}),
        ("/v1/queue/models/sd15-tiny", {"prompt": "x", "loras": [{"id": "a", "k": 1}] * 16}),
    ],
)
def test_a_body_of_many_errors_is_one_error_naming_the_count(client, path, body):
    """Past MAX_REPORTED_ERRORS, one field error names the count instead of one per field
    (building 50,000 of them cost the gateway about 0.2 s of its interpreter)."""
    r = client.post(path, json=body)
    assert r.status_code == 422
    got = r.json()["error"]["fields"]
    if len(body) > MAX_REPORTED_ERRORS:
        assert got == [{"field": "body", "message": "50000 errors", "limit": MAX_REPORTED_ERRORS}]
    else:  # a few errors are each reported
        assert len(got) == 16 and got[0]["field"] == "loras.0.k"
