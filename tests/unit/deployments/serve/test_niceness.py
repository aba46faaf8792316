"""The control plane's CPU priority (``serve/niceness.py``: ``yield_cpu_to_workers``) follows
``server.control_plane_niceness`` on every thread of the process: measured in a child process,
so this one keeps its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genmedia.models.catalog import CatalogError, parse_catalog

# the calling thread, a thread started before the call (as Serve's event loop and Ray's
# threads are), and one that thread's sibling starts after the call
PROBE = """
import os, sys, threading, time
from genmedia.deployments.serve.niceness import yield_cpu_to_workers
n = lambda t: os.getpriority(os.PRIO_PROCESS, t)
stop = threading.Event()
early = threading.Thread(target=stop.wait, daemon=True)
early.start()
late = []
spawner = threading.Thread(target=lambda: (time.sleep(0.3), late.append(
    threading.Thread(target=stop.wait, daemon=True)), late[0].start(), stop.wait()), daemon=True)
spawner.start()
before = n(0)
yield_cpu_to_workers(int(sys.argv[1]))
after_call = (n(0) - before, n(early.native_id) - before)
time.sleep(0.5)
print(*after_call, n(late[0].native_id) - before)
"""


@pytest.mark.parametrize("niceness", [0, 10])
def test_every_thread_of_the_control_plane_yields_by_the_catalogs_niceness(niceness: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(niceness)], capture_output=True, text=True, check=True
    )
    own, early, late = map(int, out.stdout.strip().splitlines()[-1].split())
    assert (own, early, late) == (niceness, niceness, niceness)


def test_the_niceness_is_bounded() -> None:
    models = [{"id": "m", "family": "sd15", "weights": "tiny://sd15"}]
    assert parse_catalog({"models": models}).server.control_plane_niceness == 10
    with pytest.raises(CatalogError, match=r"control_plane_niceness.*less than or equal to 19"):
        parse_catalog({"models": models, "server": {"control_plane_niceness": 20}})
