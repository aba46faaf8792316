"""A crash of the scheduler mid-load loses no accepted job and runs none twice."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration


def _scheduler_actor():
    import ray

    for a in ray.util.list_named_actors(all_namespaces=True):
        if "#scheduler#" in a["name"]:
            return ray.get_actor(a["name"], namespace=a["namespace"])
    raise AssertionError("no scheduler replica actor")


def _status(http, rid, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"/v1/queue/requests/{rid}/status")
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 503, r.text  # only while the scheduler restarts
        assert time.monotonic() < deadline, "scheduler never came back"
        time.sleep(0.1)


def test_scheduler_crash_loses_no_accepted_job(http):
    import ray

    accepted = []
    for i in range(32):
        r = http.post(
            "/v1/queue/models/sd15-tiny",
            json={
                "prompt": "durable",
                "seed": 1000 + i,
                "num_inference_steps": 20,
                "priority": "batch",
            },
        )
        assert r.status_code == 202, r.text
        accepted.append(r.json()["request_id"])
    while _status(http, accepted[0])["status"] != "COMPLETED":
        time.sleep(0.02)
    unfinished = sum(_status(http, rid)["status"] != "COMPLETED" for rid in accepted[-8:])
    ray.kill(_scheduler_actor(), no_restart=True)  # Serve's controller starts a new replica
    assert unfinished >= 4  # the crash really happened mid-load
    final = {}
    deadline = time.monotonic() + 180
    while len(final) < len(accepted):
        for rid in accepted:
            if rid not in final:
                st = _status(http, rid)
                if st["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
                    final[rid] = st
        assert time.monotonic() < deadline, f"{len(accepted) - len(final)} jobs never finished"
        time.sleep(0.1)
    assert set(final) == set(accepted)
    for st in final.values():
        assert st["status"] in ("COMPLETED", "FAILED"), st
        if st["status"] == "FAILED":
            assert st["error"]["type"] and st["error"]["message"]
    completed = [rid for rid, st in final.items() if st["status"] == "COMPLETED"]
    assert len(completed) >= len(accepted) - 2  # at most the calls in flight may fail
    for rid in completed:
        result = http.get(f"/v1/queue/requests/{rid}").json()
        assert len(result["images"]) == 1  # one job, one result: never run into two
        assert http.get(result["images"][0]["url"]).status_code == 200
    # Every accepted job is in the store exactly once, with its own seed.
    seeds = [http.get(f"/v1/queue/requests/{rid}").json().get("seed") for rid in completed]
    assert len(set(seeds)) == len(seeds)
    r = http.post("/v1/queue/models/sd15-tiny", json={"prompt": "after", "num_inference_steps": 2})
    assert r.status_code == 202
