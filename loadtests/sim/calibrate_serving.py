"""Calibration, parts 2 and 3: the serving path on the real stack (``genmedia serve`` in a
child process, ``loadtests/local.py``). At idle, one request at a time per model through the
harness's replay (queue API + SSE): how much slower a pipeline computes inside the stack than
bare and the spread of that compute; the control plane's CPU per request and phase (Serve's
proxy, the gateway and the scheduler plus the client, sampled every 10 ms and cut at the
request's submit, 202, first progress and final status, less the idle rate); what the client
waits beyond that CPU and the compute. Then the same requests while a background client keeps
the control plane busy: each call's compute against the control plane's CPU during it gives the
uncontended compute and the slowdown while the control plane is busy.

Run by ``calibrate.py --serving``; needs Ray (``flock /tmp/genmedia-ray.lock``).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rich.console import Console

from genmedia.loadtests.local import TENANT, default_catalog_data, local_stack
from genmedia.loadtests.records import RequestRecord
from genmedia.loadtests.sim.calibrate_bare import bare_call_s
from genmedia.loadtests.traces import TraceRecord
from genmedia.models.catalog import Catalog, ModelEntry

console = Console()
CP_PHASES = ("submit", "follow", "done", "after")
SERVING_GAP_S = 0.75  # between idle requests: the slowest tiny call and its events fit
AFTER_WINDOW_S = 0.3  # after the final status: the client reads the result
LOAD_INTERVAL_S = 0.01  # loaded phase: one status read every this many seconds


class CpuSampler:
    """Cumulative CPU seconds (user + system) of a set of processes, sampled in a thread: the
    stack's processes on a request's way (``genmedia serve``'s descendants that ``on_path``
    accepts: Serve's proxy and replicas but the workers) plus this process (the load
    generator). ``series`` is (monotonic time, CPU seconds)."""

    def __init__(
        self, root_pid: int, on_path: Callable[[str], bool], interval_s: float = 0.01
    ) -> None:
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
        self._procs: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        self._refresh()
        self.series.append((time.monotonic(), self._total()))
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
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


@dataclass
class ServingRun:
    """What the serving path recorded: the idle and the loaded replay (client clocks start at
    ``t_idle`` / ``t_loaded``, monotonic), the stack's CPU samples, the quiet window (the idle
    CPU rate), the loaded window and the background reads' HTTP statuses."""

    records: list[RequestRecord]
    loaded: list[RequestRecord]
    t_idle: float
    t_loaded: float
    series: list[tuple[float, float]]
    processes: list[str]
    quiet: tuple[float, float]
    load: tuple[float, float]
    codes: list[int]


def serving_trace(models: list[ModelEntry], reps: int) -> list[TraceRecord]:
    """``reps + 2`` rounds of one interactive request per model, ``SERVING_GAP_S`` apart."""
    return [
        TraceRecord(
            t=SERVING_GAP_S * (i * len(models) + k),
            tenant=TENANT,
            priority="interactive",
            model=m.id,
            params={"prompt": "a red fox", "seed": i},
        )
        for i in range(reps + 2)
        for k, m in enumerate(models)
    ]


def run_serving(trace: list[TraceRecord], workers: list[str], load_interval_s: float) -> ServingRun:
    """The trace through a local stack at idle, then again under background status reads,
    with the stack's CPU sampled throughout."""
    from genmedia.loadtests.replay import ReplayConfig, replay

    def on_path(cmd: str) -> bool:
        """Serve's HTTP proxy and its replicas but the workers (gateway, scheduler)."""
        return serve_process_on_path(cmd, workers)

    with local_stack() as stack, CpuSampler(stack.pid, on_path) as cpu:
        quiet_t0 = time.monotonic()
        time.sleep(3.0)  # the stack's idle CPU rate (Ray's background work)
        quiet_t1 = time.monotonic()
        cfg = ReplayConfig(url=stack.url, keys={TENANT: stack.api_key})
        started: dict[str, float] = {}

        def replay_trace(label: str) -> list[RequestRecord]:
            def mark_start() -> None:
                started.setdefault(label, time.monotonic())

            return asyncio.run(
                replay(trace, cfg, lambda i, f: f"{label} {i}: {f}", on_start=mark_start)
            )

        records = replay_trace("calibration request")
        time.sleep(AFTER_WINDOW_S + 0.1)
        done_id = next(r.request_id for r in reversed(records) if r.request_id)
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            reads = pool.submit(
                status_reads, stack.url, stack.api_key, done_id, load_interval_s, stop
            )
            time.sleep(1.0)
            load_t0 = time.monotonic()
            loaded = replay_trace("loaded calibration request")
            load_t1 = time.monotonic()
            stop.set()
            codes = reads.result()
        time.sleep(0.2)
    return ServingRun(
        records=records,
        loaded=loaded,
        t_idle=started["calibration request"],
        t_loaded=started["loaded calibration request"],
        series=cpu.series,
        processes=sorted(cpu.names.values()),
        quiet=(quiet_t0, quiet_t1),
        load=(load_t0, load_t1),
        codes=codes,
    )


