"""The admin routes of keys and quotas over the fake scheduler (the real ``KeyRegistry`` on an
in-memory store): admin tenants only (403), a key answered once and usable at once (201),
revoked at once on this replica (401 after), quotas within their bounds (422 beyond)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from genmedia.deployments.api.app import build_api
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.keys import key_record, parse_api_key
from genmedia.deployments.tenants.schema import parse_tenants
from genmedia.models.catalog import load_catalog
from tests.unit.deployments.fakes import FakeScheduler

ADMIN_KEY = "gm_0123abcd_" + "a" * 43
USER_KEY = "gm_89abcdef_" + "u" * 43


@pytest.fixture
def client(tmp_path):
    tf = parse_tenants(
        {
            "tenants": [
                {
                    "id": "ops",
                    "admin": True,
                    "api_keys": [key_record(ADMIN_KEY).model_dump(mode="json")],
                },
                {"id": "team", "api_keys": [key_record(USER_KEY).model_dump(mode="json")]},
            ]
        }
    )
    storage = LocalDirStorage(tmp_path)
    scheduler = FakeScheduler(storage)
    scheduler.use_keys(tf.tenants)
    service = GatewayService(load_catalog(), scheduler, Authenticator(tf), storage=storage)
    return TestClient(build_api(service), headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_only_admin_tenants_manage_keys(client):
    user = as_key(USER_KEY)
    assert client.post("/v1/admin/tenants/team/keys", headers=user).status_code == 403
    assert client.delete("/v1/admin/keys/0123abcd", headers=user).status_code == 403
    r = client.patch("/v1/admin/tenants/team/quotas", json={"max_queued_jobs": 1}, headers=user)
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    assert client.get("/v1/models", headers=as_key(ADMIN_KEY)).status_code == 200


def test_add_use_and_revoke_a_key(client):
    r = client.post("/v1/admin/tenants/team/keys", json={"description": "ci runner"})
    assert r.status_code == 201, r.text
    body = r.json()
    key = body["key"]
    assert parse_api_key(key)[0] == body["id"] and body["tenant"] == "team"
    assert client.get("/v1/usage", headers=as_key(key)).json()["tenant"] == "team"
    r = client.delete(f"/v1/admin/keys/{body['id']}")
    assert r.status_code == 200 and r.json()["tenant"] == "team"
    assert client.get("/v1/usage", headers=as_key(key)).status_code == 401
    # a key of the tenants file too
    assert client.delete("/v1/admin/keys/89abcdef").status_code == 200
    assert client.get("/v1/usage", headers=as_key(USER_KEY)).status_code == 401
    r = client.delete("/v1/admin/keys/ffffffff")
    assert r.status_code == 404 and r.json()["error"]["fields"][0]["field"] == "key_id"


def test_no_run_time_tenants(client):
    r = client.post("/v1/admin/tenants/newcomer/keys")
    assert r.status_code == 404 and "tenants file" in r.json()["error"]["message"]


def test_quotas_change_within_bounds(client):
    r = client.patch("/v1/admin/tenants/team/quotas", json={"max_queued_jobs": 3})
    assert r.status_code == 200, r.text
    assert r.json()["quotas"]["max_queued_jobs"] == 3
    assert r.json()["overrides"] == {"max_queued_jobs": 3}
    r = client.patch("/v1/admin/tenants/team/quotas", json={"requests_per_minute": 0})
    assert r.status_code == 422
    assert r.json()["error"]["fields"][0]["field"] == "quotas.requests_per_minute"
    r = client.patch("/v1/admin/tenants/team/quotas", json={"weight": 3})
    assert r.status_code == 422  # not a quota field
