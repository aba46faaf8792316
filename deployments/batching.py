"""Batch forming inside a family worker replica: compatible requests share one pipeline call.

Jobs arrive at the worker (one Serve request each) and wait here per model. One consumer task per
model runs one batch at a time: it takes the oldest job and every later job with the same
``batch_key`` (model, size, steps, guidance, scheduler) up to the model's ``max_batch_size`` in
images, optionally waiting ``batch_wait_ms`` for a fuller batch when the pipeline is idle.
``form_batch`` is the pure policy; ``BatchRunner`` is its asyncio driver. No Ray imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def form_batch(
    pending: Sequence[T],
    max_items: int,
    key: Callable[[T], Hashable],
    size: Callable[[T], int] = lambda _: 1,
) -> list[int]:
    """Indices (in queue order) of the next batch: the oldest job and the compatible ones after it.

    Jobs with another key are never mixed in. A compatible job that would push the batch past
    ``max_items`` is left for a later batch, and smaller compatible jobs behind it may still join.
    The oldest job always goes, even when it alone exceeds ``max_items`` (it cannot be split).
    """
    if not pending:
        return []
    head_key = key(pending[0])
    chosen = [0]
    total = size(pending[0])
    for i in range(1, len(pending)):
        if total >= max_items:
            break
        job = pending[i]
        if key(job) == head_key and total + size(job) <= max_items:
            chosen.append(i)
            total += size(job)
    return chosen


def batch_is_full(pending: Sequence[T], max_items: int, key, size) -> bool:
    """Whether the batch ``form_batch`` would take now already holds ``max_items``."""
    idx = form_batch(pending, max_items, key, size)
    return sum(size(pending[i]) for i in idx) >= max_items


@dataclass
class BatchInfo:
    """What a job learns about the pipeline call it ran in."""

    batch_id: int
    batch_size: int  # images in the call
    num_requests: int
    queue_s: float  # from arrival at the worker to the start of the call
    compute_s: float


@dataclass
class _Waiting(Generic[T]):
    job: T
    future: asyncio.Future
    arrived: float


@dataclass
class _ModelQueue(Generic[T]):
    items: list[_Waiting[T]] = field(default_factory=list)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


class BatchRunner(Generic[T]):
    """Per-model queues and one consumer task per model, so one batch runs at a time per pipeline.

    ``run(model_id, jobs)`` runs one pipeline call and returns one result per job; it is awaited
    from the consumer task, so it must not block the event loop (the worker wraps the pipeline in
    ``asyncio.to_thread``). Errors of a call fail exactly the jobs of that call.
    """

    def __init__(
        self,
        run: Callable[[str, list[T]], Awaitable[list[Any]]],
        *,
        key: Callable[[T], Hashable],
        size: Callable[[T], int],
        max_items: Callable[[str], int],
        wait_s: Callable[[str], float] = lambda _: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._run = run
        self._key = key
        self._size = size
        self._max_items = max_items
        self._wait_s = wait_s
        self._clock = clock
        self._queues: dict[str, _ModelQueue[T]] = {}
        self._batch_ids = itertools.count(1)

    def queued(self, model_id: str | None = None) -> int:
        """Jobs waiting (not running) for one model, or for all."""
        if model_id is not None:
            q = self._queues.get(model_id)
            return len(q.items) if q else 0
        return sum(len(q.items) for q in self._queues.values())

    async def submit(self, model_id: str, job: T) -> tuple[Any, BatchInfo]:
        """Queue a job and wait for its result; cancelling the caller removes a queued job."""
        q = self._queues.get(model_id)
        if q is None:
            q = self._queues[model_id] = _ModelQueue()
        if q.task is None or q.task.done():
            q.task = asyncio.create_task(self._consume(model_id, q), name=f"batch-{model_id}")
        waiting = _Waiting(job, asyncio.get_running_loop().create_future(), self._clock())
        q.items.append(waiting)
        q.wakeup.set()
        try:
            return await waiting.future
        except asyncio.CancelledError:
            if waiting in q.items:
                q.items.remove(waiting)
            raise

    async def close(self) -> None:
        for q in self._queues.values():
            if q.task:
                q.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await q.task
            for w in q.items:
                if not w.future.done():
                    w.future.set_exception(RuntimeError("worker shutting down"))

    async def _consume(self, model_id: str, q: _ModelQueue[T]) -> None:
        while True:
            if not q.items:
                q.wakeup.clear()
                await q.wakeup.wait()
                continue
            await self._maybe_wait_for_fuller(model_id, q)
            jobs = [w.job for w in q.items]
            idx = form_batch(jobs, self._max_items(model_id), self._key, self._size)
            batch = [q.items[i] for i in idx]
            for w in batch:
                q.items.remove(w)
            batch = [w for w in batch if not w.future.done()]
            if not batch:
                continue
            started = self._clock()
            batch_id = next(self._batch_ids)
            try:
                results = await self._run(model_id, [w.job for w in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"pipeline returned {len(results)} results for {len(batch)} jobs"
                    )
            except Exception as e:  # fail this call's jobs, keep serving the rest
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(e)
                continue
            done = self._clock()
            images = sum(self._size(w.job) for w in batch)
            for w, result in zip(batch, results, strict=True):
                if not w.future.done():
                    w.future.set_result(
                        (
                            result,
                            BatchInfo(
                                batch_id, images, len(batch), started - w.arrived, done - started
                            ),
                        )
                    )

    async def _maybe_wait_for_fuller(self, model_id: str, q: _ModelQueue[T]) -> None:
        wait = self._wait_s(model_id)
        if wait <= 0:
            return
        deadline = q.items[0].arrived + wait
        max_items = self._max_items(model_id)
        while self._clock() < deadline:
            jobs = [w.job for w in q.items]
            if not jobs or batch_is_full(jobs, max_items, self._key, self._size):
                return
            q.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(q.wakeup.wait(), max(0.0, deadline - self._clock()))
