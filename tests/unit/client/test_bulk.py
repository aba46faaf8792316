"""``submit_many`` over the bulk route: per-item handles and errors, chunks, idempotency keys."""

from __future__ import annotations

import json

import httpx
import pytest

from genmedia.client import Client, InvalidRequest, NotFound, RateLimited
from tests.unit.client.fakes import BASE, FakeGateway, error, status_body

BULK = "/v1/queue/models/sd15-tiny/batch"


def answer(request: httpx.Request) -> httpx.Response:
    """Accept every item whose prompt is not 'bad' (422) or 'full' (429)."""
    items = []
    for i, req in enumerate(json.loads(request.content)["requests"]):
        if req["prompt"] == "bad":
            err = {
                "type": "invalid_request",
                "message": "width: over",
                "fields": [{"field": "width", "message": "over the bound", "limit": 1024}],
            }
            items.append({"index": i, "status": 422, "error": err})
        elif req["prompt"] == "full":
            err = {"type": "tenant_queue_full", "message": "full", "fields": []}
            items.append({"index": i, "status": 429, "error": err, "retry_after_s": 3.0})
        else:
            items.append({"index": i, "status": 202, "job": status_body(f"r-{req['prompt']}")})
    accepted = sum(1 for i in items if i["status"] == 202)
    return httpx.Response(
        200, json={"accepted": accepted, "refused": len(items) - accepted, "items": items}
    )


def test_items_answer_handles_or_errors_in_order_across_chunks():
    gw = FakeGateway().on("POST", BULK, answer)
    with Client(BASE, "k", transport=gw.transport()) as client:
        args = [
            {"prompt": "a"},
            {"prompt": "bad", "width": 4096},
            {"prompt": "c"},
            {"prompt": "full"},
            {"prompt": "e", "idempotency_key": "mine-5"},
        ]
        out = client.submit_many("sd15-tiny", args, priority="batch", deadline_s=60, chunk_size=2)
    assert [i.index for i in out.items] == [0, 1, 2, 3, 4]
    assert (out.accepted, out.refused) == (3, 2)
    assert [h.request_id for h in out.handles] == ["r-a", "r-c", "r-e"]
    bad, full = out.items[1], out.items[3]
    assert isinstance(bad.error, InvalidRequest) and bad.error.field == "width"
    assert bad.error.limit == 1024 and not bad.ok
    assert isinstance(full.error, RateLimited) and full.error.retry_after == 3.0
    assert full.retry_after_s == 3.0
    sent = [json.loads(r.content)["requests"] for r in gw.requests]
    assert [len(chunk) for chunk in sent] == [2, 2, 1]
    items = [item for chunk in sent for item in chunk]
    assert all(item["priority"] == "batch" for item in items)
    keys = [item["idempotency_key"] for item in items]
    assert keys[-1] == "mine-5" and len(set(keys)) == 5
    assert all(r.headers["x-deadline-seconds"] == "60" for r in gw.requests)


def test_a_whole_request_error_is_raised():
    gw = FakeGateway().on("POST", BULK, error(404, "model_not_found", "no model"))
    with Client(BASE, "k", transport=gw.transport()) as client, pytest.raises(NotFound):
        client.submit_many("sd15-tiny", [{"prompt": "a"}])
    with Client(BASE, "k", transport=gw.transport()) as client, pytest.raises(ValueError):
        client.submit_many("sd15-tiny", [{"prompt": "a"}], chunk_size=0)
