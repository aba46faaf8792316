"""A job cancelled inside a shared batch on a real local Ray Serve (issue 15, item 5): the batch
goes on for the other job, the cancelled job's outputs cannot be downloaded (never stored, or
deleted right after), and the compute it used is metered to its tenant (``/v1/usage``)."""

from __future__ import annotations

import time

import pytest

from tests.integration.test_queue_api import wait_status

pytestmark = pytest.mark.integration
BODY = {"prompt": "a harbour", "num_inference_steps": 40, "width": 192, "height": 192}


def _usage(http) -> tuple[int, int, float]:
    """The caller's sd15-tiny usage: cancelled jobs, images, compute seconds."""
    model = http.get("/v1/usage").json()["models"].get("sd15-tiny")
    if model is None:
        return 0, 0, 0.0
    return model["by_status"].get("CANCELLED", 0), model["images"], model["compute_s"]


def test_a_job_cancelled_in_a_shared_batch_is_metered_and_not_stored(http):
    cancelled_before, images_before, compute_before = _usage(http)
    items = [{**BODY, "seed": 101}, {**BODY, "seed": 102}]
    r = http.post("/v1/queue/models/sd15-tiny/batch", json={"requests": items})
    assert r.status_code == 200, r.text
    gone, kept = (a["job"]["request_id"] for a in r.json()["items"])
    while wait_status(http, gone, {"IN_PROGRESS"})["progress"]["step"] < 1:
        time.sleep(0.05)
    assert wait_status(http, kept, {"IN_PROGRESS"})  # the same call
    assert http.put(f"/v1/queue/requests/{gone}/cancel").status_code == 202
    assert wait_status(http, gone, {"CANCELLED"})["status"] == "CANCELLED"

    done = wait_status(http, kept, {"COMPLETED", "FAILED"}, timeout=300)
    assert done["status"] == "COMPLETED"
    result = http.get(f"/v1/queue/requests/{kept}").json()
    assert result["batch"]["requests"] == 2  # it shared its call with the cancelled job
    kept_key = result["images"][0]["url"].split("/v1/files/", 1)[1].split("?", 1)[0]
    assert http.get(f"/v1/files/{kept_key}").status_code == 200
    gone_key = kept_key.replace(kept, gone)
    deadline = time.monotonic() + 30
    while (got := http.get(f"/v1/files/{gone_key}")).status_code != 404:  # deleted or not stored
        assert time.monotonic() < deadline, f"{gone_key}: {got.status_code} {got.text[:200]}"
        time.sleep(0.2)
    assert http.get(f"/v1/files/{gone_key.rsplit('.', 1)[0]}.json").status_code == 404
    ended = http.get(f"/v1/queue/requests/{gone}").json()  # its status, no result
    assert ended["status"] == "CANCELLED" and "images" not in ended

    # both jobs are metered: two images, and about the whole call's compute seconds (each job
    # is charged its share; without the cancelled one's it would be about half)
    cancelled, images, compute = _usage(http)
    assert cancelled == cancelled_before + 1 and images == images_before + 2
    assert compute - compute_before > 0.75 * result["timings"]["compute_s"]
