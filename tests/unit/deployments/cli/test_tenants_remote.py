"""``genmedia tenants add-key|revoke|set-quota --url``: the admin routes called over HTTP (the
gateway app in process, the fake scheduler behind it); errors name status, type and field."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from genmedia.deployments.cli.tenants import tenants_app
from tests.unit.deployments.api.test_admin_keys import ADMIN_KEY, USER_KEY
from tests.unit.deployments.api.test_admin_keys import client as app_client  # noqa: F401

runner = CliRunner()
URL = "http://gateway"


@pytest.fixture
def remote(app_client, monkeypatch):  # noqa: F811
    def request(method, url, **kw):
        kw.pop("timeout", None)  # TestClient takes none
        return app_client.request(method, url.removeprefix(URL), **kw)

    monkeypatch.setattr(httpx, "request", request)
    return app_client


def test_add_key_revoke_and_set_quota(remote):
    admin = ["--url", URL, "--key", ADMIN_KEY]
    r = runner.invoke(tenants_app, ["add-key", *admin, "team", "-d", "ci"])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip()
    assert remote.get("/v1/usage", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    r = runner.invoke(tenants_app, ["revoke", *admin, key[3:11]])
    assert r.exit_code == 0, r.output
    assert remote.get("/v1/usage", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    r = runner.invoke(tenants_app, ["set-quota", *admin, "team", "max_queued_jobs=9"])
    assert r.exit_code == 0 and "max_queued_jobs=9 (set at run time)" in r.stdout


def test_refusals_exit_with_the_answer(remote):
    r = runner.invoke(tenants_app, ["revoke", "--url", URL, "--key", USER_KEY, "0123abcd"])
    assert r.exit_code == 1 and "403" in r.stderr and "forbidden" in r.stderr
    r = runner.invoke(
        tenants_app, ["set-quota", "--url", URL, "--key", ADMIN_KEY, "team", "max_queued_jobs=0"]
    )
    assert r.exit_code == 1 and "quotas.max_queued_jobs" in r.stderr
    r = runner.invoke(tenants_app, ["set-quota", "--url", URL, "--key", ADMIN_KEY, "team", "x"])
    assert r.exit_code == 2 and "field=value" in r.stderr
    assert runner.invoke(tenants_app, ["revoke", "0123abcd"]).exit_code == 2  # no --url
