"""401 for a missing, malformed or unknown key; 403 for a class or model the tenant may not use."""

from __future__ import annotations

import pytest

from genmedia.deployments.errors import ApiError
from genmedia.deployments.protocol import PriorityClass
from genmedia.deployments.tenants.auth import Authenticator, AuthError
from genmedia.deployments.tenants.keys import new_api_key
from genmedia.deployments.tenants.schema import parse_tenants


@pytest.fixture
def auth():
    _, key_a, rec_a = new_api_key()
    _, key_b, rec_b = new_api_key()
    tf = parse_tenants(
        {
            "tenants": [
                {"id": "a", "api_keys": [rec_a.model_dump()]},
                {
                    "id": "b",
                    "api_keys": [rec_b.model_dump()],
                    "allowed_classes": ["batch"],
                    "allowed_models": ["sd15-tiny"],
                },
            ]
        }
    )
    return Authenticator(tf), key_a, key_b


def _auth_error(fn, *args) -> AuthError:
    with pytest.raises(AuthError) as e:
        fn(*args)
    return e.value


def test_authenticate_finds_the_tenant(auth):
    a, key_a, key_b = auth
    assert a.authenticate(f"Bearer {key_a}").id == "a"
    assert a.authenticate(f"bearer   {key_b}  ").id == "b"


def test_401_missing_malformed_unknown(auth):
    a, key_a, _ = auth
    for header in (None, "", "   ", "Bearer", "Bearer   "):
        e = _auth_error(a.authenticate, header)
        assert e.status == 401 and e.message.startswith("missing API key"), header
        assert e.headers == {"WWW-Authenticate": 'Bearer realm="genmedia"'}
    known_id_wrong_secret = key_a[:12] + "A" * 43
    unknown = new_api_key()[1]
    for header in (
        f"Basic {key_a}",
        key_a,
        "Bearer not-a-key",
        f"Bearer {key_a}x!",
        f"Bearer {known_id_wrong_secret}",
        f"Bearer {unknown}",
    ):
        e = _auth_error(a.authenticate, header)
        assert (e.status, e.message, e.type) == (401, "invalid API key", "unauthorized"), header
    assert isinstance(e, ApiError)  # the gateway's error handler answers it as is


def test_403_class_and_model(auth):
    a, _, key_b = auth
    b = a.authenticate(f"Bearer {key_b}")
    a.authorize(b, "sd15-tiny", "batch")
    a.authorize(b, "sd15-tiny", None)  # default class: batch (the only one allowed)
    e = _auth_error(a.authorize, b, "sd15-tiny", "interactive")
    assert (
        e.status == 403
        and "'interactive'" in e.message
        and e.fields[0]["field"] == ("priority_class")
    )
    e = _auth_error(a.authorize, b, "sd15-tiny", PriorityClass.INTERACTIVE)
    assert e.message == "tenant 'b' may not use priority class 'interactive'; allowed: batch"
    e = _auth_error(a.authorize, b, "sdxl-tiny", "batch")
    assert e.status == 403 and "'sdxl-tiny'" in e.message and e.fields[0]["field"] == "model_id"
    tenant_a = a.tenants["a"]
    a.authorize(tenant_a, "anything", "interactive")


def test_auth_errors_through_the_gateway_error_handlers(auth):
    from fastapi import FastAPI, Header
    from fastapi.testclient import TestClient

    from genmedia.deployments.api.errors import install_error_handlers

    a, key_a, _ = auth
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/whoami")
    def whoami(authorization: str | None = Header(default=None)) -> dict:
        return {"tenant": a.authenticate(authorization).id}

    with TestClient(app) as client:
        r = client.get("/v1/whoami")
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/v1/whoami", headers={"Authorization": "Bearer x"}).status_code == 401
        r = client.get("/v1/whoami", headers={"Authorization": f"Bearer {key_a}"})
        assert r.json() == {"tenant": "a"}
