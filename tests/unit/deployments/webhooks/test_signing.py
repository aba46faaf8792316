"""Standard Webhooks signatures: the package's published test vectors, verification by the
``standardwebhooks`` package itself, tampering, replay, rotation, and the two secret forms."""

from __future__ import annotations

import base64
import time

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from genmedia.deployments.tenants.schema import Tenant
from genmedia.deployments.webhooks.signing import (
    WebhookSecretError,
    headers,
    new_delivery_id,
    receiver_secret,
    sign,
    signing_key,
    verify,
)

# The test vector of the standardwebhooks package's own tests (libraries/python/tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_WRONG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="  # one bit off

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
PLAIN = "whsec-test-0123456789"  # a secret of the earlier form (no whsec_ prefix)


def test_published_vector():
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    # the prefix is optional for the package; ours requires it for base64 secrets
    h = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS)}
    assert verify(
        VECTOR_SECRET, VECTOR_BODY, {**h, "webhook-signature": VECTOR_SIGNATURE}, VECTOR_TS
    )
    assert not verify(
        VECTOR_SECRET, VECTOR_BODY, {**h, "webhook-signature": VECTOR_WRONG}, VECTOR_TS
    )


def test_headers_verify_with_the_package():
    body = b'{"type":"job.completed","request_id":"abc","status":"COMPLETED"}'
    msg_id = new_delivery_id()
    h = headers(SECRET, msg_id, int(time.time()), body)
    assert set(h) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert h["webhook-id"] == msg_id and h["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, h) == {
        "type": "job.completed",
        "request_id": "abc",
        "status": "COMPLETED",
    }
    for bad_body in (body + b" ", body.replace(b"abc", b"abd")):
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(bad_body, h)
    with pytest.raises(WebhookVerificationError):  # another id: a replayed signature
        Webhook(SECRET).verify(body, {**h, "webhook-id": new_delivery_id()})
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, h)


def test_verify_rules():
    body = b'{"a":1}'
    now = 1_700_000_000
    h = headers(SECRET, "msg_1", now, body)
    assert verify(SECRET, body, h, now) and verify(SECRET, body, h, now + 299)
    assert verify(SECRET, body, {k.upper(): v for k, v in h.items()}, now)  # any case
    assert not verify(SECRET, body, h, now + 301)  # stale
    assert not verify(SECRET, body, h, now - 301)  # from the future
    assert not verify(SECRET, body + b" ", h, now)
    assert not verify(SECRET, body, {**h, "webhook-timestamp": str(now + 1)}, now)
    assert not verify(PLAIN, body, h, now)  # wrong secret
    for missing in h:
        assert not verify(SECRET, body, {k: v for k, v in h.items() if k != missing}, now)
    for bad in ("", "garbage", "v1,", "v1,@@@", "v2," + h["webhook-signature"][3:], "v1,é"):
        assert not verify(SECRET, body, {**h, "webhook-signature": bad}, now), bad
    assert not verify(SECRET, body, {**h, "webhook-timestamp": "soon"}, now)
    rotated = f"v1,{base64.b64encode(b'0' * 32).decode()} {h['webhook-signature']}"
    assert verify(SECRET, body, {**h, "webhook-signature": rotated}, now)


def test_plain_secret_is_the_raw_key():
    body = b'{"a":1}'
    h = headers(PLAIN, "msg_2", int(time.time()), body)
    assert signing_key(PLAIN) == PLAIN.encode()
    assert receiver_secret(PLAIN) == "whsec_" + base64.b64encode(PLAIN.encode()).decode()
    assert receiver_secret(SECRET) == SECRET
    assert Webhook(receiver_secret(PLAIN)).verify(body, h) == {"a": 1}
    assert Webhook(PLAIN.encode()).verify(body, h) == {"a": 1}


def test_unusable_secrets_are_refused():
    for bad in ("short", "whsec_" + base64.b64encode(b"k" * 8).decode(), "whsec_not*base64!"):
        with pytest.raises(WebhookSecretError):
            signing_key(bad)
    base = {"id": "acme", "api_keys": []}
    assert Tenant.model_validate({**base, "webhook_secret": SECRET}).webhook_secret == SECRET
    assert Tenant.model_validate({**base, "webhook_secret": PLAIN}).webhook_events == ["completed"]
    with pytest.raises(ValidationError, match="base64"):
        Tenant.model_validate({**base, "webhook_secret": "whsec_" + "*" * 30})
    with pytest.raises(ValidationError, match="webhook_events"):
        Tenant.model_validate({**base, "webhook_events": ["finished"]})
