"""The control plane's CPU priority (``serve/worker.py``: ``yield_cpu_to_workers``) follows
``server.control_plane_niceness``: measured in a child process, so this one keeps its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genmedia.models.catalog import CatalogError, parse_catalog

PROBE = """
import os, sys
from genmedia.deployments.serve.worker import yield_cpu_to_workers
before = os.nice(0)
yield_cpu_to_workers(int(sys.argv[1]))
print(os.nice(0) - before)
"""


@pytest.mark.parametrize("niceness", [0, 10])
def test_the_control_plane_yields_by_the_catalogs_niceness(niceness: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(niceness)], capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip().splitlines()[-1]) == niceness


def test_the_niceness_is_bounded() -> None:
    models = [{"id": "m", "family": "sd15", "weights": "tiny://sd15"}]
    assert parse_catalog({"models": models}).server.control_plane_niceness == 10
    with pytest.raises(CatalogError, match=r"control_plane_niceness.*less than or equal to 19"):
        parse_catalog({"models": models, "server": {"control_plane_niceness": 20}})
