"""Placement planner: packing by fraction and memory, and the errors that name models."""

from __future__ import annotations

import pytest

from genmedia.autoscaling.placement import PlacementError, plan_placement
from genmedia.models.catalog import load_catalog
from tests.unit.autoscaling.conftest import catalog, model


def _issues(c, gpus, mem) -> list:
    with pytest.raises(PlacementError) as e:
        plan_placement(c, gpus, mem)
    return e.value.issues


def test_default_catalog_packs_onto_one_gpu():
    p = plan_placement(load_catalog(), 1, 24)
    assert len(p.gpus) == 1
    assert sorted(f for f, _ in p.gpus[0].replicas) == [
        "flux",
        "sd15",
        "sdxl",
        "stable-audio",
        "wan",
    ]
    assert p.gpus[0].fraction == pytest.approx(0.9)


def test_families_share_gpus_by_fraction_and_memory():
    c = catalog(
        [
            model("a", "sd15", gpu_fraction=0.5, memory_gb=10),
            model("b", "sdxl", gpu_fraction=0.5, memory_gb=10),
            model("c", "flux", gpu_fraction=0.5, memory_gb=10),
        ],
        {f: {"min_replicas": 1, "max_replicas": 4} for f in ("sd15", "sdxl", "flux")},
    )
    p = plan_placement(c, 2, 24)
    assert [round(g.fraction, 6) for g in p.gpus] == [1.0, 0.5]
    # growing in turn: 4 GPUs of room for 0.5-GPU replicas, shared round-robin
    assert sum(p.reachable_max.values()) == 4
    assert min(p.reachable_max.values()) >= 1


def test_memory_limits_sharing_even_when_fractions_fit():
    c = catalog(
        [model("a", "sd15", gpu_fraction=0.5, memory_gb=10), model("b", "sdxl", gpu_fraction=0.5)],
        {"sd15": {"max_loaded_models": 1}},
    )
    p = plan_placement(c, 1, 20)
    assert len(p.gpus) == 1 and p.gpus[0].memory_gb == pytest.approx(14)
    with pytest.raises(PlacementError):
        plan_placement(c, 1, 16)  # 10 GiB is more than half of a 16 GiB GPU


def test_minimums_that_do_not_fit_name_every_model_of_the_family():
    c = catalog(
        [model("big1", "sdxl", gpu_fraction=0.6), model("x", "sd15", gpu_fraction=0.6)],
        {"sdxl": {"min_replicas": 2, "max_replicas": 2}},
    )
    issues = _issues(c, 2, 80)
    assert {(i.model_id, i.field) for i in issues} >= {("big1", "workers.sdxl.min_replicas")}
    assert "only 1 of the 2" in str(issues[0]) or "only 0 of the 2" in str(issues[0])


def test_model_larger_than_a_gpu_names_memory_gb():
    c = catalog([model("huge", gpu_fraction=1.0, memory_gb=100)])
    issues = _issues(c, 4, 80)
    assert ("huge", "memory_gb") in {(i.model_id, i.field) for i in issues}


def test_share_smaller_than_weights_names_gpu_fraction():
    c = catalog([model("a", gpu_fraction=0.1, memory_gb=20), model("b", gpu_fraction=0.1)])
    issues = _issues(c, 1, 80)
    found = {(i.model_id, i.field) for i in issues}
    assert found == {("a", "gpu_fraction"), ("b", "gpu_fraction")}
    assert "0.2 GPU = 16 GiB" in issues[0].message and "up to 24 GiB" in issues[0].message


def test_no_gpus_fits_nothing():
    issues = _issues(load_catalog(), 0, 24)
    assert {i.model_id for i in issues} == {m.id for m in load_catalog().models}
