"""Webhook signatures (Standard Webhooks): how a receiver knows an event came from genmedia,
unchanged and recent.

Every attempt of a delivery (``delivery.py``) carries ``webhook-id`` (the delivery id, the same
on every retry), ``webhook-timestamp`` (unix seconds of the attempt) and, for a tenant with a
webhook secret, ``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``
(https://www.standardwebhooks.com). This module is the one place that signs and verifies; the
HMAC is the ``standardwebhooks`` package's.

Secrets: ``whsec_<base64>`` is the standard form (the key is the decoded bytes), what any
Standard Webhooks library takes. A secret without that prefix (the form of earlier tenant files)
is used as raw key bytes (its UTF-8 encoding): a receiver passes ``receiver_secret(secret)``,
i.e. ``"whsec_" + base64(secret)``, to its library.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from standardwebhooks import Webhook

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 16


def new_delivery_id() -> str:
    """A delivery id (``webhook-id``): made once per event, kept across retries and restarts."""
    return f"msg_{uuid.uuid4().hex}"


class WebhookSecretError(ValueError):
    """A webhook secret that cannot be used as a signing key."""


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: base64-decoded after ``whsec_``, else the secret's UTF-8 bytes.
    WebhookSecretError for bad base64 or a key under MIN_KEY_BYTES bytes."""
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise WebhookSecretError(
                "a whsec_ webhook secret must be base64 after the prefix"
            ) from None
    else:
        key = secret.encode()
    if len(key) < MIN_KEY_BYTES:
        raise WebhookSecretError(
            f"webhook secret key is {len(key)} bytes; at least {MIN_KEY_BYTES} are needed"
        )
    return key


def receiver_secret(secret: str) -> str:
    """The ``whsec_`` form of a tenant's secret: what a receiver's Standard Webhooks library
    takes (the secret itself when it already has the prefix)."""
    if secret.startswith(SECRET_PREFIX):
        return secret
    return SECRET_PREFIX + base64.b64encode(signing_key(secret)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value ``v1,<base64 HMAC-SHA256 of "<id>.<ts>.<body>">``."""
    when = datetime.fromtimestamp(int(timestamp), tz=UTC)
    return Webhook(signing_key(secret)).sign(msg_id=msg_id, timestamp=when, data=body.decode())


def headers(secret: str | None, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt; unsigned (no signature header) without a
    secret."""
    out = {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(int(timestamp))}
    if secret:
        out[SIGNATURE_HEADER] = sign(secret, msg_id, timestamp, body)
    return out


def verify(
    secret: str,
    body: bytes,
    received: Mapping[str, str],
    now: float,
    tolerance_s: float = 300,
) -> bool:
    """Whether ``received`` headers (any case) sign ``body`` with ``secret``, made within
    ``tolerance_s`` of ``now`` (replay guard). Any ``v1`` of the space-separated list may match
    (secret rotation). Never raises."""
    h = {k.lower(): v for k, v in received.items()}
    msg_id, stamp, given = h.get(ID_HEADER), h.get(TIMESTAMP_HEADER), h.get(SIGNATURE_HEADER)
    if not (secret and msg_id and stamp and given):
        return False
    try:
        timestamp = int(stamp)
        if abs(now - timestamp) > tolerance_s:
            return False
        expected = sign(secret, msg_id, timestamp, body).encode()
    except (ValueError, UnicodeDecodeError):
        return False
    candidates = [c for c in given.split(" ") if c.startswith("v1,")]
    return any(hmac.compare_digest(expected, c.encode("ascii", "replace")) for c in candidates)
