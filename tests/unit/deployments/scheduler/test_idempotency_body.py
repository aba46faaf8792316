"""An idempotency key is bound to its request body (Stripe's rule), without Ray: the scheduler's
intake against a real SQLite job store answers a repeat with the same body with the first job,
refuses one with another body (409 ``idempotency_key_reused``), inside one group too; jobs stored
without a body hash (older stores, upgraded by the schema migration) answer as before."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from genmedia.deployments.protocol import Rejection, SubmitAccepted
from tests.unit.deployments.scheduler.test_intake import _one_group, setup, sub

__all__ = ["setup"]  # the intake fixture


def test_a_reused_key_with_another_body_is_refused_and_the_same_body_answers_the_first(setup):
    intake, store, _, catalog = setup
    first = replace(sub(catalog, "b", key="k1"), body_sha256="aa")
    (made,) = asyncio.run(_one_group(intake, [first]))
    assert isinstance(made, SubmitAccepted) and made.created
    assert store.get(made.job.request_id).body_sha256 == "aa"

    same = replace(sub(catalog, "b", key="k1"), body_sha256="aa")
    other = replace(sub(catalog, "b", key="k1"), body_sha256="bb")
    again, refused = asyncio.run(_one_group(intake, [same, other]))
    assert isinstance(again, SubmitAccepted) and not again.created
    assert again.job.request_id == made.job.request_id
    assert isinstance(refused, Rejection)
    assert (refused.status, refused.type, refused.field) == (
        409,
        "idempotency_key_reused",
        "Idempotency-Key",
    )
    assert made.job.request_id in refused.message and refused.retry_after_s is None
    # another tenant's key of the same name is its own
    (theirs,) = asyncio.run(_one_group(intake, [replace(other, tenant="a")]))
    assert isinstance(theirs, SubmitAccepted) and theirs.created


def test_a_key_twice_in_one_group_with_different_bodies(setup):
    intake, _, _, catalog = setup
    a = replace(sub(catalog, "b", key="k2"), body_sha256="aa")
    b = replace(sub(catalog, "b", key="k2"), body_sha256="bb")
    first, second = asyncio.run(_one_group(intake, [a, b]))
    assert isinstance(first, SubmitAccepted) and first.created
    assert isinstance(second, Rejection) and second.type == "idempotency_key_reused"


def test_without_a_recorded_hash_a_repeat_answers_the_first_job(setup):
    intake, _, _, catalog = setup
    (made,) = asyncio.run(_one_group(intake, [sub(catalog, "b", key="k3")]))  # no hash
    repeat = replace(sub(catalog, "b", key="k3"), body_sha256="cc")
    (again,) = asyncio.run(_one_group(intake, [repeat]))
    assert isinstance(made, SubmitAccepted) and isinstance(again, SubmitAccepted)
    assert not again.created and again.job.request_id == made.job.request_id