def cpu_rates(run: ServingRun, load_interval_s: float, raw: list[dict]) -> tuple[float, float]:
    """The stack's idle CPU rate and its rate beyond idle under the background reads."""
    (q0, q1), (l0, l1) = run.quiet, run.load
    idle_rate = window_cpu(run.series, q0, q1, 0.0) / (q1 - q0)
    raw.append({"kind": "cpu", "idle_rate": idle_rate, "processes": run.processes})
    load_rate = window_cpu(run.series, l0, l1, idle_rate) / (l1 - l0)
    codes = run.codes
    bad_reads = sum(1 for c in codes if c != 200)
    raw.append({"kind": "load", "reads": len(codes), "failed_reads": bad_reads,
                "interval_s": load_interval_s, "cp_cpu_per_s": load_rate})  # fmt: skip
    if bad_reads > len(codes) // 2:  # the load is the control plane's work, not the answers
        raise RuntimeError(f"{bad_reads} of {len(codes)} background status reads failed")
    return idle_rate, load_rate


def idle_costs(
    run: ServingRun,
    trace: list[TraceRecord],
    catalog: Catalog,
    fits: dict[str, dict],
    idle_rate: float,
    raw: list[dict],
) -> dict[str, Any]:
    """Per completed idle request past the warm-up: the control plane's CPU per phase, the
    waits beyond it, stack over bare compute per family, compute seconds per model."""
    outside: list[float] = []
    admit: list[float] = []
    done_wait: list[float] = []
    factor: dict[str, list[float]] = {f: [] for f in fits}
    cp: dict[str, list[float]] = {ph: [] for ph in CP_PHASES}
    spread: dict[str, list[float]] = {}  # compute seconds per model
    models = {m.id: m for m in catalog.models}
    records = run.records
    for n, (rec, tr) in enumerate(zip(records, trace, strict=True)):
        m = models[tr.model]
        done = _completed(rec)
        phases: dict[str, float] = {}
        if done:
            nxt = records[n + 1].t_submit if n + 1 < len(records) else None
            for ph, (a, b) in phase_windows(rec, nxt).items():
                phases[ph] = window_cpu(run.series, run.t_idle + a, run.t_idle + b, idle_rate)
        raw.append({"kind": "serving", "record": asdict(rec), "cp_cpu_s": phases})
        if n < warm_up(catalog, fits) or done is None:
            continue
        t_admitted, t_done, compute_s = done
        for ph, v in phases.items():
            cp[ph].append(v)
        admit.append(t_admitted - rec.t_submit - phases["submit"])
        fit = fits[m.family]
        wait = t_done - t_admitted - compute_s - fit["store_per_image_s"]
        done_wait.append(wait - phases["done"])
        outside.append(t_done - rec.t_submit - compute_s)
        factor[m.family].append(compute_s / bare_call_s(fit, m))
        spread.setdefault(m.id, []).append(compute_s)
    if not outside:
        raise RuntimeError("no request completed through the stack")
    return {"outside": outside, "admit": admit, "done_wait": done_wait, "factor": factor,
            "control_plane": cp, "spread": spread}  # fmt: skip


