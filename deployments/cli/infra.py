"""CLI for deploy planning: ``genmedia plan`` (GPU packing) and ``genmedia render`` (infra/).

Both read a catalog and run before anything is deployed; neither starts Ray. Registered in
``main.py`` with one ``add_typer`` line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from genmedia.autoscaling.placement import PlacementError, plan_placement
from genmedia.autoscaling.policy import PolicyConfig, zero_blockers
from genmedia.models.catalog import Catalog

if TYPE_CHECKING:
    from genmedia.infra.render import Cluster

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 200)
infra_app = typer.Typer(no_args_is_help=True)

CatalogOpt = Annotated[
    Path | None,
    typer.Option(
        "--catalog", "-c", help="Catalog YAML file (default: the embedded catalog of tiny models)."
    ),
]
DEFAULT_GPU_MEMORY_GB = 24.0


def _fail(message: str) -> typer.Exit:
    from genmedia.deployments.cli.main import _fail as fail  # one error style for the whole CLI

    return fail(message)


def _catalog(path: Path | None) -> Catalog:
    from genmedia.deployments.cli.main import _load

    return _load(path)


@infra_app.command("plan")
def plan(
    gpus: Annotated[int, typer.Option("--gpus", min=0, help="GPUs in the cluster.")],
    gpu_memory_gb: Annotated[
        float, typer.Option("--gpu-memory-gb", min=0.001, help="Memory of one GPU, GiB.")
    ] = DEFAULT_GPU_MEMORY_GB,
    catalog_file: CatalogOpt = None,
) -> None:
    """Pack the catalog's worker replicas onto GPUs and show which models share each GPU."""
    catalog = _catalog(catalog_file)
    try:
        placement = plan_placement(catalog, gpus, gpu_memory_gb)
    except PlacementError as e:
        for issue in e.issues:
            console.print(f"[red]✗[/] {catalog.source}: {issue}", highlight=False)
        raise _fail(f"the catalog does not fit {gpus} GPU(s) of {gpu_memory_gb:g} GiB") from None
    shapes = placement.shapes
    table = Table(
        "GPU", "replicas (models)", "GPU share", "memory GiB", title="minimum replicas per GPU"
    )
    for gpu in placement.gpus:
        names = [f"{f} #{n} ({', '.join(shapes[f].model_ids)})" for f, n in gpu.replicas]
        table.add_row(
            str(gpu.index),
            "\n".join(names),
            f"{gpu.fraction:.3g}",
            f"{gpu.memory_gb:.3g} / {gpu_memory_gb:g}",
        )
    out.print(table)
    config = PolicyConfig.from_catalog(catalog, gpus, gpu_memory_gb)
    fam = Table(
        "family",
        "GPU / replica",
        "GiB / replica",
        "min",
        "max",
        "max that fits",
        "scale to zero",
        title="family workers",
    )
    for f, s in shapes.items():
        blockers = zero_blockers(config, f)
        fam.add_row(
            f,
            f"{s.gpu_fraction:g}",
            f"{s.memory_gb:g}",
            str(s.min_replicas),
            str(s.max_replicas),
            str(placement.reachable_max[f]),
            "yes" if not blockers else "no: " + "; ".join(blockers),
        )
    out.print(fam)
    out.print(
        f"[green]✓[/] minimum replicas fit on {len(placement.gpus)} of {gpus} GPU(s) "
        f"of {gpu_memory_gb:g} GiB"
    )


