"""Catalog schema and ``parse_catalog`` error reporting."""

from __future__ import annotations

import pytest
import yaml

from genmedia.models import catalog as cat
from genmedia.models.catalog import CatalogError, load_catalog, parse_catalog
from tests.unit.schema_checks import all_models, undescribed_fields


def _model(**over):
    base = {"id": "m1", "family": "sd15", "weights": "tiny://sd15"}
    base.update(over)
    return base


def _issues(data) -> list:
    with pytest.raises(CatalogError) as e:
        parse_catalog(data, "cat.yaml")
    return e.value.issues


def test_default_catalog_loads_and_fits_one_gpu():
    c = load_catalog()
    assert {m.family for m in c.models} == {"sd15", "sdxl", "flux", "wan", "stable-audio"}
    assert {m.task for m in c.models} == {"text-to-image", "text-to-video", "text-to-audio"}
    assert sum(m.gpu_fraction for m in c.models) <= 1.0
    assert len(c.families()["sd15"]) >= 2  # several models multiplexed on one worker


def test_every_field_has_a_description():
    assert {m.__name__ for m in all_models(cat.Catalog)} >= {
        "Catalog",
        "ModelEntry",
        "KernelOptions",
        "WebhookPolicy",
    }
    assert undescribed_fields(cat.Catalog) == []


def test_reports_every_error_with_model_and_field():
    data = {
        "models": [
            _model(id="ok"),
            _model(id="bad-size", parameters={"width": {"default": 60, "min": 32, "max": 512}}),
            _model(id="bad-family", family="nope"),
            _model(id="bad-sched", schedulers=["warp"]),
            _model(id="bad-bounds", parameters={"steps": {"default": 5, "min": 10, "max": 2}}),
            _model(id="bad-type", max_batch_size="lots"),
            _model(
                id="too-many",
                max_batch_size=2,
                parameters={"num_images": {"default": 1, "min": 1, "max": 4}},
            ),
        ]
    }
    issues = _issues(data)
    found = {(i.model_id, i.field) for i in issues}
    assert ("bad-size", "parameters.width.default") in found
    assert ("bad-family", "family") in found
    assert ("bad-sched", "schedulers") in found
    assert ("bad-bounds", "parameters.steps") in found
    assert ("bad-type", "max_batch_size") in found
    assert ("too-many", "parameters.num_images.max") in found
    assert not any(i.model_id == "ok" for i in issues)
    assert all(i.file == "cat.yaml" for i in issues)
    assert "multiple of 8" in str(next(i for i in issues if i.model_id == "bad-size"))


def test_duplicate_ids_and_family_gpu_overcommit():
    data = {"models": [_model(id="a", gpu_fraction=0.6), _model(id="a", gpu_fraction=0.6)]}
    issues = _issues(data)
    assert ("a", "id") in {(i.model_id, i.field) for i in issues}
    assert any(i.field == "gpu_fraction" and "sums to 1.2" in i.message for i in issues)


def test_unknown_top_level_and_worker_settings():
    issues = _issues(
        {
            "models": [_model()],
            "surprise": 1,
            "workers": {"sd15": {"min_replicas": 3, "max_replicas": 1}, "flux": {}},
        }
    )
    fields = {i.field for i in issues}
    assert "surprise" in fields
    assert "workers.sd15" in fields  # inverted replica bounds
    assert "workers.flux" in fields  # no flux model in the catalog


def test_empty_catalog_and_not_a_mapping():
    assert any(i.field == "models" for i in _issues({"models": []}))
    assert _issues(["a"])[0].field == "(root)"


def test_yaml_syntax_error_names_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("models:\n  - id: a\n    family: [sd15\n")
    with pytest.raises(CatalogError) as e:
        load_catalog(f)
    assert "line" in e.value.issues[0].field
    assert str(f) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(CatalogError) as e:
        load_catalog(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(e.value)


def test_relative_paths_resolve_against_the_catalog_file(tmp_path):
    f = tmp_path / "sub" / "c.yaml"
    f.parent.mkdir()
    f.write_text(yaml.safe_dump({"models": [_model(weights="weights/m1")]}))
    c = load_catalog(f)
    assert c.resolve_path("weights/m1") == (tmp_path / "sub" / "weights" / "m1").resolve()


def test_scheduler_defaults():
    c = parse_catalog({"models": [_model(), _model(id="b", schedulers=["ddim", "pndm"])]})
    assert c.model("m1").scheduler_default() == "euler"
    assert c.model("b").scheduler_default() == "ddim"
    issues = _issues({"models": [_model(schedulers=["ddim"], default_scheduler="euler")]})
    assert issues[0].field == "default_scheduler"


def test_acceleration_options_are_checked_per_family():
    issues = _issues(
        {
            "models": [
                _model(id="bad-backend", acceleration={"attention": "warp"}),
                _model(
                    id="bad-op", acceleration={"kernels": ["rope"]}
                ),  # a Flux pattern, not a UNet's
                _model(id="unknown-op", acceleration={"kernels": ["fft"]}),
                _model(
                    id="fine", acceleration={"attention": "sdpa", "kernels": ["groupnorm_silu"]}
                ),
            ]
        }
    )
    found = {(i.model_id, i.field) for i in issues}
    assert ("bad-backend", "acceleration.attention") in found
    assert ("bad-op", "acceleration.kernels") in found
    assert ("unknown-op", "acceleration.kernels") in found
    assert not any(i.model_id == "fine" for i in issues)


def test_inverted_replica_bounds_name_each_model_and_field():
    issues = _issues(
        {
            "models": [_model(id="a"), _model(id="b")],
            "workers": {"sd15": {"min_replicas": 3, "max_replicas": 1}},
        }
    )
    found = {(i.model_id, i.field) for i in issues}
    assert {("a", "workers.sd15.min_replicas"), ("b", "workers.sd15.min_replicas")} <= found
    assert any("3 is greater than workers.sd15.max_replicas 1" in i.message for i in issues)


def test_class_target_shorter_than_any_service_time_names_model_and_field():
    slow = _model(
        id="slow",
        parameters={"steps": {"default": 20, "min": 10, "max": 50}},
        scaling={"seconds_per_unit": 2.0},  # min: 1 x 10 x 256x256 px = 0.655 units: 1.31 s
        slo={"interactive_s": 1.0, "batch_s": 600},
    )
    issues = _issues({"models": [slow, _model(id="ok", slo={"interactive_s": 1.0})]})
    assert [(i.model_id, i.field) for i in issues] == [("slow", "slo.interactive_s")]
    assert "1.31 s" in issues[0].message
