"""Tenants file schema: defaults, every error with tenant and field, loading, the dev tenant."""

from __future__ import annotations

import pytest
import yaml

from genmedia.deployments.protocol import PRIORITY_CLASSES, PriorityClass
from genmedia.deployments.tenants import schema
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.keys import new_api_key
from genmedia.deployments.tenants.schema import (
    TenantsError,
    TenantsFile,
    development_tenants,
    load_tenants,
    parse_tenants,
)
from tests.unit.deployments.tenants.builders import KEY_RE
from tests.unit.deployments.tenants.builders import tenant_entry as _tenant
from tests.unit.schema_checks import all_models, undescribed_fields


def _issues(data, file="tenants.yaml") -> list:
    with pytest.raises(TenantsError) as e:
        parse_tenants(data, file)
    return e.value.issues


def _found(issues) -> set[tuple[str | None, str]]:
    return {(i.tenant_id, i.field) for i in issues}


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


def test_classes_are_the_protocol_enum():
    t = parse_tenants({"tenants": [_tenant(allowed_classes=["batch", "interactive"])]}).tenants[0]
    assert t.allowed_classes == [PriorityClass.BATCH, PriorityClass.INTERACTIVE]
    assert all(isinstance(c, PriorityClass) for c in [*t.allowed_classes, t.default_class])
    assert parse_tenants({"tenants": [_tenant()]}).tenants[0].allowed_classes == list(
        PRIORITY_CLASSES
    )
    enum = TenantsFile.model_json_schema()["$defs"]["PriorityClass"]["enum"]
    assert enum == ["interactive", "batch"]


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
    assert any("'interactive' is not among allowed_classes ['batch']" in s for s in text)
    assert any("Input should be 'interactive' or 'batch'" in s for s in text)
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


# -- development tenant ------------------------------------------------------------------------
def test_development_tenant_key_generated_at_start(monkeypatch):
    monkeypatch.delenv(schema.DEV_KEY_ENV, raising=False)
    tf, key = development_tenants()
    assert [t.id for t in tf.tenants] == ["dev"] and KEY_RE.match(key)
    assert key not in tf.model_dump_json()
    assert Authenticator(tf).authenticate(f"Bearer {key}").id == "dev"
    assert development_tenants()[1] != key  # fresh every start


def test_development_tenant_key_from_env(monkeypatch):
    _, key, _ = new_api_key()
    monkeypatch.setenv(schema.DEV_KEY_ENV, key)
    monkeypatch.setenv(schema.DEV_WEBHOOK_SECRET_ENV, "s" * 20)
    tf, printed = development_tenants()
    assert printed == key
    assert Authenticator(load_tenants(None)).authenticate(f"Bearer {key}").id == "dev"
    assert tf.tenants[0].webhook_secret == "s" * 20
    monkeypatch.setenv(schema.DEV_KEY_ENV, "gm_nothex_secret")
    with pytest.raises(TenantsError, match=schema.DEV_KEY_ENV) as e:
        development_tenants()
    assert "gm_nothex_secret" not in str(e.value)