def _completed(rec: RequestRecord) -> tuple[float, float, float] | None:
    """(admitted, done, compute seconds) of a request that completed with its compute known."""
    if rec.status != "COMPLETED" or rec.compute_s is None:
        return None
    if rec.t_admitted is None or rec.t_done is None:
        return None
    return rec.t_admitted, rec.t_done, rec.compute_s


def calibrated_models(catalog: Catalog, fits: dict[str, dict]) -> list[ModelEntry]:
    """The models of the calibrated families."""
    return [m for m in catalog.models if m.family in fits]


def warm_up(catalog: Catalog, fits: dict[str, dict]) -> int:
    """Requests not counted at the start of each phase: two rounds of the models."""
    return 2 * len(calibrated_models(catalog, fits))


def contention(
    run: ServingRun,
    spread: dict[str, list[float]],
    warm: int,
    rates: tuple[float, float],
    raw: list[dict],
) -> dict[str, Any]:
    """Each call's compute (over its model's idle mean) against the control plane's CPU
    during it, idle and loaded, and the fit through both."""
    idle_rate, load_rate = rates
    pairs: dict[str, list[tuple[float, float]]] = {"idle": [], "loaded": []}
    for phase, recs, start in (("idle", run.records, run.t_idle),
                               ("loaded", run.loaded, run.t_loaded)):  # fmt: skip
        for n, rec in enumerate(recs):
            if n < warm or rec.status != "COMPLETED" or not rec.compute_s:
                continue
            if rec.model not in spread:
                continue
            u = busy_during_compute(rec, run.series, start, idle_rate)
            pairs[phase].append((u, rec.compute_s / statistics.fmean(spread[rec.model])))
            raw.append({"kind": "contention", "phase": phase, "model": rec.model,
                        "compute_s": rec.compute_s, "cp_busy": u})  # fmt: skip
    fit = fit_contention(pairs["idle"] + pairs["loaded"])
    fit["cp_cpu_per_s"] = load_rate
    for phase, v in pairs.items():
        fit[f"{phase}_busy"] = statistics.fmean(u for u, _ in v) if v else 0.0
        fit[f"{phase}_compute"] = statistics.fmean(y for _, y in v) if v else 0.0
    raw.append({"kind": "contention-fit", **fit})
    return fit


def calibrate_serving(
    reps: int, raw: list[dict], fits: dict[str, dict], load_interval_s: float = LOAD_INTERVAL_S
) -> dict:
    """Requests one at a time (idle stack) through the harness's own replay (queue API followed
    over SSE, as ``genmedia loadtest run`` does): how much slower and how spread a pipeline
    computes inside the stack than bare, the control plane's CPU per request and phase, and
    what a client waits beyond both."""
    from genmedia.deployments.serve.app import worker_name
    from genmedia.models.catalog import parse_catalog

    catalog = parse_catalog(default_catalog_data(), "<default>")
    trace = serving_trace(calibrated_models(catalog, fits), reps)
    console.print(
        f"serving path: {len(trace)} idle requests over {trace[-1].t:.0f} s, then the same "
        f"with a status read every {load_interval_s * 1000:.0f} ms"
    )
    run = run_serving(trace, [worker_name(f) for f in catalog.families()], load_interval_s)
    rates = cpu_rates(run, load_interval_s, raw)
    costs = idle_costs(run, trace, catalog, fits, rates[0], raw)
    family = {m.id: m.family for m in catalog.models}
    durations: dict[str, list[float]] = {}  # each model's compute over its mean, per family
    for mid, v in costs["spread"].items():
        mean = statistics.fmean(v)
        durations.setdefault(family[mid], []).extend(x / mean for x in v)
    return {
        "outside_s": statistics.median(costs["outside"]),
        "submit_s": max(0.0, statistics.median(costs["admit"])),
        "respond_s": max(0.0, statistics.median(costs["done_wait"])),
        "factor": {f: statistics.median(v) for f, v in costs["factor"].items() if v},
        "durations": durations,
        "control_plane": costs["control_plane"],
        "idle_rate": rates[0],
        "contention": contention(run, costs["spread"], warm_up(catalog, fits), rates, raw),
    }
