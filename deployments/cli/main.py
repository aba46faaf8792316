"""The ``genmedia`` command: serve, deploy, status, catalog validation, tiny model builds.

Where an operator starts: every command validates its input first and prints clear errors (file,
model, field) instead of tracebacks; long work shows rich progress.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from genmedia.client.cli import run as run_command
from genmedia.deployments.cli.infra import infra_app
from genmedia.deployments.cli.store import store_app
from genmedia.deployments.cli.tenants import tenants_app
from genmedia.deployments.tenants.schema import (
    DEV_KEY_ENV,
    TenantsError,
    TenantsFile,
    development_tenants,
    load_tenants,
)
from genmedia.loadtests.loadtest_cli import loadtest_app
from genmedia.loadtests.plots import PlotsUnavailable
from genmedia.loadtests.sim.cli import sim as sim_command
from genmedia.models.catalog import Catalog, CatalogError, load_catalog
from genmedia.models.server_config import HAPROXY_ENV, ingress_env

console = Console(stderr=True, soft_wrap=True)  # errors never wrap mid-path
out = Console(width=None if sys.stdout.isatty() else 200)  # no wrapping in pipes and logs
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="genmedia: serve generative media models on Ray Serve.",
)
catalog_app = typer.Typer(no_args_is_help=True, help="Catalog files.")
models_app = typer.Typer(no_args_is_help=True, help="Model checkpoints.")
app.add_typer(catalog_app, name="catalog")
app.add_typer(models_app, name="models")
app.add_typer(tenants_app, name="tenants")
app.add_typer(store_app, name="store")  # gc
app.add_typer(infra_app)  # plan, render
app.add_typer(loadtest_app, name="loadtest")
app.command("sim")(sim_command)
app.command("run")(run_command)  # callers: generate through the queue API, save outputs

TenantsOpt = Annotated[
    Path | None,
    typer.Option(
        "--tenants",
        "-t",
        help="Tenants YAML file (default: one development tenant "
        "whose key is printed at start-up, or $GENMEDIA_DEV_API_KEY).",
    ),
]
CatalogOpt = Annotated[
    Path | None,
    typer.Option(
        "--catalog", "-c", help="Catalog YAML file (default: the embedded catalog of tiny models)."
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _load(path: Path | None) -> Catalog:
    try:
        return load_catalog(path)
    except CatalogError as e:
        for issue in e.issues:
            console.print(f"[red]✗[/] {issue}", highlight=False)
        raise _fail(f"{len(e.issues)} problem(s) in the catalog") from None


def _load_tenants(path: Path | None) -> tuple[TenantsFile, str | None]:
    """The tenants to serve and, for the development default, its plaintext key."""
    try:
        if path is None:
            return development_tenants()
        return load_tenants(path), None
    except TenantsError as e:
        for issue in e.issues:
            console.print(f"[red]✗[/] {issue}", highlight=False)
        raise _fail(f"{len(e.issues)} problem(s) in the tenants file") from None


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _check_weights(catalog: Catalog, build_tiny: bool) -> None:
    from genmedia.deployments.cli.preflight import check_weights

    with _progress() as progress:
        task = progress.add_task(
            "checking weights (building tiny models if missing)", total=len(catalog.models)
        )

        def on_model(model_id: str, source: str) -> None:
            progress.update(task, description=f"weights of {model_id} ({source})", advance=1)

        issues = check_weights(catalog, build_tiny=build_tiny, on_model=on_model)
        progress.update(task, completed=len(catalog.models), description="weights checked")
    if issues:
        for issue in issues:
            console.print(f"[red]✗[/] {issue}", highlight=False)
        raise _fail(f"{len(issues)} model(s) with unusable weights")


# -- catalog -----------------------------------------------------------------------------------
@catalog_app.command("validate")
def catalog_validate(
    file: Annotated[Path, typer.Argument(help="Catalog YAML file.")],
    check_weights: Annotated[bool, typer.Option(help="Also check every model's weights.")] = False,
) -> None:
    """Validate a catalog file; print every problem with file, model id and field."""
    catalog = _load(file)
    if check_weights:
        _check_weights(catalog, build_tiny=False)
    table = Table("model", "family", "task", "weights", "gpu", "batch", title=str(file))
    for m in catalog.models:
        table.add_row(
            m.id, m.family, m.task, m.weights, f"{m.gpu_fraction:g}", str(m.max_batch_size)
        )
    out.print(table)
    out.print(f"[green]✓[/] {len(catalog.models)} model(s) valid")


# -- models ------------------------------------------------------------------------------------
@models_app.command("build-tiny")
def models_build_tiny(
    family: Annotated[
        list[str] | None, typer.Option(help="Family to build (repeatable; default: all).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when present.")] = False,
) -> None:
    """Build the deterministic random-weight tiny models into $GENMEDIA_HOME/tiny."""
    import shutil

    from genmedia.models.registry import FAMILIES, family_module
    from genmedia.models.weights import tiny_cache_dir

    families = family or sorted(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise _fail(f"unknown family {unknown[0]!r}; known: {', '.join(sorted(FAMILIES))}")
    with _progress() as progress:
        task = progress.add_task("building tiny models", total=len(families))
        for name in families:
            target = tiny_cache_dir() / name
            progress.update(task, description=f"building {name} → {target}")
            if force and target.exists():
                shutil.rmtree(target)
            if not target.exists():
                family_module(name).build_tiny(target)
            progress.advance(task)
        progress.update(task, description=f"tiny models in {tiny_cache_dir()}")


# -- serve / deploy ----------------------------------------------------------------------------
def _deploy(
    catalog: Catalog, tenants: TenantsFile, *, host: str, port: int, gpus_available: bool
) -> None:
    """Deploy the app on the connected Ray, showing each deployment's state until it runs."""
    from genmedia.deployments.serve.local import AppState, deploy_watched

    total = len(catalog.families()) + 2  # the workers, the gateway and the scheduler
    error: Exception | None = None
    with _progress() as progress:
        task = progress.add_task("starting deployments", total=total)

        def on_state(state: AppState | None) -> None:
            if state is None:
                return
            deps = sorted(state.deployments.values(), key=lambda d: d.name)
            running = sum(1 for d in deps if d.status == "HEALTHY")
            states = ", ".join(f"{d.name}: {d.status.lower()}" for d in deps)
            progress.update(task, completed=running, description=states or "deploying")

        try:
            deploy_watched(
                catalog,
                tenants,
                host=host,
                port=port,
                gpus_available=gpus_available,
                on_state=on_state,
            )
        except Exception as e:
            error = e
        progress.update(task, completed=total, description="deployed")
    if error is not None:
        raise _fail(f"deployment failed: {error}")


