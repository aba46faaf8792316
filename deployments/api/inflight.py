"""Per-caller concurrency at the gateway: one tenant's flood waits its turn, others go on.

First thing on a ``/v1`` request's way after the body-size limit: requests carrying the same
``Authorization`` value (one tenant's key) are let through at most ``max_inflight_per_key`` at a
time on this replica; the others wait here, as idle coroutines, before any parsing or
scheduler call. A burst of hundreds of submits or polls from one tenant then occupies a few of
the event loop's turns at a time, and another tenant's interactive request is not queued behind
all of them. A request that goes on to wait for work done elsewhere (a sync generate waiting
for its result, a long-poll) gives its slot back first (``intake/guard.py``:
``leave_intake_slot``), so waiting requests never hold the key's intake. Progress streams are
long-lived and capped elsewhere (``intake/guard.py``), so they pass. Requests without a key pass
too (they are refused at once by the key check).
"""

from __future__ import annotations

import asyncio
import hashlib

from starlette.types import ASGIApp, Receive, Scope, Send

from genmedia.deployments.intake.guard import INFLIGHT_SLOT


class InflightPerKey:
    """ASGI middleware; one per gateway app."""

    def __init__(self, app: ASGIApp, max_inflight_per_key: int = 16) -> None:
        self.app = app
        self.limit = max_inflight_per_key
        self._slots: dict[bytes, tuple[asyncio.Semaphore, int]] = {}  # key digest -> (sem, users)

    def _key(self, scope: Scope) -> bytes | None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return None
        if scope["path"].endswith("/stream"):
            return None
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                return hashlib.blake2b(value[:512], digest_size=16).digest()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        sem, users = self._slots.get(key) or (asyncio.Semaphore(self.limit), 0)
        self._slots[key] = (sem, users + 1)
        held = False

        def release() -> None:
            nonlocal held
            if held:
                held = False
                sem.release()

        try:
            await sem.acquire()
            held = True
            token = INFLIGHT_SLOT.set(release)
            try:
                await self.app(scope, receive, send)
            finally:
                INFLIGHT_SLOT.reset(token)
                release()
        finally:
            sem, users = self._slots[key]
            if users <= 1:
                del self._slots[key]
            else:
                self._slots[key] = (sem, users - 1)
