"""``genmedia tenants``: create and add-key print a key once and store its hash; errors exit 2."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from genmedia.deployments.cli.tenants import tenants_app
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.keys import hash_api_key
from genmedia.deployments.tenants.schema import load_tenants
from tests.unit.deployments.tenants.builders import KEY_RE, tenant_entry

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
            {"tenants": [tenant_entry("x", default_class="batch", allowed_classes=["interactive"])]}
        )
    )
    bad_before = bad.read_text()
    r = runner.invoke(tenants_app, ["validate", str(bad)])
    assert r.exit_code == 2 and "tenant 'x': default_class" in r.stderr
    r = runner.invoke(tenants_app, ["add-key", str(bad), "x"])
    assert r.exit_code == 2 and "fix them first" in r.stderr and bad.read_text() == bad_before
