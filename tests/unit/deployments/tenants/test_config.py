"""Tenants file schema, API keys, 401/403, the development tenant, rate limits and the CLI."""

from __future__ import annotations

import hashlib
import re

import pytest
import yaml
from typer.testing import CliRunner

from genmedia.deployments.tenants import config as tn
from genmedia.deployments.api.errors import ApiError
from genmedia.deployments.cli.tenants import tenants_app
from genmedia.deployments.tenants.config import (
    ApiKeyRecord,
    Authenticator,
    AuthError,
    RateLimiter,
    TenantsError,
    TenantsFile,
    development_tenants,
    hash_api_key,
    load_tenants,
    new_api_key,
    parse_api_key,
    parse_tenants,
    retry_after_header,
    verify_api_key,
)
from tests.unit.schema_checks import all_models, undescribed_fields

KEY_RE = re.compile(r"^gm_[0-9a-f]{8}_[A-Za-z0-9_-]{32,}$")


def _tenant(tid: str = "acme", **over) -> dict:
    _, _, rec = new_api_key()
    base = {"id": tid, "api_keys": [rec.model_dump(mode="json")]}
    base.update(over)
    return base


def _issues(data, file="tenants.yaml") -> list:
    with pytest.raises(TenantsError) as e:
        parse_tenants(data, file)
    return e.value.issues


def _found(issues) -> set[tuple[str | None, str]]:
    return {(i.tenant_id, i.field) for i in issues}


# -- schema ------------------------------------------------------------------------------------
def test_every_field_has_a_description():
    models = all_models(TenantsFile)
    assert {m.__name__ for m in models} >= {"TenantsFile", "Tenant", "ApiKeyRecord", "Quotas"}
    assert undescribed_fields(TenantsFile) == []


def test_defaults():
    t = parse_tenants({"tenants": [_tenant()]}).tenants[0]
    assert t.weight == 1.0 and t.allowed_classes == ["interactive", "batch"]
    assert t.default_class == "interactive" and t.allowed_models is None
    assert t.quotas.requests_per_minute >= 1 and t.webhook_secret is None
    only_batch = parse_tenants({"tenants": [_tenant(allowed_classes=["batch"])]}).tenants[0]
    assert only_batch.default_class == "batch"  # derived when left out


def test_reports_every_error_with_tenant_and_field():
    shared = _tenant("b")["api_keys"][0]
    data = {
        "version": 1,
        "colour": "blue",
        "tenants": [
            _tenant("ok"),
            _tenant("bad-class", allowed_classes=["batch"], default_class="interactive"),
            _tenant("short-secret", webhook_secret="tooshort"),
            _tenant("extra", owner="someone"),
            _tenant("neg", weight=0, quotas={"requests_per_minute": 0}),
            _tenant("dup"),
            _tenant("dup"),
            _tenant("a", api_keys=[shared]),
            _tenant("b", api_keys=[shared]),
            _tenant("plain", api_keys=[{"id": "0123abcd", "hash": "gm_0123abcd_" + "x" * 40}]),
            _tenant("numeric", api_keys=[{"id": 12345678, "hash": "sha256:" + "0" * 64}]),
            _tenant("no-models", allowed_models=[]),
            _tenant("Bad Id"),
            _tenant("weird-class", allowed_classes=["urgent"]),
        ],
    }
    issues = _issues(data)
    found = _found(issues)
    assert ("bad-class", "default_class") in found
    assert ("short-secret", "webhook_secret") in found
    assert ("extra", "owner") in found
    assert ("neg", "weight") in found and ("neg", "quotas.requests_per_minute") in found
    assert ("dup", "id") in found
    assert ("b", "api_keys.0.id") in found and ("b", "api_keys.0.hash") in found
    assert ("plain", "api_keys.0.hash") in found
    assert ("numeric", "api_keys.0.id") in found
    assert ("no-models", "allowed_models") in found
    assert ("Bad Id", "id") in found
    assert ("weird-class", "allowed_classes.0") in found
    assert (None, "colour") in found
    assert not any(i.tenant_id == "ok" for i in issues)
    assert all(i.file == "tenants.yaml" for i in issues)
    text = {str(i) for i in issues}
    assert "tenants.yaml: tenant 'extra': owner: unknown field" in text
    assert "tenants.yaml: tenants file: colour: unknown field" in text
    assert any("'interactive' is not among allowed_classes" in s for s in text)
    assert any("plaintext key" in s for s in text)
    assert any("quote it" in s for s in text)
    assert all("x" * 40 not in s for s in text)  # a pasted key is never echoed


