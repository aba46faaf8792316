"""Calibrate the simulator's ``tiny-cpu`` profile on this machine.

1. Bare pipelines: the real tiny pipelines of ``genmedia.models`` (default catalog), one torch
   thread as a worker replica gets, timed per phase through the step callback at a few batch
   sizes, resolutions and guidance settings; least squares fit ``step = f + q * b * (mp/ref)``
   (with and without classifier-free guidance), the VAE/output phase per image, the call overhead
   and the load time; PNG encoding + storage per image.
2. Serving path (``--serving``, needs Ray: run under ``flock /tmp/genmedia-ray.lock``): the real
   stack (``genmedia serve``) at idle, one request at a time per model through the harness's
   replay (queue API + SSE): how much slower a pipeline computes inside the stack than bare
   (other processes share the two cores) and the spread of that compute (``duration_quantiles``,
   each model's compute_s over its mean); the control plane's CPU per request and phase
   (``control_plane``: CPU seconds of Serve's proxy, the gateway and the scheduler plus the
   client's, sampled every 10 ms and cut at the request's submit, 202, first progress and final
   status, less the idle rate); what the client waits beyond that CPU and the compute
   (``submit_s`` / ``respond_s``: hops, event-loop wake-ups).
3. Loaded phase (with ``--serving``): the same requests again while a background client keeps
   the control plane busy (status reads of a finished request every ``--load-interval``
   seconds: proxy, gateway and scheduler work, no compute). Each call's compute time (over its
   model's mean at idle) against the control plane's CPU during the call (CPU seconds per
   second beyond the idle rate, at most 1: the simulator's control plane is one server, busy
   or not) over both phases, least squares ``y = a + b u``: ``a`` is the uncontended compute
   (the families' times are scaled by it) and ``(a + b) / a`` the slowdown of a computing call
   while the control plane is busy (``host_contention.compute_slowdown``). The control plane's
   processes run on all the host's cores (``control_plane_servers``: its CPU under the load
   is reported; above 1 CPU/s it did more than one piece at once).

Writes ``loadtests/sim/profiles/tiny-cpu.yaml`` and the raw samples under
``loadtests/results/sim-calibration-<stamp>.jsonl``.

    flock /tmp/genmedia-ray.lock python loadtests/sim/calibrate.py [--serving] [--reps 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from genmedia.loadtests.sim.costs import (
    PROFILES_DIR,
    ControlPlaneCost,
    FamilyCost,
    HostContention,
    Profile,
    dump_profile,
)
from genmedia.loadtests.sim.empirical import normalised, quantiles_of

RESULTS = Path(__file__).resolve().parents[1] / "results"
console = Console()
SIZES = (64, 128)
BATCHES = (1, 2, 4, 8)
STEPS = 4
UNET_FAMILIES = ("sd15", "sdxl")  # classifier-free guidance when guidance_scale > 1
CP_PHASES = ("submit", "follow", "done", "after")
SERVING_GAP_S = 0.75  # between idle requests: the slowest tiny call and its events fit
AFTER_WINDOW_S = 0.3  # after the final status: the client reads the result
LOAD_INTERVAL_S = 0.01  # loaded phase: one status read every this many seconds


class CpuSampler:
    """Cumulative CPU seconds (user + system) of a set of processes, sampled in a thread: the
    stack's processes on a request's way (``genmedia serve``'s descendants that ``on_path``
    accepts: Serve's proxy and replicas but the workers) plus this process (the load
    generator). ``series`` is (monotonic time, CPU seconds)."""

    def __init__(self, root_pid: int, on_path, interval_s: float = 0.01):
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(root_pid)
        self.on_path = on_path
        self.interval_s = interval_s
        self.series: list[tuple[float, float]] = []
        self.names: dict[int, str] = {}
        self._base: dict[int, float] = {}  # a process's CPU when first seen (counted from there)
        # its CPU since first seen at its last good read: a process that exits, or misses a
        # read or a refresh, keeps its last value (never counted twice)
        self._latest: dict[int, float] = {}
        self._procs: list = []
        self._stop = None
        self._thread = None

    def _refresh(self) -> None:
        me = self.psutil.Process()
        keep = [me]
        self.names[me.pid] = "load generator (this process)"
        for p in self.root.children(recursive=True):
            try:
                cmd = " ".join(p.cmdline()).strip()
            except self.psutil.Error:
                continue
            if self.on_path(cmd):
                keep.append(p)
                self.names[p.pid] = cmd[:120]
        self._procs = keep

    def _total(self) -> float:
        for p in self._procs:
            try:
                t = p.cpu_times()
            except self.psutil.Error:
                continue
            used = t.user + t.system
            self._latest[p.pid] = used - self._base.setdefault(p.pid, used)
        return sum(self._latest.values())

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self.interval_s):
            if n % 100 == 0:
                self._refresh()
            n += 1
            self.series.append((time.monotonic(), self._total()))

    def __enter__(self) -> CpuSampler:
        import threading

        self._refresh()
        self.series.append((time.monotonic(), self._total()))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def serve_process_on_path(title: str, workers: list[str]) -> bool:
    """Whether a process of the stack is on a request's way but not a worker: Serve's proxy,
    its replicas but the workers. Ray appends the method a replica runs to its title
    (``ray::ServeReplica:genmedia:worker-sd15.handle_request_with_rejection``)."""
    if title.startswith("ray::ProxyActor"):
        return True
    if not title.startswith("ray::ServeReplica:"):
        return False
    deployment = title.rsplit(":", 1)[1].split(".")[0].strip()
    return deployment not in workers


def window_cpu(series: list[tuple[float, float]], t0: float, t1: float, idle_rate: float) -> float:
    """CPU seconds spent in [t0, t1] by the sampled processes beyond their idle rate
    (cumulative CPU interpolated at both ends; never below 0)."""
    if t1 < t0:
        raise ValueError(f"window ends before it starts: [{t0}, {t1}]")
    if len(series) < 2 or not series[0][0] <= t0 <= t1 <= series[-1][0]:
        raise ValueError(f"window [{t0:.3f}, {t1:.3f}] is outside the sampled time")
    ts = [t for t, _ in series]
    cpu = [c for _, c in series]
    used = float(np.interp(t1, ts, cpu) - np.interp(t0, ts, cpu))
    return max(0.0, used - idle_rate * (t1 - t0))


def phase_windows(rec, next_submit: float | None) -> dict[str, tuple[float, float]]:
    """A completed request's control-plane phases on the client's clock (see ``Profile``)."""
    end = rec.t_done + AFTER_WINDOW_S
    if next_submit is not None:
        end = min(end, next_submit)
    first = rec.t_first_progress if rec.t_first_progress is not None else rec.t_done
    return {
        "submit": (rec.t_submit, rec.t_admitted),
        "follow": (rec.t_admitted, first),
        "done": (first, rec.t_done),
        "after": (rec.t_done, max(rec.t_done, end)),
    }


def _jobs(entry, batch: int, size: int, steps: int, guidance: float | None, seed: int):
    from genmedia.models.params import GenerateRequest, resolve_request

    out = []
    for i in range(batch):
        job, errors = resolve_request(
            entry,
            GenerateRequest(
                prompt="a red fox in the snow",
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                seed=seed + i,
            ),
            request_id=f"cal-{seed}-{i}",
        )
        assert not errors, errors
        out.append(job)
    return out


def time_call(model, jobs) -> dict:
    """One pipeline call split into phases by the step callback."""
    from genmedia.models.runner import run_batch

    marks: list[float] = []
    t0 = time.perf_counter()
    run_batch(model, jobs, on_step=lambda s, n: marks.append(time.perf_counter()))
    t1 = time.perf_counter()
    steps = [b - a for a, b in itertools.pairwise(marks)]
    step = statistics.median(steps) if steps else (marks[0] - t0)
    return {
        "pre_s": marks[0] - t0 - step,  # before the first step: text encoders, set-up
        "step_s": step,
        "post_s": t1 - marks[-1],  # VAE decode, conversion
        "total_s": t1 - t0,
    }


def time_store(model, jobs, images_per_call: int) -> float:
    """Seconds per image to PNG-encode and store (the worker's storage step)."""
    from genmedia.deployments.store.outputs import store_outputs
    from genmedia.deployments.store.storage import LocalDirStorage
    from genmedia.models.runner import run_batch

    images = run_batch(model, jobs)
    with tempfile.TemporaryDirectory() as d:
        storage = LocalDirStorage(Path(d))
        t0 = time.perf_counter()
        for job, imgs in zip(jobs, images, strict=True):
            store_outputs(storage, job, imgs, prefix="cal/", extra={}, now=time.time())
        return (time.perf_counter() - t0) / images_per_call


def fit_family(samples: list[dict], family: str, ref_mp: float) -> dict:
    """Least squares: step = f + q_cfg * x (guided) or f + q * x (unguided), x = b * mp / ref."""
    rows, ys = [], []
    for s in samples:
        x = s["batch"] * (s["size"] ** 2 / 1e6) / ref_mp
        cfg = s["cfg"] and family in UNET_FAMILIES
        rows.append([1.0, x if cfg else 0.0, 0.0 if cfg else x])
        ys.append(s["step_s"])
    a = np.array(rows)
    has_plain = a[:, 2].any()
    if not has_plain:
        a = a[:, :2]
    coef, *_ = np.linalg.lstsq(a, np.array(ys), rcond=None)
    f = max(0.0, float(coef[0]))
    q_cfg = max(1e-6, float(coef[1]))
    q = max(1e-6, float(coef[2])) if has_plain else q_cfg
    # The profile caps cfg_multiplier at 4: keep the guided slope (requests' default) whole
    # and let the unguided one be the larger of its fit and a quarter of the guided one.
    q = max(q, q_cfg / 4.0)
    post_rows = [[1.0, s["batch"] * (s["size"] ** 2 / 1e6) / ref_mp] for s in samples]
    pcoef, *_ = np.linalg.lstsq(
        np.array(post_rows), np.array([s["post_s"] for s in samples]), rcond=None
    )
    return {
        "step_fixed_s": f,
        "step_per_image_s": q,
        "cfg_multiplier": min(4.0, max(1.0, q_cfg / q)) if has_plain else 1.0,
        "post_fixed_s": max(0.0, float(pcoef[0])),
        "vae_per_image_s": max(0.0, float(pcoef[1])),
        "pre_s": statistics.median(s["pre_s"] for s in samples),
    }


def calibrate_bare(reps: int, raw: list[dict]) -> dict[str, dict]:
    import torch

    from genmedia.models.catalog import load_catalog
    from genmedia.models.runner import load_model
    from genmedia.models.weights import resolve_source

    torch.set_num_threads(1)  # a worker replica's budget (num_cpus 0.5 -> one torch thread)
    catalog = load_catalog()
    by_family = {}
    for m in catalog.models:
        if m.task == "text-to-image":  # the families the profiles model
            by_family.setdefault(m.family, m)  # the first model of each family
    fits = {}
    grid = [(b, s, True) for s in SIZES for b in BATCHES] + [(b, 64, False) for b in (1, 4, 8)]
    with Progress(console=console) as progress:
        task = progress.add_task("bare pipelines", total=len(by_family) * len(grid) * reps)
        for family, entry in by_family.items():
            path = resolve_source(entry.weights)
            loads = []
            for _ in range(2):
                loads.append(load_model(entry, path, "cpu").load_s)
            model = load_model(entry, path, "cpu")
            time_call(model, _jobs(entry, 1, 64, STEPS, None, 0))  # warm-up
            samples = []
            for batch, size, cfg in grid:
                guidance = None if cfg else 0.0
                if not cfg and family not in UNET_FAMILIES:
                    progress.advance(task, reps)
                    continue
                runs = []
                for r in range(reps):
                    runs.append(time_call(model, _jobs(entry, batch, size, STEPS, guidance, r)))
                    progress.advance(task)
                med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
                sample = {"family": family, "batch": batch, "size": size, "cfg": cfg, **med}
                samples.append(sample)
                raw.append({"kind": "bare", **sample, "runs": runs})
            ref_mp = 64 * 64 / 1e6
            fit = fit_family(samples, family, ref_mp)
            fit["ref_megapixels"] = ref_mp
            fit["load_s"] = statistics.median(loads)
            fit["store_per_image_s"] = time_store(model, _jobs(entry, 4, 64, 1, None, 0), 4)
            raw.append({"kind": "fit", "family": family, **fit, "loads": loads})
            fits[family] = fit
    return fits


def status_reads(url: str, key: str, request_id: str, interval_s: float, stop) -> list[int]:
    """Background control-plane load: read one finished request's status every
    ``interval_s`` until ``stop`` is set (proxy, gateway and scheduler work, no compute).
    Returns the HTTP status of every read."""
    import httpx

    codes: list[int] = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, timeout=10.0) as client:
        due = time.monotonic()
        while not stop.is_set():
            try:
                codes.append(
                    client.get(
                        f"/v1/queue/requests/{request_id}/status", headers=headers
                    ).status_code
                )
            except httpx.HTTPError:
                codes.append(0)
            due += interval_s
            stop.wait(max(0.0, due - time.monotonic()))
    return codes


