"""Scheduler takeover under load, shared by the durability test and ``bench_takeover.py``:
a submit load that survives the takeover (each job sent with an Idempotency-Key, sent again on
503 or a broken connection until answered), the pid of the replica holding the job store's
lease, and one kill of it (SIGKILL) timed to the standby's first accepted submit.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from genmedia.models.catalog import Catalog


def active_scheduler(catalog: Catalog) -> tuple[int, int]:
    """(pid, lease token) of the scheduler replica holding the job store's live lease."""
    from genmedia.deployments.store.open import open_store

    store = open_store(catalog.server.scheduler, catalog)
    try:
        lease = store.lease("scheduler")
    finally:
        store.close()
    if lease is None or lease.expires_at <= time.time():
        raise LookupError("no scheduler replica holds a live lease")
    return int(lease.holder.split("/")[1]), lease.token  # holder: host/pid/nonce


class SubmitLoad:
    """Submits ``model`` jobs one after another from a thread until ``stop``; ``accepted`` holds
    (monotonic time, job id) of each answered 202. Anything but 202 and 503 is an error."""

    def __init__(self, base_url: str, api_key: str, model: str, body: dict[str, Any]):
        self.client = httpx.Client(
            base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {api_key}"}
        )
        self.model, self.body = model, body
        self.accepted: list[tuple[float, str]] = []  # (answered, job id)
        self._sent: list[float] = []  # when the attempt that was answered 202 was sent
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SubmitLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _submit(self, i: int) -> None:
        key = uuid.uuid4().hex
        body = {**self.body, "seed": 5000 + i}
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                r = self.client.post(
                    f"/v1/queue/models/{self.model}", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if r.status_code == 202:
                self._sent.append(sent)
                self.accepted.append((time.monotonic(), r.json()["request_id"]))
                return
            if r.status_code != 503:  # 503: only while the store is taken over
                self.errors.append(f"{r.status_code}: {r.text[:300]}")
            time.sleep(0.1)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self._submit(i)
            i += 1
            time.sleep(0.05)

    def accepted_after(self, t: float, timeout_s: float) -> float:
        """Seconds from ``t`` to the answer of the first submit sent after ``t`` and accepted;
        TimeoutError after ``timeout_s``."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            n = min(len(self._sent), len(self.accepted))
            pairs = zip(
                self._sent[max(0, n - 50) : n], self.accepted[max(0, n - 50) : n], strict=True
            )
            later = [answered for sent, (answered, _) in pairs if sent > t]
            if later:
                return min(later) - t
            time.sleep(0.02)
        raise TimeoutError(f"no submit accepted within {timeout_s:.0f} s")

    def status(self, rid: str) -> dict[str, Any]:
        """A job's status, asked again while the scheduler answers 503."""
        while True:
            try:
                r = self.client.get(f"/v1/queue/requests/{rid}/status")
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if r.status_code == 200:
                return dict(r.json())
            if r.status_code != 503:
                raise RuntimeError(f"status of {rid}: {r.status_code} {r.text[:300]}")
            time.sleep(0.1)

    def final(self, timeout_s: float) -> dict[str, dict[str, Any]]:
        """Every accepted job's terminal status; TimeoutError naming how many never ended."""
        ids = [rid for _, rid in self.accepted]
        done: dict[str, dict[str, Any]] = {}
        end = time.monotonic() + timeout_s
        while len(done) < len(ids):
            for rid in ids:
                if rid not in done:
                    st = self.status(rid)
                    if st["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
                        done[rid] = st
            if time.monotonic() > end:
                raise TimeoutError(f"{len(ids) - len(done)} accepted jobs never ended")
            time.sleep(0.2)
        return done


@dataclass(frozen=True)
class Takeover:
    killed_pid: int
    old_token: int
    new_token: int
    lease_s: float  # kill -> the standby holds the lease
    submit_s: float  # kill -> the first submit accepted after it


def kill_active(
    catalog: Catalog, load: SubmitLoad, timeout_s: float = 120.0, kill: Callable = os.kill
) -> Takeover:
    """SIGKILL the active scheduler replica and time the takeover."""
    pid, token = active_scheduler(catalog)
    t0 = time.monotonic()
    kill(pid, signal.SIGKILL)
    end = t0 + timeout_s
    while True:
        try:
            _, new_token = active_scheduler(catalog)
            if new_token > token:
                break
        except LookupError:
            pass
        if time.monotonic() > end:
            raise TimeoutError(f"no standby took the lease over within {timeout_s:.0f} s")
        time.sleep(0.05)
    lease_s = time.monotonic() - t0
    submit_s = load.accepted_after(t0, max(1.0, end - time.monotonic()))
    return Takeover(pid, token, new_token, lease_s, submit_s)