def test_empty_and_non_mapping_files():
    assert _found(_issues([])) == {(None, "(root)")}
    assert (None, "tenants") in _found(_issues({"tenants": []}))


def test_tenants_file_model_rejects_conflicts_directly():
    t = _tenant()
    with pytest.raises(ValueError, match="duplicate tenant id"):
        TenantsFile.model_validate({"tenants": [t, t]})


def test_load_from_file_names_the_file(tmp_path):
    f = tmp_path / "tenants.yaml"
    f.write_text(yaml.safe_dump({"tenants": [_tenant("x", weight=-1)]}))
    with pytest.raises(TenantsError) as e:
        load_tenants(f)
    assert str(e.value).startswith(f"{f}: tenant 'x': weight:")
    f.write_text("tenants: [unclosed\n")
    with pytest.raises(TenantsError) as e:
        load_tenants(f)
    assert "invalid YAML" in str(e.value) and e.value.issues[0].field.startswith("line ")
    with pytest.raises(TenantsError, match=r"\(file\)"):
        load_tenants(tmp_path / "missing.yaml")
    f.write_text(yaml.safe_dump({"tenants": [_tenant("x")]}))
    tf = load_tenants(f)
    assert tf.source == str(f.resolve()) and tf.tenant("x") is not None and tf.tenant("y") is None


# -- keys --------------------------------------------------------------------------------------
def test_new_keys_are_random_well_formed_and_stored_hashed():
    key_id, key, rec = new_api_key("ci")
    assert KEY_RE.match(key) and key.startswith(f"gm_{key_id}_") and rec.id == key_id
    assert rec.hash == "sha256:" + hashlib.sha256(key.encode()).hexdigest() == hash_api_key(key)
    assert rec.description == "ci" and rec.created_at is not None
    assert key not in rec.model_dump_json() and key.split("_", 2)[2] not in rec.model_dump_json()
    assert verify_api_key(key, rec)
    assert not verify_api_key(key[:-1] + ("A" if key[-1] != "A" else "B"), rec)
    assert len({new_api_key()[1] for _ in range(50)}) == 50
    assert parse_api_key(key) == (key_id, key.split("_", 2)[2])
    for bad in (
        "",
        "gm_",
        "gm_0123abcd_short",
        "xx_0123abcd_" + "a" * 40,
        "gm_0123ABCD_" + "a" * 40,
    ):
        assert parse_api_key(bad) is None


# -- authentication / authorization ------------------------------------------------------------
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


# -- development tenant ------------------------------------------------------------------------
def test_development_tenant_key_generated_at_start(monkeypatch):
    monkeypatch.delenv(tn.DEV_KEY_ENV, raising=False)
    tf, key = development_tenants()
    assert [t.id for t in tf.tenants] == ["dev"] and KEY_RE.match(key)
    assert key not in tf.model_dump_json()
    assert Authenticator(tf).authenticate(f"Bearer {key}").id == "dev"
    assert development_tenants()[1] != key  # fresh every start


def test_development_tenant_key_from_env(monkeypatch):
    _, key, _ = new_api_key()
    monkeypatch.setenv(tn.DEV_KEY_ENV, key)
    monkeypatch.setenv(tn.DEV_WEBHOOK_SECRET_ENV, "s" * 20)
    tf, printed = development_tenants()
    assert printed == key
    assert Authenticator(load_tenants(None)).authenticate(f"Bearer {key}").id == "dev"
    assert tf.tenants[0].webhook_secret == "s" * 20
    monkeypatch.setenv(tn.DEV_KEY_ENV, "gm_nothex_secret")
    with pytest.raises(TenantsError, match=tn.DEV_KEY_ENV) as e:
        development_tenants()
    assert "gm_nothex_secret" not in str(e.value)


