"""Webhook signatures: sign, the header, and verify (tampering, wrong secret, replay, rotation)."""

from __future__ import annotations

from genmedia.deployments.webhooks.signing import sign, signature_header, verify

SECRET = "whsec_" + "k" * 26


def test_sign_and_verify():
    body = b'{"request_id":"abc","status":"COMPLETED"}'
    now = 1_700_000_000
    header = signature_header(SECRET, body, now)
    assert header == f"t={now},v1={sign(SECRET, body, now)}"
    assert len(sign(SECRET, body, now)) == 64
    assert verify(SECRET, body, header, now)
    assert verify(SECRET, body, header, now + 299)
    assert not verify(SECRET, body + b" ", header, now)  # tampered body
    assert not verify(SECRET, body.replace(b"abc", b"abd"), header, now)
    assert not verify("another-secret-of-16+", body, header, now)  # wrong secret
    assert not verify(SECRET, body, header, now + 301)  # stale
    assert not verify(SECRET, body, header, now - 301)  # from the future
    assert not verify(SECRET, body, header.replace(f"t={now}", f"t={now + 1}"), now)  # replayed t
    for bad in (None, "", "garbage", f"t={now}", "v1=abc", "t=x,v1=00", f"t={now},v1=é"):
        assert not verify(SECRET, body, bad, now), bad
    rotated = f"t={now},v1={'0' * 64},v1={sign(SECRET, body, now)}"
    assert verify(SECRET, body, rotated, now)
