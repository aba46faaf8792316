"""The gateway's parse process: a large body parsed there answers what a parse in the gateway
answers (the model, a 400 or a 422 naming the field, another API's error shape), a lost child
is replaced while the body at hand parses on a thread, the child ends with its parent, and the
service sends each body to the inline, thread or process parse by its size."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from genmedia.deployments.api.schemas import BulkSubmitBody
from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.bodies import (
    INLINE_BODY_BYTES,
    SMALL_BODY_BYTES,
    parse_json,
)
from genmedia.deployments.intake.openai_images import validation_error
from genmedia.deployments.intake.parse_pool import ParsePool
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.schema import parse_tenants
from genmedia.models.catalog import load_catalog
from genmedia.models.params import GenerateRequest
from tests.unit.deployments.fakes import FakeScheduler

LORAS = {"prompt": "x", "loras": [{"id": f"adapter-{i}"} for i in range(20_000)]}
HOSTILE: list[tuple[type[BaseModel], bytes]] = [
    (GenerateRequest, json.dumps(LORAS).encode()),
    (GenerateRequest, json.dumps({"prompt": "x", **{f"k{i}": i for i in range(50_000)}}).encode()),
    (GenerateRequest, b"[" * 50_000 + b"]" * 50_000),
    (GenerateRequest, json.dumps({"prompt": "p" * 200_000}).encode()),
    (BulkSubmitBody, json.dumps({"requests": [{"prompt": "x"}] * 10_001}).encode()),
]


@pytest.fixture(scope="module")
def pool() -> Iterator[ParsePool]:
    threads = ThreadPoolExecutor(1)
    p = ParsePool(fallback=threads)
    yield p
    p.shutdown()
    threads.shutdown()


def in_gateway(raw: bytes, model: type[BaseModel], on_errors: Any = None) -> Any:
    try:
        return parse_json(raw, model, on_errors)
    except ApiError as e:
        return (e.status, e.type, e.message, e.fields, e.headers)


def in_pool(pool: ParsePool, raw: bytes, model: type[BaseModel], on_errors: Any = None) -> Any:
    try:
        return asyncio.run(pool.parse(raw, model, on_errors))
    except ApiError as e:
        return (e.status, e.type, e.message, e.fields, e.headers)


@pytest.mark.parametrize(("model", "raw"), HOSTILE)
def test_a_large_body_parsed_apart_answers_as_in_the_gateway(pool, model, raw):
    assert len(raw) > SMALL_BODY_BYTES
    answer = in_pool(pool, raw, model)
    assert answer == in_gateway(raw, model)
    assert isinstance(answer, tuple) and answer[0] in (400, 422)
    assert len(pool.pids()) == 1 and pool.started == 1  # one child serves them all


def test_a_valid_large_body_comes_back_as_the_model(pool):
    raw = json.dumps({"requests": [{"prompt": f"job {i}"} for i in range(5_000)]}).encode()
    body = in_pool(pool, raw, BulkSubmitBody)
    assert isinstance(body, BulkSubmitBody) and body == parse_json(raw, BulkSubmitBody)
    image = json.dumps({"prompt": "x", "image": "A" * 1_000_000}).encode()
    assert in_pool(pool, image, GenerateRequest) == parse_json(image, GenerateRequest)


def test_another_apis_error_shape_is_made_in_the_child(pool):
    raw = json.dumps({"model": "m", "prompt": "x", "n": "many", "pad": "y" * 100_000}).encode()
    from genmedia.deployments.intake.openai_images import ImageGenerationRequest

    answer = in_pool(pool, raw, ImageGenerationRequest, validation_error)
    assert answer == in_gateway(raw, ImageGenerationRequest, validation_error)
    assert answer[0] == 400


def test_a_lost_child_is_replaced_and_the_body_parses_on_a_thread():
    threads = ThreadPoolExecutor(1)
    pool = ParsePool(fallback=threads)
    raw = HOSTILE[0][1]
    try:
        first = in_pool(pool, raw, GenerateRequest)
        (pid,) = pool.pids()
        os.kill(pid, 9)
        time.sleep(0.2)
        assert in_pool(pool, raw, GenerateRequest) == first  # on the fallback thread
        assert in_pool(pool, raw, GenerateRequest) == first  # in a new child
        assert pool.started == 2 and pool.pids() and pool.pids() != [pid]
    finally:
        pool.shutdown()
        threads.shutdown()
    assert pool.pids() == []


CHILD_OF_A_KILLED_PARENT = """
import asyncio, json, os, sys
from concurrent.futures import ThreadPoolExecutor
from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.parse_pool import ParsePool
from genmedia.models.params import GenerateRequest

if __name__ == "__main__":
    pool = ParsePool(ThreadPoolExecutor(1))
    raw = json.dumps({"prompt": "x", "loras": [{"id": str(i)} for i in range(20_000)]}).encode()
    try:
        asyncio.run(pool.parse(raw, GenerateRequest))
    except ApiError:
        pass
    print(pool.pids()[0], flush=True)
    os.kill(os.getpid(), 9)
"""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_child_ends_when_the_gateway_is_killed(tmp_path):
    script = tmp_path / "gateway.py"
    script.write_text(CHILD_OF_A_KILLED_PARENT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def make_service(tmp_path: Path) -> GatewayService:
    tenants = parse_tenants({"tenants": [{"id": "dev", "api_keys": []}]})
    storage = LocalDirStorage(tmp_path)
    return GatewayService(
        load_catalog(), FakeScheduler(storage), Authenticator(tenants), storage=storage
    )


def test_a_service_made_in_a_replica_starts_its_child_at_once(tmp_path):
    """In a Serve replica (a loop runs) the child starts with the service, not amid traffic."""

    async def in_replica() -> GatewayService:
        return make_service(tmp_path)

    service = asyncio.run(in_replica())
    try:
        assert service.parse_pool.started == 1 and len(service.parse_pool.pids()) == 1
    finally:
        service.close()
    assert service.parse_pool.pids() == []


def test_the_service_parses_by_size(tmp_path):
    service = make_service(tmp_path)  # made outside a loop: the child starts when needed

    async def parse(raw: bytes) -> Any:
        try:
            return await service.parse_body(raw, GenerateRequest)
        except ApiError as e:
            return e.status

    tiny = json.dumps({"prompt": "a fox"}).encode()
    mid = json.dumps({"prompt": "a fox " * 2_000}).encode()
    try:
        assert len(tiny) <= INLINE_BODY_BYTES < len(mid) <= SMALL_BODY_BYTES
        assert asyncio.run(parse(tiny)) == GenerateRequest(prompt="a fox")
        assert asyncio.run(parse(mid)).prompt.startswith("a fox")
        assert asyncio.run(parse(b'{"prompt": 1')) == 400
        assert service.parse_pool.started == 0  # no process for small bodies
        assert asyncio.run(parse(HOSTILE[0][1])) == 422
        assert service.parse_pool.started == 1
    finally:
        service.close()
