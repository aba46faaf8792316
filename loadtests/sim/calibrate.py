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

Part 1 is ``calibrate_bare.py``, parts 2 and 3 ``calibrate_serving.py``; this script runs them and
builds the profile. Writes ``loadtests/sim/profiles/tiny-cpu.yaml`` and the raw samples under
``loadtests/results/raw/sim-calibration-<stamp>.jsonl`` (not in git).

    flock /tmp/genmedia-ray.lock python loadtests/sim/calibrate.py [--serving] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from rich.console import Console

from genmedia.loadtests.local import RAW, stamp
from genmedia.loadtests.sim.calibrate_bare import calibrate_bare
from genmedia.loadtests.sim.calibrate_serving import CP_PHASES, LOAD_INTERVAL_S, calibrate_serving
from genmedia.loadtests.sim.costs import (
    PROFILES_DIR,
    ControlPlaneCost,
    FamilyCost,
    HostContention,
    Profile,
    dump_profile,
)
from genmedia.loadtests.sim.empirical import normalised, quantiles_of

console = Console()


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
    at = stamp()
    RAW.mkdir(parents=True, exist_ok=True)
    raw_path = RAW / f"sim-calibration-{at}.jsonl"
    with raw_path.open("w") as fh:
        for r in raw:
            fh.write(json.dumps(r) + "\n")
    header = (
        f"# Calibrated on this machine by loadtests/sim/calibrate.py at {at}"
        f"{' (with --serving)' if serving else ''}; raw samples: "
        f"loadtests/results/raw/{raw_path.name}\n"
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
