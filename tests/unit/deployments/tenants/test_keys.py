"""API keys: well-formed, random, stored only as a hash, checked in constant time."""

from __future__ import annotations

import hashlib

import yaml

from genmedia.deployments.tenants.keys import (
    ApiKeyRecord,
    hash_api_key,
    new_api_key,
    parse_api_key,
    verify_api_key,
)
from tests.unit.deployments.tenants.builders import KEY_RE


def test_new_keys_are_random_well_formed_and_stored_hashed():
    key_id, key, rec = new_api_key("ci")
    assert KEY_RE.match(key) and key.startswith(f"gm_{key_id}_") and rec.id == key_id
    assert rec.hash == "sha256:" + hashlib.sha256(key.encode()).hexdigest() == hash_api_key(key)
    assert rec.description == "ci" and rec.created_at is not None
    assert key not in rec.model_dump_json() and key.split("_", 2)[2] not in rec.model_dump_json()
    assert verify_api_key(key, rec)
    assert not verify_api_key(key[:-1] + ("A" if key[-1] != "A" else "B"), rec)
    assert len({new_api_key()[1] for _ in range(50)}) == 50
    assert parse_api_key(key) == (key_id, key.split("_", 2)[2])
    for bad in (
        "",
        "gm_",
        "gm_0123abcd_short",
        "xx_0123abcd_" + "a" * 40,
        "gm_0123ABCD_" + "a" * 40,
    ):
        assert parse_api_key(bad) is None


def test_api_key_record_round_trips_through_yaml():
    _, _, rec = new_api_key("x")
    again = ApiKeyRecord.model_validate(yaml.safe_load(yaml.safe_dump(rec.model_dump(mode="json"))))
    assert again == rec
