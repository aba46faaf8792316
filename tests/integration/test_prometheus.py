"""A real Prometheus (Debian's ``prometheus``) scrapes the session app's /metrics on 127.0.0.1
with the rendered scrape configuration (an admin key from a credentials file), and its HTTP API
returns genmedia's queue depth."""

from __future__ import annotations

import shutil
import subprocess
import time
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from genmedia.infra.render import prometheus
from genmedia.loadtests.local import free_port
from tests.integration.conftest import API_KEY

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="no prometheus binary (Debian: apt-get install prometheus; .ci/run installs it)",
    ),
]


def test_prometheus_scrapes_the_queue_depth(base_url, http, tmp_path):
    http.get("/v1/models").raise_for_status()  # the app is up
    target = urlsplit(base_url).netloc
    key = tmp_path / "metrics-key"  # /metrics needs an admin tenant's key ("dev")
    key.write_text(API_KEY)
    config = prometheus(genmedia_targets=[target], scrape_interval_s=1, credentials_file=str(key))
    config["scrape_configs"] = [c for c in config["scrape_configs"] if c["job_name"] == "genmedia"]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query"
        series: list = []
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not series:
            time.sleep(1.0)
            assert proc.poll() is None, proc.stderr.read()
            try:
                r = httpx.get(api, params={"query": 'genmedia_queue_depth{job="genmedia"}'})
            except httpx.TransportError:
                continue  # not listening yet
            if r.status_code == 200 and r.json()["status"] == "success":
                series = r.json()["data"]["result"]
        assert series, "Prometheus never returned genmedia_queue_depth"
        labels = {(s["metric"]["model"], s["metric"]["priority"]) for s in series}
        assert ("sd15-tiny", "interactive") in labels and ("flux-tiny", "batch") in labels
        up = httpx.get(api, params={"query": 'up{job="genmedia"}'}).json()["data"]["result"]
        assert up and up[0]["value"][1] == "1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
