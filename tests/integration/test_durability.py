"""The active scheduler replica killed under load (SIGKILL): its standby takes the job store
over, the gateways reach it, every accepted job ends exactly once, none is lost, none is
metered twice. The shared stack runs one standby on PostgreSQL (SQLite without its binaries);
``benchmarks/bench_takeover.py`` times ten kills."""

from __future__ import annotations

import time

import pytest

from genmedia.loadtests.takeover import SubmitLoad, kill_active
from tests.integration.conftest import DURABLE_KEY

pytestmark = pytest.mark.integration

TAKEOVER_BOUND_S = 30.0  # generous on a loaded 2-core machine (the target, 10 s, is benchmarked)
BODY = {"prompt": "durable", "num_inference_steps": 8, "priority": "batch"}


def test_killing_the_active_scheduler_loses_no_accepted_job(serve_app, base_url):
    _, catalog = serve_app
    with SubmitLoad(base_url, DURABLE_KEY, "sd15-tiny", BODY) as load:
        deadline = time.monotonic() + 120
        while len(load.accepted) < 12:  # load running, some of it computing
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.1)
        takeover = kill_active(catalog, load)
        time.sleep(2.0)  # a little more load on the new owner
    print(f"takeover: lease {takeover.lease_s:.1f} s, first submit {takeover.submit_s:.1f} s")
    assert load.errors == []
    assert takeover.submit_s < TAKEOVER_BOUND_S
    ids = [rid for _, rid in load.accepted]
    assert len(set(ids)) == len(ids)  # a retried submit came back as the same job
    final = load.final(timeout_s=240)
    assert {st["status"] for st in final.values()} == {"COMPLETED"}, final
    for rid in ids:  # one job, one result: never run into two
        assert len(load.client.get(f"/v1/queue/requests/{rid}").json()["images"]) == 1
    # metered once each: the tenant's usage counts every job and image once
    usage = load.client.get("/v1/usage").json()["models"]
    assert usage["sd15-tiny"]["by_status"] == {"COMPLETED": len(ids)}, usage
    assert usage["sd15-tiny"]["images"] == len(ids), usage
    load.client.close()