def busy_during_compute(rec, series, t0: float, idle_rate: float) -> float:
    """The control plane's CPU per second (beyond idle, at most 1) while a call computed:
    the window is the call's compute time ending at the client's final status (which comes
    a few milliseconds after the compute ends)."""
    a = t0 + rec.t_done - rec.compute_s
    return min(1.0, window_cpu(series, a, t0 + rec.t_done, idle_rate) / rec.compute_s)


def fit_contention(samples: list[tuple[float, float]]) -> dict:
    """Least squares ``y = a + b u`` over (u, y) pairs: y a call's compute over its model's
    mean at idle, u the control plane's CPU per second during it. ``a``: the uncontended
    compute (relative to the idle mean); slowdown while busy: ``(a + b) / a`` (1 to 10)."""
    if len(samples) < 3 or len({round(u, 3) for u, _ in samples}) < 2:
        raise ValueError("need calls at two control-plane loads at least")
    u = np.array([x for x, _ in samples])
    y = np.array([v for _, v in samples])
    (a, b), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(u), u]), y, rcond=None)
    a = float(min(max(a, 0.1), float(y.max())))
    slowdown = float(min(10.0, max(1.0, (a + float(b)) / a)))
    return {"uncontended": a, "compute_slowdown": slowdown, "n": len(samples)}


