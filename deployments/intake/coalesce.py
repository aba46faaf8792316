"""Coalescing: many concurrent gateway calls of one kind become one scheduler call.

Where it sits: between ``GatewayService`` and the scheduler's deployment handle, for the calls
that come in floods — status reads and batch-class single submits. A call that finds a free
slot goes out at once (no added wait when the gateway is quiet); while ``concurrency`` calls are
in flight, new items queue and leave together in the next call (up to ``max_batch``), so a
flood costs the scheduler hop once per group instead of once per request. Interactive submits
never pass through here: they keep their own direct calls (intake lanes). No Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Coalescer(Generic[In, Out]):
    """``await call(item)`` answers ``call_many([..., item, ...])[its index]``."""

    def __init__(
        self,
        call_many: Callable[[list[In]], Awaitable[list[Out]]],
        *,
        max_batch: int = 128,
        concurrency: int = 2,
    ) -> None:
        if max_batch < 1 or concurrency < 1:
            raise ValueError("max_batch and concurrency must be at least 1")
        self.call_many = call_many
        self.max_batch = max_batch
        self.concurrency = concurrency
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # scheduler calls made (for tests and metrics)

    async def call(self, item: In) -> Out:
        fut: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        while self._queue and self._inflight < self.concurrency:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            self._inflight += 1
            self.calls += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        try:
            outs = await self.call_many([item for item, _ in batch])
            if len(outs) != len(batch):
                raise RuntimeError(f"{len(outs)} answers for {len(batch)} calls")
        except BaseException as e:  # every waiter gets the failure (a 503 upstream)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
            if not isinstance(e, Exception):
                raise
        else:
            for (_, fut), out in zip(batch, outs, strict=True):
                if not fut.done():  # its caller may have gone
                    fut.set_result(out)
        finally:
            self._inflight -= 1
            self._kick()
