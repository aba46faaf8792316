"""The scheduler's adapter registry with URL sources (``scheduler/adapters.py``): a catalog
entry's URL is fetched when the catalog adapters are checked and workers are given the stored
copy; a registration fetches (or finds the pinned copy), keeps the pinned URL and survives a
restart without a fetch; a URL adapter not fetched yet is refused with 503."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genmedia.deployments.intake.adapter_sources import adapter_key
from genmedia.deployments.protocol import AdapterCheck, AdapterError, AdapterInfo, AdapterRecord
from genmedia.deployments.scheduler.adapters import AdapterRegistry
from genmedia.models.catalog import LoraEntry
from tests.unit.deployments.intake.test_adapter_sources import (
    ADAPTER,
    DIGEST,
    HITS,
    http_server,
    url_catalog,
)
from tests.unit.deployments.store.stores import sqlite_store


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with http_server() as url:
        yield url


class Worker:
    """The worker's check: the file must exist where the registry says."""

    def __init__(self) -> None:
        self.sources: list[str] = []

    async def check(self, base_model: str, source: str) -> AdapterCheck:
        self.sources.append(source)
        if source.startswith("tiny://"):
            return AdapterCheck(AdapterInfo(source, 1, "t", 4, 2))
        path = Path(source)
        if not path.is_file():
            return AdapterCheck(error=f"adapter file {path} does not exist")
        return AdapterCheck(AdapterInfo(source, path.stat().st_size, DIGEST, 4, 1))


def registry(tmp_path: Path, loras: list[dict[str, Any]] | None = None) -> tuple[Any, Worker]:
    catalog = url_catalog(tmp_path / "files", loras)
    worker = Worker()
    store = sqlite_store(tmp_path / "jobs.sqlite")
    return AdapterRegistry(catalog, store, worker.check, clock=lambda: 5.0), worker


def stored(tmp_path: Path) -> Path:
    return (tmp_path / "files" / adapter_key(DIGEST)).resolve()


def test_a_catalog_url_adapter_is_fetched_at_start(tmp_path: Path, server: str) -> None:
    url = f"{server}/a.safetensors"
    reg, worker = registry(tmp_path, [{"id": "u", "base_model": "sd15-tiny", "source": url}])
    pending = reg.rejection("sd15-tiny", (("u", 1.0),))
    assert pending is not None and pending.status == 503 and pending.field == "loras[0].id"
    asyncio.run(reg.check_catalog_adapters())
    record = reg.by_id["u"]
    assert record.status == "ready" and record.source == f"{url}#sha256={DIGEST}"
    assert stored(tmp_path).read_bytes() == ADAPTER
    assert str(stored(tmp_path)) in worker.sources
    assert reg.rejection("sd15-tiny", (("u", 1.0),)) is None
    assert reg.uses("sd15-tiny", (("u", 0.5),))[0].source == str(stored(tmp_path))
    assert record.public(admin=True)["source"].startswith(url)


def test_a_catalog_url_that_is_refused_fails_its_check(tmp_path: Path) -> None:
    bad = {"id": "p", "base_model": "sd15-tiny", "source": "http://10.1.2.3/a.safetensors"}
    reg, _ = registry(tmp_path, [bad])
    asyncio.run(reg.check_catalog_adapters())
    record = reg.by_id["p"]
    assert record.status == "failed" and record.error and record.error.startswith("source:")
    assert "10.1.2.3" in record.error
    refusal = reg.rejection("sd15-tiny", (("p", 1.0),))
    assert refusal is not None and refusal.status == 422


def test_a_registration_keeps_the_pin_and_needs_no_fetch_after_a_restart(
    tmp_path: Path, server: str
) -> None:
    reg, worker = registry(tmp_path)
    HITS.clear()
    spec = LoraEntry(id="r", base_model="sd15-tiny", source=f"{server}/a.safetensors")
    record = asyncio.run(reg.register(spec))
    assert isinstance(record, AdapterRecord), record
    assert record.source.endswith(f"#sha256={DIGEST}") and worker.sources[-1] == str(
        stored(tmp_path)
    )
    again = asyncio.run(reg.register(spec.model_copy(update={"source": record.source})))
    assert isinstance(again, AdapterRecord) and HITS == ["/a.safetensors"]  # pinned: stored
    restarted, _ = registry(tmp_path)
    assert restarted.uses("sd15-tiny", (("r", 1.0),))[0].source == str(stored(tmp_path))


def test_a_refused_registration_names_source(tmp_path: Path, server: str) -> None:
    reg, _ = registry(tmp_path)
    spec = LoraEntry(id="r", base_model="sd15-tiny", source=f"{server}/page.html")
    out = asyncio.run(reg.register(spec))
    assert isinstance(out, AdapterError) and (out.status, out.field) == (422, "source")
    assert "not a safetensors" in out.message and "r" not in reg.by_id
