"""Webhook signatures: how a receiver knows an event came from genmedia, unchanged and recent.

Every attempt of a delivery (``delivery.py``) to a tenant with a webhook secret carries
``X-Genmedia-Signature: t=<unix ts>,v1=<hex>``: HMAC-SHA256 with the tenant's secret over
``"<ts>." + body``. Receivers check it with ``verify`` (or its few lines in their own language).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Genmedia-Signature"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 with ``secret`` over ``f"{timestamp}."`` + ``body``."""
    msg = f"{int(timestamp)}.".encode() + body
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Genmedia-Signature value: ``t=<timestamp>,v1=<hex>``."""
    return f"t={int(timestamp)},v1={sign(secret, body, timestamp)}"


def verify(
    secret: str, body: bytes, header: str | None, now: float, tolerance_s: float = 300
) -> bool:
    """Whether an X-Genmedia-Signature ``header`` signs ``body`` with ``secret``, made within
    ``tolerance_s`` of ``now`` (replay guard). Any v1 may match (secret rotation). Never raises."""
    if not header or not secret:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).encode()
    return any(hmac.compare_digest(expected, c.encode("ascii", "replace")) for c in candidates)
