"""``genmedia store gc`` and ``genmedia store migrate``: the job store by hand, for operators.

Runs beside a deployment (or without one): it opens the catalog's job store and output storage
and deletes what ``server.retention`` says has expired, exactly as the scheduler's sweeper does
(``deployments/store/retention.py``); ``--dry-run`` only lists it. ``migrate`` brings the store
(SQLite file or PostgreSQL) to this code's schema revision. Registered in ``main.py``
with one ``add_typer`` line. Never starts Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from genmedia.deployments.store.retention import CLASSES, SweepReport, sweeper_for
from genmedia.models.catalog import Catalog

if TYPE_CHECKING:
    from genmedia.deployments.store.sql.store import SQLJobStore

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 200)
store_app = typer.Typer(no_args_is_help=True, help="The job store and stored files.")

CatalogOpt = Annotated[
    Path | None,
    typer.Option(
        "--catalog", "-c", help="Catalog YAML file (default: the embedded catalog of tiny models)."
    ),
]
UNITS = {
    "jobs": "jobs",
    "outputs": "jobs",
    "uploads": "files",
    "inputs": "requests",
    "idempotency_keys": "keys",
    "webhooks": "events",
}


def _fail(message: str) -> typer.Exit:
    from genmedia.deployments.cli.main import _fail as fail  # one error style for the whole CLI

    return fail(message)


def _catalog(path: Path | None) -> Catalog:
    from genmedia.deployments.cli.main import _load

    return _load(path)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def report_table(report: SweepReport, catalog: Catalog) -> Table:
    """One row per class: what was (or would be) deleted, and the retention that applies."""
    r = catalog.server.retention
    ttl = {
        "jobs": r.jobs_hours,
        "outputs": r.outputs_hours,
        "uploads": r.uploads_hours,
        "inputs": r.uploads_hours,
        "idempotency_keys": r.idempotency_keys_hours,
        "webhooks": r.jobs_hours,
    }
    title = "would delete (dry run)" if report.dry_run else "deleted"
    table = Table("class", "kept for", "count", "files", "size", "examples", title=title)
    for name in CLASSES:
        c = report.classes[name]
        note = ""
        if name == "outputs" and r.outputs_hours >= r.jobs_hours:
            note = " (with their job)"
        table.add_row(
            name,
            f"{ttl[name]:g} h{note}",
            f"{c.items} {UNITS[name]}",
            str(c.files),
            _size(c.bytes),
            ", ".join(c.examples) + (" …" if c.items > len(c.examples) else ""),
        )
    return table


@store_app.command("gc")
def gc(
    catalog_file: CatalogOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")
    ] = False,
    limit: Annotated[
        int,
        typer.Option("--limit", min=1, help="Most jobs, files or keys deleted per class."),
    ] = 100_000,
) -> None:
    """Delete finished jobs, outputs, uploads, input images and idempotency keys past the
    catalog's server.retention (rows and files together; usage totals are kept)."""
    import sqlalchemy as sa

    from genmedia.deployments.store.open import is_url
    from genmedia.deployments.store.storage import StorageError

    catalog = _catalog(catalog_file)
    settings = catalog.server.scheduler
    if not is_url(settings.job_store):
        path = catalog.resolve_path(settings.job_store)
        if not path.is_file():
            raise _fail(f"no job store at {path} (server.scheduler.job_store of {catalog.source})")
    store = _open(catalog)
    try:
        sweeper = sweeper_for(catalog, store)
        report = sweeper.sweep(dry_run=dry_run, limit=limit)
    except (StorageError, OSError, ValueError, sa.exc.SQLAlchemyError) as e:
        raise _fail(f"store gc: {type(e).__name__}: {e}") from None
    finally:
        store.close()
    out.print(report_table(report, catalog))
    for err in report.errors:
        console.print(f"[red]✗[/] {err}", highlight=False)
    if report.more:
        console.print(f"more is left past --limit {limit}: run it again", highlight=False)
    if report.errors:
        raise _fail(f"{len(report.errors)} class(es) could not be swept")


def _open(catalog: Catalog) -> SQLJobStore:
    """The catalog's job store at this code's schema (upgraded as the scheduler does), or a
    clear error (where, and what is wrong)."""
    import sqlalchemy as sa

    from genmedia.deployments.store.open import JobStoreConfigError, SchemaTooNew, open_store

    where = catalog.server.scheduler.job_store
    try:
        return open_store(catalog.server.scheduler, catalog)
    except (JobStoreConfigError, SchemaTooNew) as e:
        raise _fail(str(e)) from None
    except sa.exc.SQLAlchemyError as e:
        raise _fail(f"cannot open the job store {where}: {type(e).__name__}: {e}") from None


@store_app.command("migrate")
def migrate(catalog_file: CatalogOpt = None) -> None:
    """Upgrade the catalog's job store (server.scheduler.job_store: a SQLite file or a
    PostgreSQL database) to this genmedia's schema revision; a store a newer genmedia upgraded
    is refused. The scheduler does the same at start."""
    import sqlalchemy as sa

    from genmedia.deployments.store.open import JobStoreConfigError, engine_for, store_url
    from genmedia.deployments.store.sql import schema

    catalog = _catalog(catalog_file)
    settings = catalog.server.scheduler
    try:
        engine = engine_for(store_url(settings, catalog.resolve_path))
    except JobStoreConfigError as e:
        raise _fail(str(e)) from None
    where = engine.url.render_as_string(hide_password=True)
    try:
        before = schema.upgrade(engine)
    except schema.SchemaTooNew as e:
        raise _fail(str(e)) from None
    except sa.exc.SQLAlchemyError as e:
        raise _fail(f"cannot migrate the job store {where}: {type(e).__name__}: {e}") from None
    finally:
        engine.dispose()
    if before.current:
        out.print(f"job store {where} is at schema revision {before.head} (current)")
    else:
        start = before.store or "unversioned"
        out.print(f"job store {where}: schema revision {start} -> {before.head}")
