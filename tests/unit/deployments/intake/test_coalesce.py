"""The gateway's call coalescer: a lone call goes out at once, a flood shares calls, answers
reach their own callers in order, a failure reaches every caller of its call."""

from __future__ import annotations

import asyncio

import pytest

from genmedia.deployments.intake.coalesce import Coalescer


def test_a_lone_call_goes_out_at_once_and_a_flood_shares_calls():
    seen: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        seen.append(items)
        await asyncio.sleep(0.01)
        return [2 * i for i in items]

    async def go() -> list[int]:
        c: Coalescer[int, int] = Coalescer(double, concurrency=1, max_batch=50)
        first = await c.call(1)
        assert seen == [[1]]
        outs = await asyncio.gather(*(c.call(i) for i in range(100)))
        assert c.calls <= 1 + 4 and max(len(s) for s in seen) == 50
        return [first, *outs]

    outs = asyncio.run(go())
    assert outs == [2] + [2 * i for i in range(100)]


def test_a_failed_call_fails_every_caller_in_it_and_the_next_call_goes_on():
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise ConnectionError("scheduler restarting")
        return items

    async def go() -> None:
        c: Coalescer[int, int] = Coalescer(flaky, concurrency=1)
        tasks = [asyncio.create_task(c.call(i)) for i in range(3)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # the first call carried item 0 alone (a free slot: at once); 1 and 2 waited for it
        assert isinstance(results[0], ConnectionError) and results[1:] == [1, 2]
        assert await c.call(7) == 7

    asyncio.run(go())
    with pytest.raises(ValueError):
        Coalescer(flaky, concurrency=0)
