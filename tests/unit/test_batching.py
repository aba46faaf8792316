"""Batch forming (pure) and the per-model BatchRunner (asyncio, no Ray)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from genmedia.deployments.batching import BatchRunner, form_batch


@dataclass
class J:
    key: str
    n: int = 1
    name: str = ""


def take(jobs, max_items):
    return form_batch(jobs, max_items, key=lambda j: j.key, size=lambda j: j.n)


def test_only_compatible_jobs_share_a_batch():
    jobs = [J("a"), J("b"), J("a"), J("c"), J("a")]
    assert take(jobs, 8) == [0, 2, 4]


def test_oldest_goes_first_even_if_other_key_is_more_common():
    jobs = [J("b"), J("a"), J("a"), J("a")]
    assert take(jobs, 8) == [0]


def test_capacity_counts_images_and_smaller_jobs_may_fill_in():
    jobs = [J("a", 3), J("a", 4), J("a", 1), J("a", 1)]
    assert take(jobs, 5) == [0, 2, 3]


def test_oversized_head_goes_alone_and_empty_queue():
    assert take([J("a", 9), J("a")], 4) == [0]
    assert take([], 4) == []


def _runner(calls, *, max_items=4, wait_s=0.0, fail_on=None, delay=0.05):
    async def run(model_id, jobs):
        calls.append((model_id, [j.name for j in jobs]))
        await asyncio.sleep(delay)
        if fail_on and any(j.name == fail_on for j in jobs):
            raise RuntimeError("boom")
        return [f"out-{j.name}" for j in jobs]

    return BatchRunner(
        run,
        key=lambda j: j.key,
        size=lambda j: j.n,
        max_items=lambda _: max_items,
        wait_s=lambda _: wait_s,
    )


def test_runner_batches_while_busy_and_never_mixes_keys():
    async def main():
        calls = []
        r = _runner(calls)
        first = asyncio.create_task(r.submit("m", J("a", name="0")))
        await asyncio.sleep(0.01)  # "0" runs alone; the rest queue behind it
        rest = [
            asyncio.create_task(r.submit("m", J(k, name=str(i))))
            for i, k in enumerate("aabaa", start=1)
        ]
        results = await asyncio.gather(first, *rest)
        await r.close()
        return calls, results

    calls, results = asyncio.run(main())
    assert calls[0] == ("m", ["0"])
    assert calls[1] == ("m", ["1", "2", "4", "5"])
    assert calls[2] == ("m", ["3"])
    assert [res for res, _ in results] == [f"out-{i}" for i in range(6)]
    infos = [info for _, info in results]
    assert infos[1].batch_id == infos[2].batch_id == infos[4].batch_id
    assert infos[3].batch_id != infos[1].batch_id
    assert infos[1].batch_size == 4 and infos[1].num_requests == 4


def test_one_batch_at_a_time_per_model_but_models_in_parallel():
    async def main():
        running = {"m1": 0, "m2": 0}
        peak = {"m1": 0, "m2": 0}
        overlap = []

        async def run(model_id, jobs):
            running[model_id] += 1
            peak[model_id] = max(peak[model_id], running[model_id])
            overlap.append(sum(running.values()))
            await asyncio.sleep(0.02)
            running[model_id] -= 1
            return [None] * len(jobs)

        r = BatchRunner(run, key=lambda j: j.key, size=lambda j: j.n, max_items=lambda _: 1)
        await asyncio.gather(*(r.submit(m, J("a")) for m in ("m1", "m2") for _ in range(4)))
        await r.close()
        return peak, overlap

    peak, overlap = asyncio.run(main())
    assert peak == {"m1": 1, "m2": 1}
    assert max(overlap) == 2


def test_failure_fails_only_that_call():
    async def main():
        calls = []
        r = _runner(calls, max_items=1, fail_on="bad")
        ok, bad = await asyncio.gather(
            r.submit("m", J("a", name="ok")),
            r.submit("m", J("a", name="bad")),
            return_exceptions=True,
        )
        after = await r.submit("m", J("a", name="after"))
        await r.close()
        return ok, bad, after

    ok, bad, after = asyncio.run(main())
    assert ok[0] == "out-ok" and isinstance(bad, RuntimeError) and after[0] == "out-after"


def test_cancelled_waiter_leaves_the_queue():
    async def main():
        calls = []
        r = _runner(calls, max_items=1, delay=0.05)
        busy = asyncio.create_task(r.submit("m", J("a", name="busy")))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(r.submit("m", J("a", name="gone")))
        await asyncio.sleep(0.01)
        assert r.queued("m") == 1
        gone.cancel()
        await asyncio.sleep(0)
        assert r.queued("m") == 0
        await busy
        await r.close()
        return calls

    calls = asyncio.run(main())
    assert [names for _, names in calls] == [["busy"]]


def test_batch_wait_collects_a_fuller_batch():
    async def main():
        calls = []
        r = _runner(calls, max_items=3, wait_s=0.2, delay=0.0)
        tasks = []
        for i in range(3):
            tasks.append(asyncio.create_task(r.submit("m", J("a", name=str(i)))))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        await r.close()
        return calls

    calls = asyncio.run(main())
    assert calls == [("m", ["0", "1", "2"])]


@pytest.mark.parametrize("n", [1, 7])
def test_pure_policy_is_deterministic(n):
    jobs = [J("a" if i % 2 else "b", n=1) for i in range(10)]
    assert take(jobs, n) == take(list(jobs), n)
