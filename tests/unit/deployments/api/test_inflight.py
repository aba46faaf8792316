"""Per-key concurrency at the gateway: one key's flood runs a few at a time, another key and
progress streams are not held behind it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from genmedia.deployments.api.inflight import CONTENDED_S, InflightPerKey


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


def _scope(key: bytes) -> dict:
    return {"type": "http", "path": "/v1/queue/models/m", "headers": [(b"authorization", key)]}


def test_a_lone_key_gets_the_full_limit_and_its_share_once_another_key_arrives():
    """Alone, a key holds ``max_inflight_per_key`` slots; when another key's request arrives it
    runs down to ``shared_inflight_per_key`` as its requests finish (none is interrupted)."""
    running: dict[bytes, int] = {b"a": 0, b"b": 0}
    seen: list[tuple[int, int]] = []  # (a running, b running) each time a request starts
    gates: dict[bytes, asyncio.Event] = {b"a": asyncio.Event(), b"b": asyncio.Event()}

    async def app(scope, receive, send) -> None:
        key = dict(scope["headers"])[b"authorization"]
        running[key] += 1
        seen.append((running[b"a"], running[b"b"]))
        await gates[key].wait()
        await asyncio.sleep(0)
        running[key] -= 1

    mw = InflightPerKey(app, max_inflight_per_key=6, shared_inflight_per_key=2)

    async def go() -> None:
        flood = [asyncio.create_task(mw(_scope(b"a"), None, None)) for _ in range(20)]
        await asyncio.sleep(0.01)
        assert running[b"a"] == 6 and mw.limit_now() == 6
        other = asyncio.create_task(mw(_scope(b"b"), None, None))
        await asyncio.sleep(0.01)
        assert running[b"b"] == 1 and mw.limit_now() == 2  # it did not wait for the flood
        assert running[b"a"] == 6  # nothing interrupted
        gates[b"a"].set()
        await asyncio.sleep(0.05)
        gates[b"b"].set()
        await asyncio.gather(*flood, other)

    asyncio.run(go())
    shared = [a for a, b in seen if b == 1]
    assert shared and max(shared[1:]) <= 2, seen  # a ran down to its share while b was in
    assert max(a for a, _ in seen) == 6
    assert mw._slots == {}


def test_the_full_limit_comes_back_when_the_other_key_is_quiet():
    released = asyncio.Event()
    most = 0
    running = 0

    async def app(scope, receive, send) -> None:
        nonlocal most, running
        key = dict(scope["headers"])[b"authorization"]
        if key == b"b":
            await released.wait()
            return
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1

    now = [0.0]
    mw = InflightPerKey(
        app, max_inflight_per_key=5, shared_inflight_per_key=1, clock=lambda: now[0]
    )

    async def go() -> None:
        other = asyncio.create_task(mw(_scope(b"b"), None, None))
        await asyncio.sleep(0)
        flood = [asyncio.create_task(mw(_scope(b"a"), None, None)) for _ in range(10)]
        await asyncio.sleep(0.01)
        assert running == 1  # its share while b is in
        released.set()
        await asyncio.sleep(0.05)
        assert most == 1  # b left, but it sent a request within CONTENDED_S: still the share
        now[0] += CONTENDED_S + 0.1
        await asyncio.gather(other, *flood)

    asyncio.run(go())
    assert most == 5  # waiters got the full limit once b was quiet for CONTENDED_S
    assert mw._slots == {}


def test_a_cancelled_waiter_gives_nothing_away():
    async def app(scope, receive, send) -> None:
        await asyncio.sleep(0.02)

    mw = InflightPerKey(app, max_inflight_per_key=1)

    async def go() -> None:
        first = asyncio.create_task(mw(_scope(b"a"), None, None))
        await asyncio.sleep(0)
        second = asyncio.create_task(mw(_scope(b"a"), None, None))
        await asyncio.sleep(0.005)
        second.cancel()
        await first
        with contextlib.suppress(asyncio.CancelledError):
            await second
        slots = mw._slots
        assert slots == {}

    asyncio.run(go())


def test_limits_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        InflightPerKey(None, max_inflight_per_key=0)  # type: ignore[arg-type]
    assert InflightPerKey(None, max_inflight_per_key=3, shared_inflight_per_key=8).shared == 3  # type: ignore[arg-type]


def test_the_catalog_bounds_the_shared_limit() -> None:
    from genmedia.models.catalog import CatalogError, parse_catalog

    models = [{"id": "m", "family": "sd15", "weights": "tiny://sd15"}]
    assert parse_catalog({"models": models}).server.shared_inflight_per_key == 4
    for bad, why in ((0, "greater than or equal to 1"), (100_001, "less than or equal to 100000")):
        with pytest.raises(CatalogError, match=rf"shared_inflight_per_key.*{why}"):
            parse_catalog({"models": models, "server": {"shared_inflight_per_key": bad}})
