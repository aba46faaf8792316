"""Where a benchmark's CPU time goes, per process of the local stack: CPU seconds (user +
system) of the Serve replicas (by deployment), the Serve proxy and controller, every replica's
pipeline process, the load generator (this process) and the rest of Ray, read from /proc
through psutil before and after a window and divided by the images the window answered.

On a machine whose cores the worker shares with the stack, this is the budget that decides
how close the service comes to the bare pipeline: what the control plane spends per image is
CPU the pipeline does not get."""

from __future__ import annotations

import os
from typing import Any

Snapshot = dict[int, tuple[str, float]]  # pid -> (component, CPU seconds)


def _component(name: str, cmdline: list[str], pid: int, parent: str) -> str | None:
    """The stack component a process belongs to (``parent``: its parent process's name), None
    for processes outside it."""
    if pid == os.getpid():
        return "load generator"
    if name.startswith("ray::ServeReplica:"):
        return name.rsplit(":", 1)[-1]  # the deployment: gateway, scheduler, worker-sd15
    if name.startswith("ray::ProxyActor"):
        return "serve proxy"
    if name.startswith("ray::ServeController"):
        return "serve controller"
    joined = " ".join(cmdline)
    if "multiprocessing.spawn" in joined and parent.startswith("ray::ServeReplica:"):
        owner = parent.rsplit(":", 1)[-1]
        return "pipeline process" if owner.startswith("worker") else f"{owner} (child)"
    if name.startswith("ray::") or "/ray/" in joined or "raylet" in name or "gcs_server" in name:
        return "ray (other)"
    return None


def snapshot() -> Snapshot:
    """CPU seconds so far of every process of the stack."""
    import psutil

    out: Snapshot = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            parent = p.parent()
            pname = parent.name() if parent is not None else ""
            part = _component(p.info["name"] or "", p.info["cmdline"] or [], p.pid, pname)
            if part is not None:
                t = p.cpu_times()
                out[p.pid] = (part, t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def cpu_per_image(before: Snapshot, after: Snapshot, images: int, seconds: float) -> dict[str, Any]:
    """CPU milliseconds per answered image by component, and the share of the machine's cores
    each used over the window (``seconds``)."""
    spent: dict[str, float] = {}
    for pid, (part, cpu) in after.items():
        spent[part] = spent.get(part, 0.0) + max(0.0, cpu - before.get(pid, (part, 0.0))[1])
    cores = os.cpu_count() or 1
    rows = sorted(spent.items(), key=lambda kv: -kv[1])
    return {
        "images": images,
        "seconds": seconds,
        "ms_per_image": {k: 1000 * v / images if images else None for k, v in rows},
        "core_share": {k: v / seconds / cores for k, v in rows},
    }