def calibrate_serving(
    reps: int, raw: list[dict], fits: dict[str, dict], load_interval_s: float = LOAD_INTERVAL_S
) -> dict:
    """Requests one at a time (idle stack) through the harness's own replay (queue API followed
    over SSE, as ``genmedia loadtest run`` does): how much slower and how spread a pipeline
    computes inside the stack than bare, the control plane's CPU per request and phase, and
    what a client waits beyond both."""
    import asyncio

    from genmedia.deployments.serve.app import worker_name
    from genmedia.loadtests.replay import ReplayConfig, replay
    from genmedia.loadtests.sim.localstack import default_catalog_data, local_stack
    from genmedia.loadtests.traces import TraceRecord
    from genmedia.models.catalog import parse_catalog

    catalog = parse_catalog(default_catalog_data(), "<default>")
    models = [m for m in catalog.models if m.family in fits]  # the calibrated families
    trace = [
        TraceRecord(
            t=SERVING_GAP_S * (i * len(models) + k),
            tenant="sim",
            priority="interactive",
            model=m.id,
            params={"prompt": "a red fox", "seed": i},
        )
        for i in range(reps + 2)
        for k, m in enumerate(models)
    ]
    workers = [worker_name(f) for f in catalog.families()]

    def on_path(cmd: str) -> bool:
        """Serve's HTTP proxy and its replicas but the workers (gateway, scheduler)."""
        return serve_process_on_path(cmd, workers)

    import threading
    from concurrent.futures import ThreadPoolExecutor

    console.print(
        f"serving path: {len(trace)} idle requests over {trace[-1].t:.0f} s, then the same "
        f"with a status read every {load_interval_s * 1000:.0f} ms"
    )
    with local_stack() as stack, CpuSampler(stack.pid, on_path) as cpu:
        quiet_t0 = time.monotonic()
        time.sleep(3.0)  # the stack's idle CPU rate (Ray's background work)
        quiet_t1 = time.monotonic()
        cfg = ReplayConfig(url=stack.url, keys={"sim": stack.api_key})
        t0, tl = {}, {}

        def replay_trace(label: str, started: dict) -> list:
            return asyncio.run(
                replay(
                    trace,
                    cfg,
                    lambda i, f: f"{label} {i}: {f}",
                    on_start=lambda: started.setdefault("t", time.monotonic()),
                )
            )

        records = replay_trace("calibration request", t0)
        time.sleep(AFTER_WINDOW_S + 0.1)
        done_id = next(r.request_id for r in reversed(records) if r.request_id)
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            reads = pool.submit(
                status_reads, stack.url, stack.api_key, done_id, load_interval_s, stop
            )
            time.sleep(1.0)
            load_t0 = time.monotonic()
            loaded = replay_trace("loaded calibration request", tl)
            load_t1 = time.monotonic()
            stop.set()
            codes = reads.result()
        time.sleep(0.2)
    idle_rate = window_cpu(cpu.series, quiet_t0, quiet_t1, 0.0) / (quiet_t1 - quiet_t0)
    raw.append({"kind": "cpu", "idle_rate": idle_rate, "processes": sorted(cpu.names.values())})
    load_rate = window_cpu(cpu.series, load_t0, load_t1, idle_rate) / (load_t1 - load_t0)
    bad_reads = sum(1 for c in codes if c != 200)
    raw.append({"kind": "load", "reads": len(codes), "failed_reads": bad_reads,
                "interval_s": load_interval_s, "cp_cpu_per_s": load_rate})  # fmt: skip
    if bad_reads > len(codes) // 2:  # the load is the control plane's work, not the answers
        raise RuntimeError(f"{bad_reads} of {len(codes)} background status reads failed")
    outside, admit, done_wait, factor = [], [], [], {f: [] for f in fits}
    cp: dict[str, list[float]] = {ph: [] for ph in CP_PHASES}
    spread: dict[str, list[float]] = {}  # compute seconds per model
    warm = 2 * len(models)
    for n, (rec, tr) in enumerate(zip(records, trace, strict=True)):
        m = catalog.model(tr.model)
        ok = rec.status == "COMPLETED" and rec.compute_s is not None
        phases = {}
        if ok:
            nxt = records[n + 1].t_submit if n + 1 < len(records) else None
            for ph, (a, b) in phase_windows(rec, nxt).items():
                phases[ph] = window_cpu(cpu.series, t0["t"] + a, t0["t"] + b, idle_rate)
        raw.append({"kind": "serving", "record": asdict(rec), "cp_cpu_s": phases})
        if n < warm or not ok:
            continue
        for ph, v in phases.items():
            cp[ph].append(v)
        admit.append(rec.t_admitted - rec.t_submit - phases["submit"])
        fit = fits[m.family]
        wait = rec.t_done - rec.t_admitted - rec.compute_s - fit["store_per_image_s"]
        done_wait.append(wait - phases["done"])
        outside.append(rec.latency - rec.compute_s)
        p = m.parameters
        cfg_on = p.guidance.default > 1.0 and m.family in UNET_FAMILIES
        mult = fit["cfg_multiplier"]
        bare = (
            fit["pre_s"]
            + p.steps.default
            * (fit["step_fixed_s"] + fit["step_per_image_s"] * (mult if cfg_on else 1.0))
            + fit["post_fixed_s"]
            + fit["vae_per_image_s"]
        )
        factor[m.family].append(rec.compute_s / bare)
        spread.setdefault(m.id, []).append(rec.compute_s)
    if not outside:
        raise RuntimeError("no request completed through the stack")
    durations: dict[str, list[float]] = {}  # each model's compute over its mean, per family
    for mid, v in spread.items():
        mean = statistics.fmean(v)
        durations.setdefault(catalog.model(mid).family, []).extend(x / mean for x in v)
    # Compute against the control plane's CPU during it, at idle and loaded.
    pairs: dict[str, list[tuple[float, float]]] = {"idle": [], "loaded": []}
    for phase, recs, start in (("idle", records, t0["t"]), ("loaded", loaded, tl["t"])):
        for n, rec in enumerate(recs):
            if n < warm or rec.status != "COMPLETED" or not rec.compute_s:
                continue
            if rec.model not in spread:
                continue
            u = busy_during_compute(rec, cpu.series, start, idle_rate)
            pairs[phase].append((u, rec.compute_s / statistics.fmean(spread[rec.model])))
            raw.append({"kind": "contention", "phase": phase, "model": rec.model,
                        "compute_s": rec.compute_s, "cp_busy": u})  # fmt: skip
    contention = fit_contention(pairs["idle"] + pairs["loaded"])
    contention["cp_cpu_per_s"] = load_rate
    for phase, v in pairs.items():
        contention[f"{phase}_busy"] = statistics.fmean(u for u, _ in v) if v else 0.0
        contention[f"{phase}_compute"] = statistics.fmean(y for _, y in v) if v else 0.0
    raw.append({"kind": "contention-fit", **contention})
    return {
        "outside_s": statistics.median(outside),
        "submit_s": max(0.0, statistics.median(admit)),
        "respond_s": max(0.0, statistics.median(done_wait)),
        "factor": {f: statistics.median(v) for f, v in factor.items() if v},
        "durations": durations,
        "control_plane": cp,
        "idle_rate": idle_rate,
        "contention": contention,
    }


