"""Secure defaults on a real local Ray Serve (issue 15, item 6): an idempotency key reused with
another body answers 409 and the same body the first job; ``/metrics`` needs an admin key and
names no tenant; ``/v1/loras`` shows adapter sources to admin tenants only."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import OTHER_KEY
from tests.integration.test_queue_api import submit

pytestmark = pytest.mark.integration


def test_a_reused_idempotency_key_with_another_body_is_409(http):
    h = {"Idempotency-Key": "secure-defaults-1"}
    first = submit(http, headers=h, num_inference_steps=2, seed=5)
    assert first.status_code == 202, first.text
    again = submit(http, headers=h, seed=5, num_inference_steps=2)  # same body, other order
    assert again.status_code == 202 and again.json()["request_id"] == first.json()["request_id"]
    other = submit(http, headers=h, num_inference_steps=3, seed=5)
    assert other.status_code == 409, other.text
    error = other.json()["error"]
    assert error["type"] == "idempotency_key_reused"
    assert first.json()["request_id"] in error["message"]


def test_metrics_and_adapter_sources_are_for_admin_keys(http, base_url):
    with httpx.Client(base_url=base_url, timeout=60) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
    with httpx.Client(
        base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {OTHER_KEY}"}
    ) as other:
        assert other.get("/metrics").status_code == 403
        loras = other.get("/v1/loras").json()["loras"]
    text = http.get("/metrics").text  # tenant "dev" is an admin
    assert "genmedia_queue_depth" in text and 'tenant="other"' not in text
    assert all("source" not in a for a in loras)
    admin = http.get("/v1/loras").json()["loras"]
    assert admin and all("source" in a for a in admin)
