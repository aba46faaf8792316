"""The active scheduler replica killed under load (SIGKILL): its standby takes the job store
over, the gateways reach it, every accepted job ends exactly once, none is lost, none is
metered twice. The shared stack runs one standby on PostgreSQL (SQLite without its binaries)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import httpx
import pytest

from tests.integration.conftest import DURABLE_KEY

pytestmark = pytest.mark.integration

TAKEOVER_BOUND_S = 30.0  # generous on a loaded 2-core machine; benchmarks/bench_store.py measures


def _active_pid(catalog) -> int:
    """The pid of the scheduler replica that holds the job store's lease."""
    from genmedia.deployments.store.open import open_store

    store = open_store(catalog.server.scheduler, catalog)
    try:
        lease = store.lease("scheduler")
    finally:
        store.close()
    assert lease is not None and lease.expires_at > time.time(), lease
    return int(lease.holder.split("/")[1])  # host/pid/nonce


class Load:
    """Submits jobs one after another (each with an Idempotency-Key, sent again on 503 or a
    broken connection until answered) and notes when each was accepted."""

    def __init__(self, base_url: str):
        self.client = httpx.Client(
            base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {DURABLE_KEY}"}
        )
        self.accepted: list[tuple[float, str]] = []  # (time, job id)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _submit(self, i: int) -> None:
        key = uuid.uuid4().hex
        body = {"prompt": "durable", "seed": 5000 + i, "num_inference_steps": 8}
        body["priority"] = "batch"
        while not self.stop.is_set():
            try:
                r = self.client.post(
                    "/v1/queue/models/sd15-tiny", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if r.status_code == 202:
                self.accepted.append((time.monotonic(), r.json()["request_id"]))
                return
            assert r.status_code == 503, r.text  # only while the scheduler is taken over
            time.sleep(0.1)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            self._submit(i)
            i += 1
            time.sleep(0.05)

    def status(self, rid: str) -> dict:
        while True:
            try:
                r = self.client.get(f"/v1/queue/requests/{rid}/status")
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if r.status_code == 200:
                return r.json()
            assert r.status_code == 503, r.text
            time.sleep(0.1)


def test_killing_the_active_scheduler_loses_no_accepted_job(serve_app, base_url):
    _, catalog = serve_app
    load = Load(base_url)
    load.thread.start()
    try:
        deadline = time.monotonic() + 120
        while len(load.accepted) < 12:  # load running, some of it computing
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.1)
        before = _active_pid(catalog)
        killed_at = time.monotonic()
        os.kill(before, signal.SIGKILL)
        n_before = len(load.accepted)
        while not any(t > killed_at for t, _ in load.accepted[n_before - 1 :]):
            assert time.monotonic() - killed_at < 120, "no submit was accepted after the kill"
            time.sleep(0.05)
        takeover = next(t for t, _ in load.accepted if t > killed_at) - killed_at
        time.sleep(2.0)  # a little more load on the new owner
    finally:
        load.stop.set()
        load.thread.join(60)
    print(f"takeover: first submit accepted {takeover:.1f} s after the kill")
    assert takeover < TAKEOVER_BOUND_S
    assert _active_pid(catalog) != before  # the standby took over (its own pid)
    ids = [rid for _, rid in load.accepted]
    assert len(set(ids)) == len(ids)  # a retried submit came back as the same job
    final: dict[str, dict] = {}
    deadline = time.monotonic() + 240
    while len(final) < len(ids):
        for rid in ids:
            if rid not in final:
                st = load.status(rid)
                if st["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
                    final[rid] = st
        assert time.monotonic() < deadline, f"{len(ids) - len(final)} jobs never finished"
        time.sleep(0.2)
    assert {st["status"] for st in final.values()} == {"COMPLETED"}, final
    for rid in ids:  # one job, one result: never run into two
        result = load.client.get(f"/v1/queue/requests/{rid}").json()
        assert len(result["images"]) == 1
    # metered once each: the tenant's usage counts every job and image once
    usage = load.client.get("/v1/usage").json()["models"]
    assert usage["sd15-tiny"]["by_status"] == {"COMPLETED": len(ids)}, usage
    assert usage["sd15-tiny"]["images"] == len(ids), usage
    load.client.close()
