"""Tenants-file entries and the key pattern the tenants and CLI tests share."""

from __future__ import annotations

import re

from genmedia.deployments.tenants.keys import new_api_key

KEY_RE = re.compile(r"^gm_[0-9a-f]{8}_[A-Za-z0-9_-]{32,}$")


def tenant_entry(tid: str = "acme", **over: object) -> dict:
    """A tenants-file entry with one fresh key; ``over`` replaces or adds fields."""
    _, _, rec = new_api_key()
    base: dict = {"id": tid, "api_keys": [rec.model_dump(mode="json")]}
    base.update(over)
    return base