def build_profile(fits: dict[str, dict], serving: dict | None) -> Profile:
    cpus = os.cpu_count() or 1
    serving = serving or {}
    contention = serving.get("contention")
    # the idle stack's compute over bare, then the uncontended part of it (the control plane's
    # own work during an idle call is simulated, and slows the call down by itself)
    uncontended = contention["uncontended"] if contention else 1.0
    families = {}
    for family, fit in fits.items():
        k = serving.get("factor", {}).get(family, 1.0) * uncontended
        samples = serving.get("durations", {}).get(family)
        families[family] = FamilyCost(
            step_fixed_s=round(fit["step_fixed_s"] * k, 6),
            step_per_image_s=round(fit["step_per_image_s"] * k, 6),
            ref_megapixels=fit["ref_megapixels"],
            cfg_multiplier=round(fit["cfg_multiplier"], 3),
            vae_per_image_s=round(fit["vae_per_image_s"] * k, 6),
            call_overhead_s=round((fit["pre_s"] + fit["post_fixed_s"]) * k, 6),
            per_image_overhead_s=round(fit["store_per_image_s"], 6),
            duration_quantiles=_factor_quantiles(samples) if samples else None,
            load_s=round(fit["load_s"], 3),
            device_share=round(min(1.0, 1 / cpus), 3),  # one torch thread of the machine's CPUs
        )
    cp = serving.get("control_plane")
    return Profile(
        name="tiny-cpu",
        device=f"this machine's {cpus} CPU cores (no GPU), one torch thread per worker replica",
        description="Calibrated by loadtests/sim/calibrate.py from the tiny random-weight models.",
        # What the client waits at idle beyond the control plane's CPU and the compute: hops
        # and wake-ups, no queueing.
        submit_s=round(serving.get("submit_s", 0.0), 6),
        respond_s=round(serving.get("respond_s", 0.0), 6),
        control_plane=ControlPlaneCost(
            **{f"{ph}_s": [round(q, 6) for q in quantiles_of(cp[ph])] for ph in CP_PHASES}
        )
        if cp
        else None,
        # the control plane is several processes (proxy, gateway, scheduler, the client): the
        # host's cores run as many pieces of its work at once
        control_plane_servers=cpus if cp else 1,
        host_contention=HostContention(compute_slowdown=round(contention["compute_slowdown"], 3))
        if contention and cp
        else None,
        replica_start_s=10.0,
        families=families,
    )


