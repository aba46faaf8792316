"""Cores of their own for pipeline processes (``server.pin_worker_cpus``).

Sits at the start of a replica's pipeline process (``process_setup.setup_process``), before
torch starts its intra-op threads. When the catalog turns it on (off by default), a pipeline
with whole Ray CPUs claims one core of the host per torch thread and runs on those only, as CPU
inference servers bind their compute threads: its threads stop migrating, and the control
plane's wake-ups go to the other cores. On 2 cores that measured no gain (every thread of the
process, store and pipe threads too, then shares the compute core): see the setting.

A claim is an exclusive ``flock`` on one file per core in a folder every process of the host
sees (``claims_dir``): it ends with the process that holds it, crash included, so a restarted
pipeline process claims again and nothing needs cleaning up. A claim is refused (the process
runs unpinned, as before) when it would leave the host fewer unclaimed cores than
``server.reserved_cpus`` (at least one), when the pipeline has less than one whole CPU, or
when the platform cannot pin threads. A pipeline claims one core per torch thread
(``batch.torch_threads_for``: its whole CPUs within the host's cores the reserve leaves).
No Ray imports; no torch imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

CLAIMS_ENV = "GENMEDIA_CPU_CLAIMS_DIR"  # overrides the folder of the host's claims
_held: list[CoreClaim] = []  # this process's claim: its files must outlive every reference


def claims_dir() -> Path:
    """The host-wide folder of core claims (``$GENMEDIA_CPU_CLAIMS_DIR`` or the temp dir's)."""
    return Path(os.environ.get(CLAIMS_ENV) or Path(tempfile.gettempdir()) / "genmedia-cpu-claims")


def cores_wanted(num_cpus: float, threads: int) -> int:
    """Cores a pipeline with ``num_cpus`` Ray CPUs and ``threads`` torch threads claims: one
    per thread, none with less than a whole CPU (it shares)."""
    return threads if num_cpus >= 1 else 0


def host_cores() -> int:
    """Cores this process may run on (its affinity; the CPU count where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def claim_order(allowed: Iterable[int]) -> list[int]:
    """The order cores are tried in: highest first, so the first cores (where the OS and
    processes started before any claim tend to run) stay with the control plane."""
    return sorted(set(allowed), reverse=True)


@dataclass
class CoreClaim:
    """Cores this process holds: the files whose locks hold them stay open until release."""

    cores: list[int]
    files: list[IO[bytes]] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for f in self.files:
            with contextlib.suppress(OSError):
                f.close()
        self.files.clear()


def _try_lock(folder: Path, core: int) -> IO[bytes] | None:
    """The open, locked claim file of ``core``, or None when another process holds it."""
    f = open(folder / f"cpu-{core}.lock", "ab")  # noqa: SIM115 - held open as the claim
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _unclaimed(folder: Path, cores: Iterable[int]) -> int:
    """How many of ``cores`` nobody claimed (checked by taking and dropping each)."""
    free = 0
    for core in cores:
        f = _try_lock(folder, core)
        if f is not None:
            f.close()
            free += 1
    return free


def claim_cores(n: int, allowed: Iterable[int], folder: Path, keep: int = 1) -> CoreClaim | None:
    """``n`` cores of ``allowed`` no other process claimed, leaving at least one (``keep``:
    that many) unclaimed; None (nothing held) when there are not that many."""
    order = claim_order(allowed)
    keep = max(1, keep)
    if n < 1 or n + keep > len(order):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    claim = CoreClaim(cores=[])
    for core in order:
        f = _try_lock(folder, core)
        if f is not None:
            claim.cores.append(core)
            claim.files.append(f)
            if len(claim.cores) == n:
                break
    rest = [c for c in order if c not in claim.cores]
    if len(claim.cores) < n or _unclaimed(folder, rest) < keep:
        claim.release()
        return None
    return claim


def pin_process(cores: list[int]) -> None:
    """Run every thread of this process, and every thread it starts later, on ``cores``."""
    mask = set(cores)
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(tid), mask)
    os.sched_setaffinity(0, mask)


def pin_pipeline(n: int, keep: int = 1) -> CoreClaim | None:
    """Claim ``n`` cores (``cores_wanted``) and pin this process to them, leaving ``keep``
    unclaimed; None when it runs unpinned (``n`` is 0, no room left, or no thread affinity
    here), and why is logged."""
    if n == 0 or not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
        return None
    allowed = os.sched_getaffinity(0)
    try:
        claim = claim_cores(n, allowed, claims_dir(), keep)
    except OSError as e:
        logger.warning("pipeline runs unpinned: cannot claim cores in %s: %s", claims_dir(), e)
        return None
    if claim is None:
        logger.info("pipeline runs unpinned: %d of %d cores are not free to claim", n, len(allowed))
        return None
    pin_process(claim.cores)
    _held.append(claim)
    logger.info("pipeline pinned to cores %s", claim.cores)
    return claim
