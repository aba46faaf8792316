"""``genmedia sim``: run a scenario through the cluster simulator and write the same raw records
and report as a real load-test run. Registered in ``deployments/cli/main.py``; errors in the inputs
are one clear line naming the file and field (exit code 2), never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from genmedia.deployments.tenants.schema import TenantsError
from genmedia.loadtests.local import RAW, stamp
from genmedia.loadtests.scenarios import ScenarioError
from genmedia.loadtests.sim.costs import ProfileError
from genmedia.loadtests.sim.engine import SimConfig, SimResult
from genmedia.loadtests.sim.run import (
    InputError,
    RunInputs,
    load_inputs,
    run_sim,
    write_outputs,
)
from genmedia.loadtests.sim.scaling import Scaler
from genmedia.loadtests.traces import TraceError
from genmedia.models.catalog import CatalogError

err = Console(stderr=True, soft_wrap=True)
out = Console()


def parse_replicas(values: list[str]) -> dict[str, int] | None:
    if not values:
        return None
    counts = {}
    for v in values:
        family, _, n = v.partition("=")
        if not family or not n.isdigit() or int(n) < 1:
            raise InputError(f"--replicas: {v!r}: expected FAMILY=N with N >= 1")
        counts[family] = int(n)
    return counts


ScenarioOpt = Annotated[
    str, typer.Option("--scenario", "-s", help="Scenario YAML or trace JSONL to replay.")
]
ProfileOpt = Annotated[
    str, typer.Option("--profile", "-p", help="Cost profile: tiny-cpu, gpu, or a YAML file.")
]
GpusOpt = Annotated[
    int | None,
    typer.Option(
        "--gpus", min=1, help="GPUs of the cluster (default: what the catalog's replicas need)."
    ),
]
PolicyOpt = Annotated[
    Literal["priority", "fifo"], typer.Option("--policy", help="Scheduler policy.")
]
PackingOpt = Annotated[
    Literal["fractional", "dedicated"],
    typer.Option("--packing", help="Replicas packed by gpu_fraction, or a GPU each."),
]
CatalogOpt = Annotated[
    Path | None, typer.Option("--catalog", "-c", help="Catalog YAML (default: embedded).")
]
TenantsOpt = Annotated[
    Path | None, typer.Option("--tenants", "-t", help="Tenants YAML: weights and quotas.")
]
ReplicasOpt = Annotated[
    list[str] | None,
    typer.Option("--replicas", help="Initial replicas of a family, FAMILY=N (repeatable)."),
]
EngineOpt = Annotated[
    Literal["request", "step"] | None,
    typer.Option(
        "--engine",
        help="Every family's worker engine: request-level batches, or the step engine (calls "
        "join a running set at step boundaries). Default: the catalog's workers.<family>.engine.",
    ),
]
AutoscaleOpt = Annotated[
    bool,
    typer.Option(
        "--autoscale",
        help="Scale families with genmedia.autoscaling's policy every second (default: the "
        "initial replicas stay).",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output directory (default: loadtests/results/raw/sim-*)."),
]


def sim(
    scenario: ScenarioOpt,
    profile: ProfileOpt = "tiny-cpu",
    gpus: GpusOpt = None,
    policy: PolicyOpt = "priority",
    packing: PackingOpt = "fractional",
    catalog: CatalogOpt = None,
    tenants: TenantsOpt = None,
    replicas: ReplicasOpt = None,
    engine: EngineOpt = None,
    autoscale: AutoscaleOpt = False,
    out_dir: OutOpt = None,
) -> None:
    """Simulate a scenario on a modelled cluster with the scheduler's own policy code."""
    try:
        inputs = load_inputs(scenario, profile, catalog, tenants)
        config = SimConfig(
            policy=policy,
            packing=packing,
            gpus=gpus,
            replicas=parse_replicas(replicas or []),
            tenants=inputs.tenants,
            weights=inputs.info.weights,
            scaler=_scaler(inputs, gpus) if autoscale else None,
            scale_interval_s=1.0,
            engine=engine,
        )
        result = run_sim(inputs, config)
    except (ScenarioError, CatalogError) as e:
        raise _input_error(e.issues) from None
    except (InputError, ProfileError, TraceError, TenantsError, ValueError) as e:
        raise _input_error([e]) from None
    at = stamp()
    out_dir = out_dir or RAW / f"sim-{inputs.info.scenario}-{at}"
    notes = {"profile": inputs.profile.name, "policy": policy, "packing": packing,
             "engine": engine or "catalog", "autoscale": autoscale}  # fmt: skip
    info = inputs.info.model_copy(update={"started_utc": at})
    summary = write_outputs(out_dir, result, info, notes)
    _print_summary(result, summary)
    out.print(f"{result.events} events in {result.wall_s:.2f}s wall; report in {out_dir}")


def _scaler(inputs: RunInputs, gpus: int | None) -> Scaler:
    """``genmedia.autoscaling``'s policy over the catalog's families."""
    from genmedia.loadtests.sim.scaling import autoscaling_scaler

    return autoscaling_scaler(
        inputs.catalog,
        gpus or len(inputs.catalog.families()),
        replica_start_s=inputs.profile.replica_start_s,
    )


def _input_error(issues: Iterable[object]) -> typer.Exit:
    """Each issue as one line (file and field), exit code 2."""
    for issue in issues:
        err.print(f"[red]error:[/red] {issue}", highlight=False)
    return typer.Exit(2)


def _print_summary(result: SimResult, summary: dict) -> None:
    table = Table(title=f"simulated {len(result.records)} requests on {result.gpus} GPU(s)")
    for col in ("class", "completed", "p50 s", "p99 s", "queue p99 s", "images/s", "goodput/s"):
        table.add_column(col)
    for cls, s in [*summary["classes"].items(), ("all", summary["overall"])]:
        lat, q = s["latency_s"], s["queue_wait_s"]
        table.add_row(
            cls,
            str(s["by_status"].get("COMPLETED", 0)),
            _fmt(lat["p50"]),
            _fmt(lat["p99"]),
            _fmt(q["p99"]),
            f"{s['throughput_images_per_s']:.2f}",
            f"{s['goodput_images_per_s']:.2f}",
        )
    out.print(table)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