def _cpus_needed(catalog: Catalog) -> float:
    from genmedia.deployments.serve.app import plan_workers

    workers = sum(p.num_cpus * max(1, p.min_replicas) for p in plan_workers(catalog))
    server = catalog.server
    return workers + server.gateway_num_cpus * server.gateway_replicas + server.scheduler_num_cpus


def _check_acceleration(catalog: Catalog) -> None:
    from genmedia.deployments.cli.preflight import check_acceleration
    from genmedia.models.runner import pick_device

    problems = check_acceleration(catalog, pick_device())
    if problems:
        for p in problems:
            console.print(f"[red]✗[/] {p}", highlight=False)
        raise _fail(f"{len(problems)} acceleration option(s) this machine cannot run")


def _local_gpus(asked: float | None) -> tuple[float, int]:
    """GPUs to give the local Ray (``--gpus``, else the real count, else 1 logical) and the
    real CUDA devices here."""
    from genmedia.models.runner import pick_device

    real = 0
    if pick_device() == "cuda":
        import torch

        real = torch.cuda.device_count()
    return (asked if asked is not None else (real or 1)), real


def _print_dev_key(dev_key: str | None) -> None:
    """The development tenant's key: printed when generated here, never when it came from the
    environment (it may be a shared secret; the operator knows it)."""
    if not dev_key:
        return
    if os.environ.get(DEV_KEY_ENV):
        out.print(f"development API key (tenant 'dev'): the one in ${DEV_KEY_ENV}")
        return
    out.print(f"development API key (tenant 'dev'): [bold]{dev_key}[/]")
    out.print(f"  export GENMEDIA_API_KEY={dev_key}")


def _print_serving(catalog: Catalog, url: str, dev_key: str | None) -> None:
    first = catalog.models[0].id
    out.print(
        f"\n[bold green]genmedia is serving[/] {len(catalog.models)} model(s) at "
        f"[bold]{url}[/]  (docs: {url}/docs)"
    )
    _print_dev_key(dev_key)
    auth = '-H "Authorization: Bearer $GENMEDIA_API_KEY"'
    out.print(f"  curl -s {auth} {url}/v1/models")
    out.print(
        f"  curl -s {auth} -X POST {url}/v1/models/{first}/generate "
        "-H 'content-type: application/json' -d '{\"prompt\": \"a red fox\"}'"
    )
    out.print("Ctrl-C stops.")


