"""Per-key concurrency at the gateway: one key's flood runs a few at a time, another key and
progress streams are not held behind it."""

from __future__ import annotations

import asyncio

from genmedia.deployments.api.inflight import InflightPerKey


def test_one_keys_flood_runs_a_few_at_a_time_and_other_keys_pass():
    running: dict[bytes, int] = {}
    most: dict[bytes, int] = {}

    async def app(scope, receive, send) -> None:
        key = dict(scope["headers"])[b"authorization"]
        running[key] = running.get(key, 0) + 1
        most[key] = max(most.get(key, 0), running[key])
        await asyncio.sleep(0.01)
        running[key] -= 1

    mw = InflightPerKey(app, max_inflight_per_key=3)

    def scope(key: bytes, path: str = "/v1/queue/models/m") -> dict:
        return {"type": "http", "path": path, "headers": [(b"authorization", key)]}

    async def go() -> None:
        flood = [mw(scope(b"Bearer a"), None, None) for _ in range(20)]
        others = [mw(scope(b"Bearer b"), None, None) for _ in range(2)]
        streams = [mw(scope(b"Bearer c", "/v1/queue/requests/x/stream"), None, None)] * 1
        await asyncio.gather(*flood, *others, *streams)

    asyncio.run(go())
    assert most[b"Bearer a"] == 3 and most[b"Bearer b"] == 2 and most[b"Bearer c"] == 1
    assert mw._slots == {}  # nothing kept once the requests are done


def test_a_request_waiting_for_its_result_gives_its_slot_back():
    """Sync requests that wait for the workers (``leave_intake_slot``) hold no intake slot: a
    request of the same key is let through while they wait, and a second release is a no-op."""
    from genmedia.deployments.intake.guard import leave_intake_slot

    done = asyncio.Event()
    passed: list[str] = []

    async def app(scope, receive, send) -> None:
        if scope["path"].endswith("/generate"):
            leave_intake_slot()
            leave_intake_slot()  # idempotent: the semaphore is not released twice
            await done.wait()
        else:
            passed.append(scope["path"])

    mw = InflightPerKey(app, max_inflight_per_key=2)

    def scope(path: str) -> dict:
        return {"type": "http", "path": path, "headers": [(b"authorization", b"Bearer a")]}

    async def go() -> None:
        waiting = [
            asyncio.create_task(mw(scope("/v1/models/m/generate"), None, None)) for _ in range(5)
        ]
        await asyncio.sleep(0.01)
        await asyncio.wait_for(mw(scope("/v1/queue/requests/x/status"), None, None), 1.0)
        done.set()
        await asyncio.gather(*waiting)

    asyncio.run(go())
    assert passed == ["/v1/queue/requests/x/status"]
    assert mw._slots == {}
    leave_intake_slot()  # outside a request: nothing to give back
