"""Pipeline processes on cores of their own (``worker/cpu_pinning.py``): claims are exclusive
across processes, leave the host a free core, end with their process, and pin every thread;
pinning itself is measured in child processes, so this one keeps its own affinity."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from genmedia.deployments.worker.cpu_pinning import (
    CLAIMS_ENV,
    claim_cores,
    claim_order,
    cores_wanted,
)
from genmedia.models.catalog import CatalogError, parse_catalog

CORES = [0, 1, 2, 3]


def test_a_core_per_thread_is_claimed_and_fractions_share() -> None:
    assert [cores_wanted(n, 1) for n in (0.25, 0.99, 1, 1.5)] == [0, 0, 1, 1]
    assert cores_wanted(4, 3) == 3  # the threads the reserve left it


def test_the_highest_cores_are_tried_first() -> None:
    assert claim_order({0, 3, 1, 2}) == [3, 2, 1, 0]


def test_claims_are_exclusive_and_leave_a_core_unclaimed(tmp_path: Path) -> None:
    first = claim_cores(2, CORES, tmp_path)
    assert first is not None and first.cores == [3, 2]
    second = claim_cores(1, CORES, tmp_path)
    assert second is not None and second.cores == [1]
    assert claim_cores(1, CORES, tmp_path) is None  # core 0 is the last free one
    assert claim_cores(1, [0, 1, 2, 3, 4], tmp_path).cores == [4]  # type: ignore[union-attr]
    first.release()
    again = claim_cores(2, CORES, tmp_path)
    assert again is not None and again.cores == [3, 2]


def test_a_claim_leaves_the_reserved_cores_unclaimed(tmp_path: Path) -> None:
    assert claim_cores(3, CORES, tmp_path, keep=2) is None
    first = claim_cores(1, CORES, tmp_path, keep=2)
    assert first is not None and first.cores == [3]
    assert claim_cores(1, CORES, tmp_path, keep=3) is None  # 2, 1, 0 free: one would go
    second = claim_cores(1, CORES, tmp_path, keep=2)
    assert second is not None and second.cores == [2]
    third = claim_cores(1, CORES, tmp_path, keep=0)
    assert third is not None and third.cores == [1]
    assert claim_cores(1, CORES, tmp_path, keep=0) is None  # keep 0 still keeps one
    assert first.cores + second.cores == [3, 2]  # (held until here)


def test_a_refused_claim_holds_nothing(tmp_path: Path) -> None:
    held = claim_cores(2, CORES, tmp_path)
    assert held is not None
    assert claim_cores(2, CORES, tmp_path) is None  # only 1 and 0 are free: 0 must stay so
    one = claim_cores(1, CORES, tmp_path)
    assert one is not None and one.cores == [1]  # the refused claim let go of core 1


@pytest.mark.parametrize("n", [0, 4, 5])
def test_no_claim_of_nothing_or_of_every_core(tmp_path: Path, n: int) -> None:
    assert claim_cores(n, CORES, tmp_path) is None
    assert not list(tmp_path.iterdir())  # nothing was even tried


HOLDER = """
import sys, time
from pathlib import Path
from genmedia.deployments.worker.cpu_pinning import claim_cores
claim = claim_cores(1, [0, 1, 2, 3], Path(sys.argv[1]))
print(claim.cores, flush=True)
time.sleep(60)
"""


def test_a_claim_ends_with_its_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "[3]"
        mine = claim_cores(1, CORES, tmp_path)
        assert mine is not None and mine.cores == [2]  # 3 is the other process's
        mine.release()
    finally:
        holder.kill()  # no clean-up of its own: the kernel drops its locks
        holder.wait()
    after = claim_cores(1, CORES, tmp_path)
    assert after is not None and after.cores == [3]


PINNED = """
import os, sys, threading
from genmedia.deployments.worker.cpu_pinning import cores_wanted, pin_pipeline
seen = {}
early = threading.Thread(target=lambda: (threading.Event().wait(0.5), seen.update(
    early=os.sched_getaffinity(0))))
early.start()
num_cpus = float(sys.argv[1])
claim = pin_pipeline(cores_wanted(num_cpus, max(1, int(num_cpus))))
late = threading.Thread(target=lambda: seen.update(late=os.sched_getaffinity(0)))
late.start(); late.join(); early.join()
print(claim.cores if claim else None, sorted(os.sched_getaffinity(0)),
      sorted(seen["early"]), sorted(seen["late"]))
"""


def _pinned(tmp_path: Path, num_cpus: float) -> str:
    env = {**os.environ, CLAIMS_ENV: str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PINNED), str(num_cpus)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs thread affinity and two cores",
)
def test_a_pipeline_pins_every_thread_to_its_claim(tmp_path: Path) -> None:
    top = max(os.sched_getaffinity(0))
    allowed = sorted(os.sched_getaffinity(0))
    assert _pinned(tmp_path, 1) == f"[{top}] [{top}] [{top}] [{top}]"
    # a fraction of a CPU shares the host's cores
    assert _pinned(tmp_path, 0.5) == f"None {allowed} {allowed} {allowed}"
    assert _pinned(tmp_path, 1).startswith(f"[{top}]")  # the first child's claim ended with it


def test_pinning_is_a_catalog_setting() -> None:
    models = [{"id": "m", "family": "sd15", "weights": "tiny://sd15"}]
    assert parse_catalog({"models": models}).server.pin_worker_cpus is False
    on = parse_catalog({"models": models, "server": {"pin_worker_cpus": True}})
    assert on.server.pin_worker_cpus is True
    with pytest.raises(CatalogError, match="pin_worker_cpus"):
        parse_catalog({"models": models, "server": {"pin_worker_cpus": "sometimes"}})
    assert parse_catalog({"models": models}).server.reserved_cpus == 1
    with pytest.raises(CatalogError, match=r"reserved_cpus.*less than or equal to 64"):
        parse_catalog({"models": models, "server": {"reserved_cpus": 65}})
    with pytest.raises(CatalogError, match=r"reserved_cpus.*greater than or equal to 0"):
        parse_catalog({"models": models, "server": {"reserved_cpus": -1}})
