"""The API's OpenAPI document and response models: every /v1 answer has a schema, every error
the ErrorBody schema, and checking answers against the models keeps their keys and values."""

from __future__ import annotations

from dataclasses import replace

import pytest

from genmedia.deployments.protocol import JobError, JobStatus
from genmedia.deployments.store.storage import LocalDirStorage
from tests.unit.deployments.api.test_api import make_client, post
from tests.unit.deployments.fakes import FakeScheduler

ERROR_REF = "#/components/schemas/ErrorBody"
OPENAI_ERROR_REF = "#/components/schemas/OpenAIErrorBody"  # the OpenAI-compatible routes


@pytest.fixture
def storage(tmp_path):
    return LocalDirStorage(tmp_path)


@pytest.fixture
def scheduler(storage):
    return FakeScheduler(storage)


@pytest.fixture
def client(scheduler, storage):
    return make_client(scheduler, storage)


@pytest.fixture
def spec(client) -> dict:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _v1_operations(spec: dict) -> list[tuple[str, str, dict]]:
    ops = [
        (method.upper(), path, op)
        for path, methods in spec["paths"].items()
        if path.startswith("/v1/")
        for method, op in methods.items()
    ]
    assert len(ops) >= 14
    return ops


def test_every_v1_answer_has_a_schema(spec):
    for method, path, op in _v1_operations(spec):
        success = {c: r for c, r in op["responses"].items() if c.startswith("2")}
        assert success, f"{method} {path} documents no 2xx answer"
        for code, response in success.items():
            content = response.get("content")
            assert content, f"{method} {path} {code} has no content"
            for media_type, body in content.items():
                assert body.get("schema"), f"{method} {path} {code} {media_type}: empty schema"


def test_every_v1_error_is_the_error_body(spec):
    for method, path, op in _v1_operations(spec):
        errors = {c: r for c, r in op["responses"].items() if c[0] in "45"}
        assert "401" in errors, f"{method} {path} does not document 401"
        for code, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            want = OPENAI_ERROR_REF if path.startswith("/v1/images/") else ERROR_REF
            assert schema == {"$ref": want}, f"{method} {path} {code}: {schema}"
            assert response["description"], f"{method} {path} {code} says nothing"
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorDetail"]["required"]) == {"type", "message", "fields"}


def test_bearer_scheme_is_declared(spec):
    assert spec["components"]["securitySchemes"]["APIKey"]["scheme"] == "bearer"
    for method, path, op in _v1_operations(spec):
        assert op.get("security") == [{"APIKey": []}], f"{method} {path}"


def test_answers_keep_nulls_and_leave_out_unset_keys(client, scheduler):
    rid = post(client, seed=3).json()["request_id"]
    done = scheduler.jobs[rid]
    scheduler.jobs[rid] = replace(
        done, status=JobStatus.IN_QUEUE, queue_position=2, eta_s=None, finished_at=None
    )
    body = client.get(f"/v1/queue/requests/{rid}/status").json()
    assert body["queue_position"] == 2 and body["eta_s"] is None  # null kept
    assert "progress" not in body and "finished_at" not in body and "created" not in body

    scheduler.jobs[rid] = replace(
        done, status=JobStatus.FAILED, result=None, error=JobError("generation_failed", None)
    )
    body = client.get(f"/v1/queue/requests/{rid}").json()  # no result: the status answers
    assert body["error"] == {"type": "generation_failed", "message": None}
    assert "result" not in body and "tenant" not in body

    result = dict(done.result or {})
    result["timings"] = {"queue_s": 0, "compute_s": 1, "total_s": 2.5, "new_s": 0.1}
    scheduler.jobs[rid] = replace(done, result={**result, "future_key": {"a": [1, None]}})
    body = client.get(f"/v1/queue/requests/{rid}").json()
    assert body["timings"] == {"queue_s": 0, "compute_s": 1, "total_s": 2.5, "new_s": 0.1}
    assert isinstance(body["timings"]["queue_s"], int)  # an int stays an int
    assert body["future_key"] == {"a": [1, None]}  # undeclared keys pass through
    assert body["parameters"]["negative_prompt"] is None


def test_readiness_503_keeps_its_body(storage):
    class NotReady(FakeScheduler):
        async def ready(self):
            return {"sd15": {"error": "TimeoutError: "}, "flux": {"loaded": [], "running": 0}}

    r = make_client(NotReady(storage), storage).get("/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "ready": False,
        "families": {"sd15": {"error": "TimeoutError: "}, "flux": {"loaded": [], "running": 0}},
    }