def _factor_quantiles(samples: list[float]) -> list[float]:
    return [round(v, 4) for v in normalised(quantiles_of(samples))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--serving", action="store_true", help="also measure the real stack")
    ap.add_argument(
        "--load-interval",
        type=float,
        default=LOAD_INTERVAL_S,
        help="loaded phase of --serving: seconds between background status reads",
    )
    ap.add_argument("--out", type=Path, default=PROFILES_DIR / "tiny-cpu.yaml")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.load_interval <= 0:
        raise SystemExit(f"--load-interval must be above 0, got {args.load_interval}")
    raw: list[dict] = []
    fits = calibrate_bare(args.reps, raw)
    serving = (
        calibrate_serving(args.reps * 4, raw, fits, args.load_interval) if args.serving else None
    )
    profile = build_profile(fits, serving)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw_path = RESULTS / f"sim-calibration-{stamp}.jsonl"
    with raw_path.open("w") as fh:
        for r in raw:
            fh.write(json.dumps(r) + "\n")
    header = (
        f"# Calibrated on this machine by loadtests/sim/calibrate.py at {stamp}"
        f"{' (with --serving)' if serving else ''}; raw samples: "
        f"loadtests/results/{raw_path.name}\n"
    )
    if serving:
        header += _serving_header(serving)
    dump_profile(profile, args.out, header)
    console.print(f"profile → {args.out}\nraw samples → {raw_path}")


def _serving_header(serving: dict) -> str:
    """Comment lines saying where the serving-path numbers come from."""
    cp = serving["control_plane"]
    lines = [
        f"serving path at idle (harness replay, queue API + SSE): a client waits "
        f"{serving['outside_s'] * 1000:.1f} ms beyond the pipeline's compute (median); "
        "stack/bare compute " + ", ".join(f"{f} x{v:.2f}" for f, v in serving["factor"].items()),
        "duration_quantiles: each model's compute_s over its mean at idle, pooled per family "
        "(" + ", ".join(f"{f} n={len(v)}" for f, v in serving["durations"].items()) + ")",
        "control_plane: CPU seconds of Serve's proxy, gateway and scheduler processes plus the "
        "client's, per request and phase (submit: send to 202; follow: 202 to first progress; "
        "done: to the final status; after: the next 0.3 s), less the idle rate "
        f"{serving['idle_rate']:.3f} CPU/s; medians "
        + ", ".join(f"{ph} {statistics.median(v) * 1000:.1f} ms" for ph, v in cp.items())
        + f" (n={len(cp['submit'])})",
        "submit_s / respond_s: the idle wait to the 202 and from the call's end to the final "
        "status beyond that CPU (medians)",
    ]
    c = serving.get("contention")
    if c:
        lines.append(
            f"host_contention: compute over the idle mean against the control plane's CPU "
            f"during the call, idle (busy {c['idle_busy']:.2f}, compute x{c['idle_compute']:.2f})"
            f" and under status reads ({c['cp_cpu_per_s']:.2f} CPU/s; busy "
            f"{c['loaded_busy']:.2f}, compute x{c['loaded_compute']:.2f}), n={c['n']}: "
            f"uncontended x{c['uncontended']:.3f} (families' times scaled by it), slowdown "
            f"while busy x{c['compute_slowdown']:.2f}"
        )
        lines.append(
            f"control_plane_servers: the host's {os.cpu_count()} cores (the control plane's "
            f"processes used {c['cp_cpu_per_s']:.2f} CPU/s under the status reads)"
        )
    return "".join(f"# {line}\n" for line in lines)


if __name__ == "__main__":
    main()
