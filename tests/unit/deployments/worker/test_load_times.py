"""A worker replica's measured load time: what ``runner.load_model`` reports, recorded per
model, in the ready/info answers, the Prometheus text and the autoscaling stats."""

from __future__ import annotations

from pathlib import Path

import pytest

from genmedia.autoscaling.signals import decode_load_times
from genmedia.deployments.worker.load_times import LoadTimes
from genmedia.models import registry
from genmedia.models.catalog import parse_catalog
from genmedia.models.runner import LoadedModel, load_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path: Path = tmp_path_factory.mktemp("load-times") / "sd15"
    registry.family_module("sd15").build_tiny(path, seed=0)
    catalog = parse_catalog({"models": [{"id": "m", "family": "sd15", "weights": str(path)}]})
    return load_model(catalog.models[0], path, "cpu")


def test_load_model_reports_its_phases(model: LoadedModel) -> None:
    phases = model.load_phases
    assert model.load_s > 0
    assert {"weights_s", "kernels_s", "weights.build_s", "weights.read_fill_s"} <= set(phases)
    assert phases["weights_s"] <= model.load_s
    assert phases["bytes"] > 0 and "fallbacks" not in phases


def test_recorded_load_reaches_info_metrics_and_autoscaling(model: LoadedModel) -> None:
    times = LoadTimes("sd15")
    entry = times.record("m", model, now=123.0)
    assert entry.seconds == model.load_s and entry.bytes == model.load_phases["bytes"]
    info = times.info()["m"]
    assert info["load_s"] == round(model.load_s, 6) and info["at"] == 123.0
    assert "weights_s" in info["phases"] and "bytes" not in info["phases"]
    assert decode_load_times(times.autoscaling_stats()) == {"m": model.load_s}
    text = times.metrics.render().decode()
    assert 'genmedia_model_last_load_seconds{family="sd15",model="m"}' in text
    assert 'genmedia_model_load_seconds_count{family="sd15",model="m"} 1.0' in text
    assert 'phase="weights_s"' in text
    # a later load (after an LRU eviction) replaces the figure
    times.record("m", model, now=200.0)
    assert times.info()["m"]["at"] == 200.0
    assert 'genmedia_model_load_seconds_count{family="sd15",model="m"} 2.0' in (
        times.metrics.render().decode()
    )
