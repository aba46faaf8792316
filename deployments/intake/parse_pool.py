"""Large request bodies parsed in a process of their own, beside the gateway replica.

Between ``api/bodies.py`` and ``intake/bodies.parse_json``: a body over ``SMALL_BODY_BYTES``
is parsed and validated by pydantic in a child process, so the gateway's event loop never
shares its interpreter lock with a big parse (pydantic holds the lock for the whole of one
call: a list of 20,000 items costs tens of milliseconds, 20 such bodies at once hold up
``/healthz`` for hundreds). The child answers the model, or the parts of the ``ApiError`` it
raised, which the gateway raises again: the answers are those of a parse in the gateway.

One child per gateway replica (``PARSE_PROCESSES``), spawned (a fork of a Ray worker would copy
its threads' locks) when the replica starts (``start``: its imports cost about a second of CPU,
which in the middle of traffic slowed ``/healthz`` for that second) or else on the first large
body, and ended with the replica: ``shutdown``, the interpreter's exit, or the child's own
watch on its parent when the replica is killed. A child that dies (out of memory on a body,
killed) is replaced on the next body; the body at hand then parses on the ``fallback``
executor, a thread of the gateway, as small bodies do.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from pydantic import BaseModel

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.bodies import parse_json

M = TypeVar("M", bound=BaseModel)
PARSE_PROCESSES = 1  # a child parses one body at a time; more wait for it (2-core machines)
OnErrors = Callable[[list[Any]], ApiError] | None


def _watch_parent() -> None:
    """In the child: exit when the gateway process ends, however it ends (a Ray replica is
    often killed, and a killed parent leaves the child blocked on its queue)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, name="parse-parent-watch", daemon=True).start()


def _ready() -> int:
    return os.getpid()


def parse_in_child(raw: bytes, model: type[BaseModel], on_errors: OnErrors) -> tuple[bool, Any]:
    """In the child: ``(True, model)``, or ``(False, the ApiError's arguments)`` (an
    exception with required arguments does not survive pickling as itself)."""
    try:
        return True, parse_json(raw, model, on_errors)
    except ApiError as e:
        return False, (e.status, e.type, e.message, e.fields, e.headers)


class ParsePool:
    """The gateway's parse process (``parse``), with a thread ``fallback`` when it is lost."""

    def __init__(self, fallback: Executor, processes: int = PARSE_PROCESSES):
        self.fallback = fallback
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.started = 0  # pools started (a lost child's replacement counts again)

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_watch_parent,
                )
                self.started += 1
            return self._executor

    def start(self) -> None:
        """Start the child now, in the background (it is ready about a second later); if it
        cannot start, the first large body tries again."""
        pool = self._pool()
        try:
            pool.submit(_ready)
        except (BrokenProcessPool, OSError):
            self._discard(pool)

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is pool:
                self._executor = None
        pool.shutdown(wait=False, cancel_futures=True)

    async def parse(self, raw: bytes, model: type[M], on_errors: OnErrors = None) -> M:
        """``raw`` as ``model`` (``intake/bodies.parse_json``'s answers), parsed in the child."""
        pool = self._pool()
        try:
            ok, value = await asyncio.wrap_future(
                pool.submit(parse_in_child, raw, model, on_errors)
            )
        except (BrokenProcessPool, OSError):  # the child died, or could not be started
            self._discard(pool)  # the next body starts a new child
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.fallback, parse_json, raw, model, on_errors)
        if not ok:
            raise ApiError(*value)
        assert isinstance(value, model)
        return value

    def pids(self) -> list[int]:
        """The running children's process ids (none before the first large body)."""
        pool = self._executor
        return list(getattr(pool, "_processes", None) or {}) if pool is not None else []

    def shutdown(self) -> None:
        """End the child (the replica ends); a later ``parse`` would start another."""
        with self._lock:
            pool, self._executor = self._executor, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
