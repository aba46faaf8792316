"""The ``genmedia`` command: serve, deploy, status, catalog validation, tiny model builds.

Where an operator starts: every command validates its input first and prints clear errors (file,
model, field) instead of tracebacks; long work shows rich progress.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from genmedia.deployments.cli.infra import infra_app
from genmedia.deployments.cli.tenants import tenants_app
from genmedia.deployments.tenants.config import (
    TenantsError,
    TenantsFile,
    development_tenants,
    load_tenants,
)
from genmedia.loadtests.loadtest_cli import loadtest_app
from genmedia.loadtests.sim.cli import sim as sim_command
from genmedia.models.catalog import Catalog, CatalogError, load_catalog

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
app.add_typer(infra_app)  # plan, render
app.add_typer(loadtest_app, name="loadtest")
app.command("sim")(sim_command)

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
def _wait_for_app(catalog: Catalog, runner: threading.Thread, errors: list) -> None:
    from ray import serve

    from genmedia.deployments.serve.app import APP_NAME

    with _progress() as progress:
        task = progress.add_task("starting deployments", total=len(catalog.families()) + 2)
        while runner.is_alive():
            try:
                status = serve.status().applications.get(APP_NAME)
            except Exception:
                status = None
            if status is not None:
                running = sum(
                    1 for d in status.deployments.values() if str(d.status).endswith("HEALTHY")
                )
                states = ", ".join(
                    f"{n}: {str(d.status).split('.')[-1].lower()}"
                    for n, d in sorted(status.deployments.items())
                )
                progress.update(task, completed=running, description=states or "deploying")
            time.sleep(0.5)
        progress.update(task, completed=len(catalog.families()) + 2, description="deployed")
    if errors:
        raise _fail(f"deployment failed: {errors[0]}")


def _run_app(
    catalog: Catalog, tenants: TenantsFile, *, host: str, port: int, gpus_available: bool
) -> None:
    from ray import serve

    from genmedia.deployments.serve.app import APP_NAME, build_app

    errors: list = []

    def deploy() -> None:
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(
                build_app(catalog, tenants, gpus_available=gpus_available),
                name=APP_NAME,
                route_prefix="/",
                blocking=False,
            )
        except Exception as e:
            errors.append(e)

    runner = threading.Thread(target=deploy, daemon=True)
    runner.start()
    _wait_for_app(catalog, runner, errors)


def _cpus_needed(catalog: Catalog) -> float:
    from genmedia.deployments.serve.app import plan_workers

    workers = sum(p.num_cpus * max(1, p.min_replicas) for p in plan_workers(catalog))
    server = catalog.server
    return workers + server.gateway_num_cpus * server.gateway_replicas + server.scheduler_num_cpus


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
    import ray
    from ray import serve as rs

    from genmedia.deployments.cli.preflight import check_acceleration
    from genmedia.models.runner import pick_device

    problems = check_acceleration(catalog, pick_device())
    if problems:
        for p in problems:
            console.print(f"[red]✗[/] {p}", highlight=False)
        raise _fail(f"{len(problems)} acceleration option(s) this machine cannot run")

    real_gpus = 1 if pick_device() == "cuda" else 0
    if real_gpus:
        import torch

        real_gpus = torch.cuda.device_count()
    declared = gpus if gpus is not None else (real_gpus or 1)
    cpus = num_cpus or max(float(os.cpu_count() or 1), _cpus_needed(catalog))
    console.print(
        f"starting Ray: {cpus:g} CPUs, {declared:g} GPU(s)"
        + ("" if real_gpus else " (logical: no CUDA device here)")
    )
    # Ray starts workers at nice 15; on a CPU-only box that lets any busy process slow the
    # pipeline. Replicas here are the work, so they run at normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        num_cpus=int(cpus + 0.999),
        num_gpus=declared,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        _run_app(catalog, tenants, host=host, port=port, gpus_available=declared > 0)
        url = f"http://{host}:{port}"
        first = catalog.models[0].id
        out.print(
            f"\n[bold green]genmedia is serving[/] {len(catalog.models)} model(s) at "
            f"[bold]{url}[/]  (docs: {url}/docs)"
        )
        if dev_key:
            out.print(f"development API key (tenant 'dev'): [bold]{dev_key}[/]")
            out.print(f"  export GENMEDIA_API_KEY={dev_key}")
        auth = '-H "Authorization: Bearer $GENMEDIA_API_KEY"'
        out.print(f"  curl -s {auth} {url}/v1/models")
        out.print(
            f"  curl -s {auth} -X POST {url}/v1/models/{first}/generate "
            "-H 'content-type: application/json' -d '{\"prompt\": \"a red fox\"}'"
        )
        out.print("Ctrl-C stops.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        console.print("shutting down")
        try:
            rs.shutdown()
        finally:
            ray.shutdown()


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
) -> None:
    """Deploy the genmedia app onto a running Ray cluster."""
    catalog = _load(catalog_file)
    tenants, dev_key = _load_tenants(tenants_file)
    if check_weights:
        _check_weights(catalog, build_tiny=True)
    import ray

    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except Exception as e:
        raise _fail(f"cannot connect to the Ray cluster at {address}: {e}") from None
    gpus = ray.cluster_resources().get("GPU", 0)
    _run_app(catalog, tenants, host="0.0.0.0", port=8000, gpus_available=gpus > 0)
    out.print(f"[bold green]deployed[/] {len(catalog.models)} model(s) to {address}")
    if dev_key:
        out.print(f"development API key (tenant 'dev'): [bold]{dev_key}[/]")


@app.command()
def status(
    address: Annotated[str, typer.Option(help="Ray cluster address.")] = "auto",
) -> None:
    """Show deployments, replicas, GPU shares and loaded models of a running genmedia app."""
    import ray
    from ray import serve as rs

    from genmedia.deployments.serve.app import APP_NAME

    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as e:
        raise _fail(f"no Ray cluster at {address!r}: {e}") from None
    app_status = rs.status().applications.get(APP_NAME)
    if app_status is None:
        raise _fail(f"no '{APP_NAME}' application on this cluster (genmedia serve / deploy)")
    table = Table(
        "deployment",
        "status",
        "replicas",
        "GPU / replica",
        "CPU / replica",
        "GPU ids",
        "loaded models",
        title=f"{APP_NAME}: {str(app_status.status).split('.')[-1]}",
    )
    for name, dep in sorted(app_status.deployments.items()):
        replicas = ", ".join(
            f"{str(k).split('.')[-1].lower()}: {v}" for k, v in dep.replica_states.items()
        )
        gpu = cpu = ids = loaded = "-"
        try:
            info = rs.get_deployment_handle(name, APP_NAME).info.remote().result(timeout_s=10)
            res = info["resources"]
            gpu, cpu = f"{res.get('GPU', 0):g}", f"{res.get('CPU', 0):g}"
            ids = ",".join(info["gpu_ids"]) or "-"
            loaded = ", ".join(info.get("loaded", [])) or "-"
        except Exception as e:
            loaded = f"? ({type(e).__name__})"
        table.add_row(name, str(dep.status).split(".")[-1], replicas or "0", gpu, cpu, ids, loaded)
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


if __name__ == "__main__":
    main()
