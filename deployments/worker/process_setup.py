"""How a pipeline's process is set up before its first model loads: torch threads within the
host's cores ``server.reserved_cpus`` leaves, cores of its own when pinned (``cpu_pinning.py``),
a longer GIL switch interval, torch.compile's caches, no progress bars.

Sits at the start of ``pipeline_process.start_pipeline``, in the pipeline process of a worker
replica (or in the replica's own process when it runs the pipeline itself).
"""

from __future__ import annotations

import contextlib
import os
import sys

from genmedia.deployments.worker.batch import torch_threads_for
from genmedia.deployments.worker.cpu_pinning import cores_wanted, host_cores, pin_pipeline

# The pipeline thread holds the GIL through the Python side of every op; other threads of its
# process (the pipe's reader) take it over every switch interval. A longer interval lets the
# pipeline run in longer stretches.
GIL_SWITCH_INTERVAL_S = 0.02


def setup_process(num_cpus: float, *, reserved: int = 0, pin: bool = False) -> int:
    """Torch threads sized from the replica's CPU share within the host's cores ``reserved``
    leaves, cores of its own for them when ``pin`` (``cpu_pinning.py``: whole CPUs only,
    before torch starts a thread), a longer GIL switch interval, no progress bars; returns the
    torch intra-op threads."""
    threads = torch_threads_for(num_cpus, host_cores(), reserved)
    if pin:
        pin_pipeline(cores_wanted(num_cpus, threads), reserved)
    import torch
    from diffusers.utils import logging as diffusers_logging

    from genmedia.models.weights import genmedia_home

    diffusers_logging.disable_progress_bar()
    # torch.compile's caches where every replica of the host (and a volume) finds them
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(genmedia_home() / "inductor"))
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)
    return threads
