"""Per-caller concurrency at the gateway: one tenant's flood waits its turn, others go on.

First thing on a ``/v1`` request's way after the body-size limit: requests carrying the same
``Authorization`` value (one tenant's key) are let through at most ``max_inflight_per_key`` at a
time on this replica while no other key sent requests here in the last ``CONTENDED_S``
seconds, and at most ``shared_inflight_per_key`` otherwise; the others wait here, as idle
coroutines, before any parsing or scheduler call. A lone tenant's clients then keep the
replica's intake full, while a burst of hundreds of submits or polls from one tenant occupies
only a few of the event loop's turns at a time while other tenants send requests: their
interactive requests are not queued behind all of it. The share holds for ``CONTENDED_S`` after
another key's last request, because a flood at its full limit when another request arrives
would still hold that many turns while the request goes through (a key holding more than its
share runs down to it as its requests finish; none is interrupted). A request that goes
on to wait for work done elsewhere (a sync generate waiting for its result, a long-poll) gives
its slot back first (``intake/guard.py``: ``leave_intake_slot``), so waiting requests never hold
the key's intake. Progress streams are long-lived and capped elsewhere (``intake/guard.py``), so
they pass. Requests without a key pass too (they are refused at once by the key check).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from genmedia.deployments.intake.guard import INFLIGHT_SLOT

CONTENDED_S = 5.0  # a key counts as another's contender this long after its last request


@dataclass
class KeySlots:
    """One key's requests on this replica: slots held, requests waiting for one (a future
    each, set when a slot is handed to it) and requests of the key here at all (``users``)."""

    held: int = 0
    users: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class InflightPerKey:
    """ASGI middleware; one per gateway app."""

    def __init__(
        self,
        app: ASGIApp,
        max_inflight_per_key: int = 16,
        shared_inflight_per_key: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_inflight_per_key < 1 or shared_inflight_per_key < 1:
            raise ValueError("per-key in-flight limits must be at least 1")
        self.app = app
        self.limit = max_inflight_per_key
        self.shared = min(shared_inflight_per_key, max_inflight_per_key)
        self.clock = clock
        self._slots: dict[bytes, KeySlots] = {}  # key digest -> its slots, while it has users
        # keys without requests here now -> when their last one ended, oldest first
        self._quiet: OrderedDict[bytes, float] = OrderedDict()

    def _forget_quiet_keys(self) -> None:
        """Drop keys whose last request ended more than ``CONTENDED_S`` seconds ago."""
        now = self.clock()
        while self._quiet:
            at = next(iter(self._quiet.values()))
            if now - at <= CONTENDED_S:
                break
            self._quiet.popitem(last=False)

    def _key(self, scope: Scope) -> bytes | None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return None
        if scope["path"].endswith("/stream"):
            return None
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                return hashlib.blake2b(value[:512], digest_size=16).digest()
        return None

    def limit_now(self) -> int:
        """Slots a key may hold now: all of them alone, its share while other keys have
        requests here or sent one in the last ``CONTENDED_S`` seconds."""
        self._forget_quiet_keys()
        alone = len(self._slots) + len(self._quiet) <= 1
        return self.limit if alone else self.shared

    def _grant(self, slots: KeySlots) -> None:
        """Hand free slots of ``slots``'s key to its waiters, oldest first."""
        limit = self.limit_now()
        while slots.waiters and slots.held < limit:
            waiter = slots.waiters.popleft()
            if not waiter.done():
                slots.held += 1
                waiter.set_result(None)

    async def _acquire(self, slots: KeySlots) -> None:
        if not slots.waiters and slots.held < self.limit_now():
            slots.held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        slots.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted as it was cancelled
                self._release(slots)
            else:
                slots.waiters.remove(waiter)
            raise

    def _release(self, slots: KeySlots) -> None:
        slots.held -= 1
        self._grant(slots)

    def _leave(self, key: bytes, slots: KeySlots) -> None:
        """A request of ``key`` is done here; after its last one the key is quiet, and counts
        as another key's contender for ``CONTENDED_S`` more seconds."""
        slots.users -= 1
        if slots.users > 0:
            return
        del self._slots[key]
        self._quiet[key] = self.clock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        slots = self._slots.get(key)
        if slots is None:  # the key's first request here now
            slots = self._slots[key] = KeySlots()
        slots.users += 1
        self._quiet.pop(key, None)
        held = False

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._release(slots)

        try:
            await self._acquire(slots)
            held = True
            token = INFLIGHT_SLOT.set(release)
            try:
                await self.app(scope, receive, send)
            finally:
                INFLIGHT_SLOT.reset(token)
                release()
        finally:
            self._leave(key, slots)
