"""Retention: deleting what is older than the catalog's ``server.retention`` says, rows and files
together.

Runs beside the request path, not on it: the scheduler starts ``run_sweeper`` (one sweep every
``sweep_interval_s``, each in a thread, each doing at most ``max_per_sweep`` deletions per
class) and ``genmedia store gc`` runs one ``Sweeper.sweep`` by hand (``--dry-run`` lists). Classes:

- jobs: a finished job's row, its outputs and its inline input images, ``jobs_hours`` after it
  finished (files first, then the row; a crash between leaves a row whose files are gone, which
  the next sweep deletes). Jobs whose webhook is still owed wait. The store's usage totals are
  kept: deleting rows never changes what ``/v1/usage`` answers;
- outputs: a completed job's files ``outputs_hours`` after it finished when that is sooner than
  ``jobs_hours``; its result then carries ``outputs_deleted_at``;
- uploads: files under ``<tenant>/uploads/`` older than ``uploads_hours``;
- inputs: inline images under ``<tenant>/inputs/<request id>/`` older than ``uploads_hours``
  whose job is finished or unknown (a refused request whose files could not be deleted);
- idempotency keys: forgotten ``idempotency_keys_hours`` after their submit (the job stays).

Local directories and S3 go through the same ``Storage`` interface (list, delete); an S3
bucket's lifecycle rules (``infra/render.py``, ``s3-lifecycle``) expire by the same classes as a
backstop. No Ray imports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from genmedia.deployments.protocol import TERMINAL, JobStatus
from genmedia.deployments.store.jobs import JobRecord
from genmedia.deployments.store.outputs import output_prefix
from genmedia.deployments.store.storage import (
    INPUTS,
    UPLOADS,
    Storage,
    StoredObject,
    make_storage,
)
from genmedia.models.catalog import Catalog
from genmedia.models.server_config import RetentionSettings

logger = logging.getLogger(__name__)
HOUR = 3600.0
CLASSES = ("jobs", "outputs", "uploads", "inputs", "idempotency_keys", "webhooks")
BACKLOG_PAUSE_S = 1.0  # between two sweeps while the last one hit max_per_sweep


class RetentionStore(Protocol):
    """What retention needs of a job store (``SQLJobStore`` has it)."""

    def expired_jobs(self, finished_before: float, limit: int) -> list[JobRecord]: ...

    def delete_jobs(self, job_ids: list[str]) -> int: ...

    def outputs_to_expire(self, finished_before: float, limit: int) -> list[JobRecord]: ...

    def mark_outputs_deleted(self, job_ids: list[str], at: float) -> None: ...

    def expire_idempotency_keys(
        self, submitted_before: float, limit: int, dry_run: bool = False
    ) -> int: ...

    def statuses(self, job_ids: list[str]) -> dict[str, JobStatus]: ...

    def prune_webhooks(self, finished_before: float, limit: int) -> int: ...


@dataclass
class ClassReport:
    """What one sweep deleted (or, dry, would delete) of one class."""

    items: int = 0  # jobs, files or keys
    files: int = 0
    bytes: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, item: str, objs: Iterable[StoredObject] = (), count_item: bool = True) -> None:
        if count_item:
            self.items += 1
        for o in objs:
            self.files += 1
            self.bytes += o.size
        if len(self.examples) < 3:
            self.examples.append(item)


@dataclass
class SweepReport:
    """One sweep: per class what went, whether work is left, and what failed."""

    dry_run: bool
    classes: dict[str, ClassReport] = field(
        default_factory=lambda: {c: ClassReport() for c in CLASSES}
    )
    more: bool = False  # a class hit the per-sweep bound: sweep again soon
    errors: list[str] = field(default_factory=list)
    jobs_seen: set[str] = field(default_factory=set)  # a dry run counts each job once

    @property
    def total_items(self) -> int:
        return sum(c.items for c in self.classes.values())


def job_output_prefixes(rec: JobRecord) -> list[str]:
    """Where a job's outputs may be: the folders its result names, and for a job without one
    (failed, cancelled: a partial write) the folders of the days it ran on."""
    prefixes: set[str] = set()
    for out in (rec.result or {}).get("images", []):
        key = out.get("key") if isinstance(out, dict) else None
        if key and "/" in key:
            prefixes.add(key.rsplit("/", 1)[0] + "/")
    if not prefixes:
        for t in (rec.submitted_at, rec.started_at, rec.finished_at):
            if t is not None:
                prefixes.add(f"{rec.tenant}/{output_prefix(rec.id, t)}/")
    return sorted(prefixes)


def job_input_prefix(rec: JobRecord) -> str:
    return f"{rec.tenant}/{INPUTS}/{rec.id}/"


class Sweeper:
    """One sweep over the store and the storage (blocking: run it in a thread)."""

    def __init__(
        self,
        store: RetentionStore,
        storage: Storage,
        settings: RetentionSettings,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.storage = storage
        self.settings = settings
        self.clock = clock

    def sweep(self, dry_run: bool = False, limit: int | None = None) -> SweepReport:
        """Delete (or, dry, list) what is past its time, at most ``limit`` per class."""
        n = limit if limit is not None else self.settings.max_per_sweep
        now = self.clock()
        s = self.settings
        report = SweepReport(dry_run)
        for name, step in (
            ("jobs", lambda: self._jobs(now - s.jobs_hours * HOUR, n, report)),
            ("outputs", lambda: self._outputs(now, n, report)),
            ("uploads", lambda: self._uploads(now - s.uploads_hours * HOUR, n, report)),
            ("inputs", lambda: self._inputs(now - s.uploads_hours * HOUR, n, report)),
            (
                "idempotency_keys",
                lambda: self._keys(now - s.idempotency_keys_hours * HOUR, n, report),
            ),
            # delivered or failed webhook events, kept as long as their jobs
            ("webhooks", lambda: self._webhooks(now - s.jobs_hours * HOUR, n, report)),
        ):
            try:
                step()
            except Exception as e:  # one class failing (S3 down) does not stop the others
                report.errors.append(f"{name}: {type(e).__name__}: {e}")
        return report

    # -- classes -----------------------------------------------------------------------------
    def _delete(self, objs: list[StoredObject], dry_run: bool) -> None:
        if not dry_run:
            for o in objs:
                self.storage.delete(o.key)

    def _files(self, prefixes: Iterable[str]) -> list[StoredObject]:
        return [o for p in prefixes for o in self.storage.list_files(p)]

    def _jobs(self, cutoff: float, limit: int, report: SweepReport) -> None:
        recs = self.store.expired_jobs(cutoff, limit)
        cls = report.classes["jobs"]
        for rec in recs:
            objs = self._files([*job_output_prefixes(rec), job_input_prefix(rec)])
            self._delete(objs, report.dry_run)
            cls.add(rec.id, objs)
            report.jobs_seen.add(rec.id)
        if recs and not report.dry_run:
            self.store.delete_jobs([r.id for r in recs])
        report.more |= len(recs) >= limit

    def _outputs(self, now: float, limit: int, report: SweepReport) -> None:
        s = self.settings
        if s.outputs_hours >= s.jobs_hours:
            return  # outputs go with their job's row
        recs = self.store.outputs_to_expire(now - s.outputs_hours * HOUR, limit)
        cls = report.classes["outputs"]
        done = []
        for rec in recs:
            if rec.id in report.jobs_seen:
                continue
            objs = self._files(job_output_prefixes(rec))
            self._delete(objs, report.dry_run)
            cls.add(rec.id, objs)
            done.append(rec.id)
        if done and not report.dry_run:
            self.store.mark_outputs_deleted(done, now)
        report.more |= len(recs) >= limit

    def _uploads(self, cutoff: float, limit: int, report: SweepReport) -> None:
        cls = report.classes["uploads"]
        for tenant in self.storage.children(""):
            for o in self.storage.list_files(f"{tenant}/{UPLOADS}/"):
                if cls.items >= limit:
                    report.more = True
                    return
                if o.modified < cutoff:
                    self._delete([o], report.dry_run)
                    cls.add(o.key, [o])

    def _inputs(self, cutoff: float, limit: int, report: SweepReport) -> None:
        cls = report.classes["inputs"]
        for tenant in self.storage.children(""):
            old: dict[str, list[StoredObject]] = {}
            for o in self.storage.list_files(f"{tenant}/{INPUTS}/"):
                parts = o.key.split("/")
                if len(parts) >= 4 and o.modified < cutoff:
                    old.setdefault(parts[2], []).append(o)
            if not old:
                continue
            states = self.store.statuses(list(old))
            for job_id, objs in old.items():
                if job_id in states and states[job_id] not in TERMINAL:
                    continue  # still queued or running: the worker needs them
                if job_id in report.jobs_seen:
                    continue
                if cls.items >= limit:
                    report.more = True
                    return
                self._delete(objs, report.dry_run)
                cls.add(f"{tenant}/{INPUTS}/{job_id}/", objs)

    def _webhooks(self, cutoff: float, limit: int, report: SweepReport) -> None:
        if report.dry_run:
            return
        n = self.store.prune_webhooks(cutoff, limit)
        report.classes["webhooks"].items = n
        report.more |= n >= limit

    def _keys(self, cutoff: float, limit: int, report: SweepReport) -> None:
        n = self.store.expire_idempotency_keys(cutoff, limit, dry_run=report.dry_run)
        report.classes["idempotency_keys"].items = n
        report.more |= n >= limit


def sweeper_for(
    catalog: Catalog, store: RetentionStore, clock: Callable[[], float] = time.time
) -> Sweeper:
    """The sweeper of a catalog's retention settings over its storage and a job store."""
    storage = make_storage(catalog.server.storage, catalog.resolve_path)
    return Sweeper(store, storage, catalog.server.retention, clock)


async def run_sweeper(sweeper: Sweeper, first_after_s: float = 60.0) -> None:
    """Sweep forever: the first sweep ``first_after_s`` after start, then every
    ``sweep_interval_s`` (sooner while a sweep left work). Failures are logged, never raised."""
    interval_s = sweeper.settings.sweep_interval_s
    await asyncio.sleep(min(first_after_s, interval_s))
    while True:
        try:
            report = await asyncio.to_thread(sweeper.sweep)
        except Exception:
            logger.exception("retention sweep failed")
            await asyncio.sleep(interval_s)
            continue
        if report.total_items:
            summary = ", ".join(
                f"{c.items} {name}" for name, c in report.classes.items() if c.items
            )
            logger.info("retention sweep deleted %s", summary)
        for err in report.errors:
            logger.warning("retention sweep: %s", err)
        await asyncio.sleep(BACKLOG_PAUSE_S if report.more else interval_s)