# -- rate limiter ------------------------------------------------------------------------------
def test_rate_limiter_burst_refill_and_retry_after():
    rl = RateLimiter({"a": 60, "b": 30})
    assert all(rl.try_acquire("a", 100.0) == 0.0 for _ in range(60))  # burst = capacity
    assert rl.try_acquire("a", 100.0) == pytest.approx(1.0)  # 1 token a second
    assert rl.try_acquire("a", 100.25) == pytest.approx(0.75)
    assert rl.try_acquire("a", 101.0) == 0.0  # refilled one
    assert rl.try_acquire("a", 101.0) == pytest.approx(1.0)
    assert rl.try_acquire("a", 99.0) == pytest.approx(1.0)  # clock going back refills nothing
    assert rl.try_acquire("b", 100.0) == 0.0  # tenants are independent
    for _ in range(29):
        rl.try_acquire("b", 100.0)
    assert rl.try_acquire("b", 100.0) == pytest.approx(2.0)  # 30/min: one token per 2 s
    assert sum(rl.try_acquire("a", 10_000.0) == 0.0 for _ in range(100)) == 60  # capped
    with pytest.raises(KeyError):
        rl.try_acquire("nobody", 0.0)
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2"


def test_rate_limiter_from_tenants_file():
    tf = parse_tenants({"tenants": [_tenant(quotas={"requests_per_minute": 2})]})
    rl = RateLimiter.for_tenants(tf)
    assert [rl.try_acquire("acme", 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(30.0)]


# -- CLI ---------------------------------------------------------------------------------------
runner = CliRunner()


def _keys_of(path, tenant: str) -> list[dict]:
    data = yaml.safe_load(path.read_text())
    return next(t for t in data["tenants"] if t["id"] == tenant)["api_keys"]


def test_cli_create_then_add_key(tmp_path):
    f = tmp_path / "tenants.yaml"
    r = runner.invoke(
        tenants_app, ["create", str(f), "acme", "--weight", "2", "--classes", "batch"]
    )
    assert r.exit_code == 0, r.output
    first = r.stdout.strip()
    assert KEY_RE.match(first) and "cannot be shown again" in r.stderr
    assert first not in f.read_text() and first.split("_", 2)[2] not in f.read_text()
    assert (f.stat().st_mode & 0o777) == 0o600
    r = runner.invoke(tenants_app, ["add-key", str(f), "acme", "-d", "ci runner"])
    assert r.exit_code == 0, r.output
    second = r.stdout.strip()
    assert KEY_RE.match(second) and second != first and "cannot be shown again" in r.stderr
    text = f.read_text()
    assert second not in text and second.split("_", 2)[2] not in text
    records = _keys_of(f, "acme")
    assert [k["hash"] for k in records] == [hash_api_key(first), hash_api_key(second)]
    assert records[1]["description"] == "ci runner"
    tf = load_tenants(f)
    a = Authenticator(tf)
    assert a.authenticate(f"Bearer {first}").id == a.authenticate(f"Bearer {second}").id == "acme"
    acme = tf.tenant("acme")
    assert acme.weight == 2 and acme.allowed_classes == ["batch"] and acme.default_class == "batch"
    assert acme.webhook_secret and len(acme.webhook_secret) >= 16
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind
    r = runner.invoke(tenants_app, ["validate", str(f)])
    assert r.exit_code == 0 and "1 tenant(s) valid" in r.stdout


def test_cli_errors_exit_2_without_traceback(tmp_path):
    f = tmp_path / "tenants.yaml"
    assert runner.invoke(tenants_app, ["create", str(f), "acme"]).exit_code == 0
    before = f.read_text()
    cases = [
        (["add-key", str(f), "nobody"], "no tenant 'nobody'"),
        (["create", str(f), "acme"], "already exists"),
        (["create", str(f), "other", "--classes", "urgent"], "allowed_classes.0"),
        (["create", str(f), "other", "--weight", "0"], "tenant 'other': weight"),
        (["validate", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ]
    for args, expected in cases:
        r = runner.invoke(tenants_app, args)
        assert r.exit_code == 2, (args, r.output)
        assert expected in r.stderr and "Traceback" not in r.output, args
        assert r.stdout == "", args  # no key printed when nothing was written
    assert f.read_text() == before

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"tenants": [_tenant("x", default_class="batch", allowed_classes=["interactive"])]}
        )
    )
    bad_before = bad.read_text()
    r = runner.invoke(tenants_app, ["validate", str(bad)])
    assert r.exit_code == 2 and "tenant 'x': default_class" in r.stderr
    r = runner.invoke(tenants_app, ["add-key", str(bad), "x"])
    assert r.exit_code == 2 and "fix them first" in r.stderr and bad.read_text() == bad_before


def test_api_key_record_round_trips_through_yaml():
    _, _, rec = new_api_key("x")
    again = ApiKeyRecord.model_validate(yaml.safe_load(yaml.safe_dump(rec.model_dump(mode="json"))))
    assert again == rec
