"""Scenario files: committed ones load and generate sorted, seeded traces; bad ones are refused
with file, line and field before anything is sent."""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest
import yaml

from genmedia.loadtests.scenarios import (
    SCENARIOS_DIR,
    Scenario,
    ScenarioError,
    find_scenario,
    generate,
    generate_indexed,
    load_scenario,
    stream_locator,
)
from genmedia.loadtests.traces import read_trace, write_trace
from tests.unit.schema_checks import undescribed_fields

GOOD = """\
name: t
duration_s: 100
seed: 3
tenants:
  - {id: a, weight: 1}
  - {id: b, weight: 2}
slo: {interactive: 4, batch: 60}
streams:
  - name: one
    tenant: a
    priority: interactive
    model: sd15-tiny
    params: {width: 64, num_inference_steps: 4}
    arrival: {process: poisson, rate: 2}
  - tenant: b
    priority: batch
    model: flux-tiny
    deadline_s: 30
    variants:
      - {weight: 3, params: {num_images: 1}}
      - {weight: 1, params: {num_images: 4}}
    arrival: {process: gamma, rate: 1, cv: 2}
    start_s: 50
"""


def write(tmp_path, text: str, name: str = "s.yaml"):
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return f


def issues_of(tmp_path, text: str) -> list:
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, text))
    return e.value.issues


def test_every_field_is_described():
    assert undescribed_fields(Scenario) == []


@pytest.mark.parametrize("name", ["smoke", "scheduler", "diurnal", "mixed-catalog"])
def test_committed_scenarios_load_and_generate(name):
    s = load_scenario(find_scenario(name))
    assert s.name == name
    trace = generate(s)
    assert trace and [r.t for r in trace] == sorted(r.t for r in trace)
    assert all(0 <= r.t < s.duration_s for r in trace)
    assert {r.tenant for r in trace} <= set(s.weights)


def test_smoke_is_light_and_short():
    s = load_scenario(SCENARIOS_DIR / "smoke.yaml")
    trace = generate(s)
    assert s.duration_s <= 25 and len(trace) < 80
    assert {r.model for r in trace} == {"sd15-tiny"}
    assert {r.priority for r in trace} == {"interactive", "batch"}


def test_scheduler_scenario_floods_from_three_weighted_tenants():
    s = load_scenario(find_scenario("scheduler"))
    batch = {st.tenant for st in s.streams if st.priority == "batch"}
    assert sorted(s.weights[t] for t in batch) == [1, 1, 2]