def _wait_for_stop() -> None:
    """Until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass


@app.command()
def serve(
    catalog_file: CatalogOpt = None,
    tenants_file: TenantsOpt = None,
    gpus: Annotated[
        float | None,
        typer.Option(
            "--gpus",
            help="GPUs Ray may use; on a machine "
            "without any, declares that many logical GPUs "
            "(default: the real count, or 1).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="HTTP bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    num_cpus: Annotated[
        float | None,
        typer.Option(
            help="CPUs Ray may schedule (default: the machine's, or what the catalog needs)."
        ),
    ] = None,
) -> None:
    """Start a local Ray + the genmedia app on this machine and serve until Ctrl-C."""
    catalog = _load(catalog_file)
    tenants, dev_key = _load_tenants(tenants_file)
    if gpus is not None and gpus < 0:
        raise _fail("--gpus must be >= 0")
    _check_weights(catalog, build_tiny=True)
    _check_acceleration(catalog)
    declared, real_gpus = _local_gpus(gpus)
    cpus = num_cpus or max(float(os.cpu_count() or 1), _cpus_needed(catalog))
    console.print(
        f"starting Ray: {cpus:g} CPUs, {declared:g} GPU(s)"
        + ("" if real_gpus else " (logical: no CUDA device here)")
    )
    from genmedia.deployments.serve import local

    local.start_ray(
        num_cpus=int(cpus + 0.999),
        num_gpus=declared,
        env_vars=ingress_env(catalog.server.ingress) or None,
    )
    try:
        _deploy(catalog, tenants, host=host, port=port, gpus_available=declared > 0)
        _print_serving(catalog, f"http://{host}:{port}", dev_key)
        _wait_for_stop()
    finally:
        console.print("shutting down")
        local.stop()


@app.command()
def deploy(
    address: Annotated[
        str, typer.Option(help="Ray cluster address (e.g. ray://head:10001 or auto).")
    ],
    catalog_file: CatalogOpt = None,
    tenants_file: TenantsOpt = None,
    check_weights: Annotated[
        bool,
        typer.Option(
            help="Check the weights from this machine "
            "first (local paths must then exist here too; "
            "tiny:// models build here)."
        ),
    ] = True,
    insecure_dev: Annotated[
        bool,
        typer.Option(
            "--insecure-dev",
            help="Without --tenants, serve the development tenant (one key, every model) on "
            "the cluster's address: for a throw-away test cluster only.",
        ),
    ] = False,
) -> None:
    """Deploy the genmedia app onto a running Ray cluster."""
    if tenants_file is None and not insecure_dev:
        raise _fail(
            "deploy needs --tenants FILE (make one with `genmedia tenants create`); "
            "--insecure-dev serves the development tenant instead, on 0.0.0.0"
        )
    catalog = _load(catalog_file)
    tenants, dev_key = _load_tenants(tenants_file)
    if check_weights:
        _check_weights(catalog, build_tiny=True)
    from genmedia.deployments.serve.local import cluster_gpus, connect, reachable

    problem = reachable(address, timeout_s=5.0)
    if problem is not None:
        raise _fail(f"cannot reach the Ray cluster at {address}: {problem}")
    try:
        connect(address)
    except Exception as e:
        raise _fail(f"cannot connect to the Ray cluster at {address}: {e}") from None
    _check_ingress(catalog)
    gpus_available = cluster_gpus() > 0
    _deploy(catalog, tenants, host="0.0.0.0", port=8000, gpus_available=gpus_available)
    out.print(f"[bold green]deployed[/] {len(catalog.models)} model(s) to {address}")
    _print_dev_key(dev_key)


def _check_ingress(catalog: Catalog) -> None:
    """``server.ingress`` against what the cluster's Serve will read: HAProxy is switched on by
    the nodes' environment before Ray starts, not by a deploy."""
    from genmedia.deployments.serve.local import node_env

    on = node_env(HAPROXY_ENV) == "1"
    if catalog.server.ingress == "haproxy" and not on:
        raise _fail(
            f"server.ingress is haproxy, but the cluster's nodes lack {HAPROXY_ENV}=1: set it "
            "in every node's environment before Ray starts (the RayService `genmedia infra "
            "render` writes does), or set server.ingress: serve-proxy"
        )
    if catalog.server.ingress == "serve-proxy" and on:
        out.print(f"[yellow]note[/]: the cluster's nodes set {HAPROXY_ENV}=1: HAProxy takes HTTP")


@app.command()
def status(
    address: Annotated[str, typer.Option(help="Ray cluster address.")] = "auto",
) -> None:
    """Show deployments, replicas, GPU shares and loaded models of a running genmedia app."""
    from genmedia.deployments.serve.app import APP_NAME
    from genmedia.deployments.serve.local import app_state, connect, deployment_info

    try:
        connect(address, logging_level=logging.ERROR)
    except Exception as e:
        raise _fail(f"no Ray cluster at {address!r}: {e}") from None
    state = app_state()
    if state is None:
        raise _fail(f"no '{APP_NAME}' application on this cluster (genmedia serve / deploy)")
    table = Table(
        "deployment",
        "status",
        "replicas",
        "GPU / replica",
        "CPU / replica",
        "GPU ids",
        "loaded models",
        title=f"{APP_NAME}: {state.status}",
    )
    for name, dep in sorted(state.deployments.items()):
        replicas = ", ".join(f"{k.lower()}: {v}" for k, v in dep.replicas.items())
        gpu = cpu = ids = loaded = "-"
        try:
            info = deployment_info(name)
            res = info["resources"]
            gpu, cpu = f"{res.get('GPU', 0):g}", f"{res.get('CPU', 0):g}"
            ids = ",".join(info["gpu_ids"]) or "-"
            loaded = ", ".join(info.get("loaded", [])) or "-"
        except Exception as e:
            loaded = f"? ({type(e).__name__})"
        table.add_row(name, dep.status, replicas or "0", gpu, cpu, ids, loaded)
    out.print(table)


def main() -> None:
    # Library progress bars and warnings would drown ours (rich) on the operator's terminal.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except PlotsUnavailable as e:  # a load-test report without the 'loadtest' extra
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