@infra_app.command("render")
def render_cmd(
    target: Annotated[
        str,
        typer.Argument(
            help="serve-config | kuberay | dockerfile | prometheus | grafana | s3-lifecycle "
            "(S3 storage only) | all"
        ),
    ],
    catalog_file: CatalogOpt = None,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="File to write (a directory for 'all'; default: stdout)."),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus", min=1, help="GPU budget (default: what every family at max replicas needs)."
        ),
    ] = None,
    gpu_memory_gb: Annotated[
        float, typer.Option("--gpu-memory-gb", min=0.001, help="Memory of one GPU, GiB.")
    ] = DEFAULT_GPU_MEMORY_GB,
    variant: Annotated[str, typer.Option(help="Dockerfile variant: cpu | cuda.")] = "cpu",
    knob: Annotated[
        list[str] | None,
        typer.Option(
            "--knob",
            help="NAME=VALUE: an autoscaling policy knob (repeatable), e.g. "
            "replica_start_s=60 for the cluster's measured replica start time.",
        ),
    ] = None,
    job_store: Annotated[
        str | None,
        typer.Option(
            "--job-store",
            help="postgresql://USER@HOST:PORT/DB[?sslmode=require]: keep jobs in this "
            "PostgreSQL database (no password in the URL) instead of the catalog's job_store; "
            "the pods read the password from --job-store-secret and one standby scheduler "
            "runs (server.scheduler.standby at least 1).",
        ),
    ] = None,
    job_store_secret: Annotated[
        str,
        typer.Option(
            "--job-store-secret",
            help="NAME[:KEY]: the Kubernetes Secret (key; default 'password') holding the "
            "PostgreSQL job store's password, set on the pods as the variable "
            "server.scheduler.job_store_password_env names (kuberay).",
        ),
    ] = "genmedia-job-store:password",
    url_secret: Annotated[
        str,
        typer.Option(
            "--url-secret",
            help="NAME[:KEY]: the Kubernetes Secret (key; default 'secret') holding the "
            "output URL signing secret, set on the pods as GENMEDIA_URL_SECRET (kuberay; at "
            "least 32 characters, e.g. openssl rand -hex 32).",
        ),
    ] = "genmedia-url-secret:secret",
) -> None:
    """Render a deploy artifact from the catalog (the files under infra/ are made this way)."""
    from genmedia.infra.render import TARGETS, Cluster, RenderError, SecretRef, gpus_for_max

    if target not in (*TARGETS, "all"):
        raise _fail(f"unknown render target {target!r}; known: {', '.join(TARGETS)}, all")
    catalog = _catalog(catalog_file)
    overrides = _knob_overrides(knob or [])
    try:
        store_ref = SecretRef.parse(job_store_secret, "password")
        url_ref = SecretRef.parse(url_secret, "secret")
    except RenderError as e:
        raise _fail(str(e)) from None
    cluster = Cluster(
        gpus or gpus_for_max(catalog, gpu_memory_gb),
        gpu_memory_gb,
        policy_knobs=overrides,
        job_store=job_store,
        job_store_secret=store_ref,
        url_secret=url_ref,
    )
    _write(target, _render_files(target, catalog, cluster, variant), out_path)


def _knob_overrides(items: list[str]) -> dict[str, float]:
    """``--knob NAME=VALUE`` items as policy knob overrides, each checked."""
    from genmedia.autoscaling.policy import policy_knobs

    overrides: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--knob {item!r}: expected NAME=VALUE")
        try:
            overrides[name.strip()] = float(value)
        except ValueError:
            raise _fail(f"--knob {item!r}: the value must be a number (NAME=VALUE)") from None
    try:
        policy_knobs(**overrides)
    except ValueError as e:
        raise _fail(f"--knob: {e}") from None
    return overrides


def _render_files(target: str, catalog: Catalog, cluster: Cluster, variant: str) -> dict[str, str]:
    """File name -> text for ``all``; ``{"": text}`` for one target."""
    from genmedia.infra.render import RenderError, render, render_all

    try:
        if target == "all":
            return render_all(catalog, cluster)
        return {"": render(target, catalog, cluster, variant)}
    except PlacementError as e:
        for issue in e.issues:
            console.print(f"[red]✗[/] {catalog.source}: {issue}", highlight=False)
        raise _fail(f"the catalog does not fit {cluster.gpus} GPU(s)") from None
    except RenderError as e:
        raise _fail(str(e)) from None


def _write(target: str, files: dict[str, str], out_path: Path | None) -> None:
    if target == "all":
        if out_path is None:
            raise _fail("'render all' needs --out DIR")
        out_path.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out_path / name).write_text(text)
            console.print(f"wrote {out_path / name}", highlight=False)
    elif out_path is None:
        sys.stdout.write(files[""])
    else:
        out_path.write_text(files[""])
        console.print(f"wrote {out_path}", highlight=False)
