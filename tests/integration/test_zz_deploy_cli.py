"""`genmedia deploy --address` onto the running test cluster, as an operator would.

Named to run last: it redeploys the app (default catalog, development tenant) over the one the
other integration tests use.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration


def test_deploy_onto_a_running_cluster(base_url, genmedia_home):
    import ray

    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "GENMEDIA_DEV_API_KEY": API_KEY, "GENMEDIA_HOME": str(genmedia_home)}
    out = subprocess.run(
        [
            sys.executable,
            *("-m", "genmedia.deployments.cli.main", "deploy", "--address", address),
            "--insecure-dev",  # the development tenant: no --tenants file
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "deployed 6 model(s)" in out.stdout
    assert API_KEY not in out.stdout + out.stderr  # a key from the environment is never printed
    with httpx.Client(
        base_url=base_url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as http:
        r = http.post("/v1/models/flux-tiny/generate", json={"prompt": "deployed", "seed": 1})
        assert r.status_code == 200, r.text
        assert {m["id"] for m in http.get("/v1/models").json()["models"]} == {
            "sd15-tiny",
            "sd15-tiny-turbo",
            "sdxl-tiny",
            "flux-tiny",
            "wan-tiny",
            "stable-audio-tiny",
        }