def test_generate_is_seeded_sorted_and_follows_the_spec(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    a, b = generate(s), generate(s)
    assert a == b
    other = generate(s.model_copy(update={"seed": 4}))
    assert [r.t for r in other] != [r.t for r in a]
    by_tenant = Counter(r.tenant for r in a)
    assert by_tenant["a"] == pytest.approx(200, rel=0.25)
    second = [r for r in a if r.tenant == "b"]
    assert min(r.t for r in second) >= 50 and all(r.deadline_s == 30 for r in second)
    images = Counter(r.params["num_images"] for r in second)
    assert set(images) == {1, 4} and images[1] > images[4]
    first = [r for r in a if r.tenant == "a"]
    assert all(r.params["width"] == 64 and r.params["num_inference_steps"] == 4 for r in first)
    assert len({r.params["seed"] for r in a}) == len(a)  # own seed per request
    assert all(r.params["prompt"] for r in a)


def test_adding_a_stream_leaves_the_others_unchanged(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    extra = s.streams[0].model_copy(update={"name": "extra", "tenant": "b"})
    more = s.model_copy(update={"streams": [*s.streams, extra]})
    kept = [r for i, r in generate_indexed(more) if i < 2]
    assert kept == generate(s)


def test_trace_round_trips_through_jsonl(tmp_path):
    trace = generate(load_scenario(write(tmp_path, GOOD)))
    assert read_trace(write_trace(tmp_path / "t.jsonl", trace)) == trace


def test_unknown_field_named_with_line(tmp_path):
    text = GOOD.replace("    start_s: 50", "    start_s: 50\n    burst: 3")
    (issue,) = issues_of(tmp_path, text)
    assert issue.field == "streams.1.burst" and issue.message == "unknown field"
    assert issue.line == 24 and str(issue).startswith(f"{tmp_path / 's.yaml'}:24: ")


def test_bad_arrival_parameter_named_without_the_union_tag(tmp_path):
    (issue,) = issues_of(tmp_path, GOOD.replace("rate: 1, cv: 2", "rate: 1, cv: -2"))
    assert issue.field == "streams.1.arrival.cv" and issue.line == 22
    assert "greater than 0" in issue.message


def test_unknown_process_and_missing_fields(tmp_path):
    text = GOOD.replace("process: poisson, rate: 2", "process: hawkes, rate: 2")
    text = text.replace("duration_s: 100\n", "")
    issues = {i.field: i for i in issues_of(tmp_path, text)}
    assert issues["duration_s"].message == "field required"
    assert "hawkes" in issues["streams.0.arrival"].message
    assert issues["streams.0.arrival"].line == 13  # one line up: duration_s removed


def test_cross_field_problems_all_at_once(tmp_path):
    text = (
        GOOD.replace("tenant: b\n", "tenant: c\n")
        .replace("start_s: 50", "start_s: 50\n    end_s: 120")
        .replace("{width: 64,", "{width: wide, priority: batch,")
        .replace("- {id: b, weight: 2}", "- {id: a, weight: 2}")
    )
    issues = {i.field: i for i in issues_of(tmp_path, text)}
    assert "unknown tenant 'c'" in issues["streams.1.tenant"].message
    assert issues["streams.1.tenant"].line == 15
    assert "after the scenario's end" in issues["streams.1.end_s"].message
    assert issues["streams.0.params.width"].line == 13
    assert "integer" in issues["streams.0.params.width"].message
    assert "set by the scenario" in issues["streams.0.params.priority"].message
    assert "duplicate tenant" in issues["tenants.1.id"].message


def test_too_many_requests_refused(tmp_path):
    (issue,) = issues_of(tmp_path, GOOD.replace("rate: 2}", "rate: 200000}"))
    assert issue.field == "streams" and "limit" in issue.message


def test_bad_yaml_and_missing_file_and_not_a_mapping(tmp_path):
    (issue,) = issues_of(tmp_path, "name: x\nstreams: [\n  {a: 1\n")
    assert issue.field == "(yaml)" and issue.line is not None
    (issue,) = issues_of(tmp_path, "- just a list\n")
    assert issue.field == "(root)" and "mapping" in issue.message
    with pytest.raises(ScenarioError) as e:
        load_scenario(tmp_path / "nope.yaml")
    assert e.value.issues[0].field == "(file)" and "nope.yaml" in str(e.value)


def test_find_scenario_by_name_or_path(tmp_path):
    assert find_scenario("smoke") == SCENARIOS_DIR / "smoke.yaml"
    f = write(tmp_path, GOOD)
    assert find_scenario(str(f)) == f
    assert find_scenario("no-such-scenario").name == "no-such-scenario"


def test_stream_locator_points_at_the_stream_line(tmp_path):
    f = write(tmp_path, GOOD)
    indexed = generate_indexed(load_scenario(f))
    locate = stream_locator(f, [i for i, _ in indexed])
    first_b = next(k for k, (i, _) in enumerate(indexed) if i == 1)
    assert locate(first_b, "model") == f"{f}:17: streams.1.model"
    first_a = next(k for k, (i, _) in enumerate(indexed) if i == 0)
    assert locate(first_a, "params.width") == f"{f}:13: streams.0.params.width"


def test_committed_scenarios_are_valid_yaml_mappings():
    for f in SCENARIOS_DIR.glob("*.yaml"):
        assert isinstance(yaml.safe_load(f.read_text()), dict), f
