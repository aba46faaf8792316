"""Load-test scenarios: a YAML description of traffic, turned into a trace by seeded generators.

Where a load test starts: ``load_scenario`` reads and checks a scenario file (every problem at
once, each with file, line and field) and ``generate`` makes its trace — the same records for the
same file, whatever machine. The real replay (``replay.py``) and the simulator both consume the
trace; the report takes the scenario's SLOs and tenant weights. No HTTP, no Ray.

    name: smoke
    duration_s: 20
    seed: 7
    tenants: [{id: web, weight: 1}, {id: studio, weight: 2}]
    slo: {interactive: 5, batch: 30}           # end-to-end seconds per class
    streams:
      - tenant: web
        priority: interactive
        model: sd15-tiny
        params: {width: 64, height: 64, num_inference_steps: 4}
        variants:                              # optional weighted choice merged over params
          - {weight: 3, params: {num_images: 1}}
          - {weight: 1, params: {num_images: 2}}
        arrival: {process: poisson, rate: 1.0} # | gamma(rate, cv) | ramp | diurnal
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yaml.nodes import MappingNode, Node, SequenceNode

from genmedia.loadtests.arrivals import Arrival, arrival_times, expected_count
from genmedia.loadtests.traces import TraceRecord
from genmedia.models.config_issues import field_errors, loc
from genmedia.models.params import GenerateRequest

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
MAX_REQUESTS = 5_000_000  # expected requests of a whole scenario
TRACE_SETS = ("priority", "webhook_url", "return_base64")  # set by the trace / not for load


class TenantSpec(BaseModel):
    """A tenant of the scenario."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="Tenant id (the replay maps it to an API key).")
    weight: float = Field(
        default=1.0, gt=0, description="Fair-share weight (the report normalises by it)."
    )


class SloSpec(BaseModel):
    """Service-level objectives per priority class: end-to-end seconds a request may take."""

    model_config = ConfigDict(extra="forbid")

    interactive: float = Field(
        default=10.0, gt=0, description="Seconds from submit to result for interactive requests."
    )
    batch: float = Field(
        default=300.0, gt=0, description="Seconds from submit to result for batch requests."
    )

    def of(self, priority: str) -> float:
        return self.interactive if priority == "interactive" else self.batch


class Variant(BaseModel):
    """One weighted choice of parameters, merged over the stream's fixed ``params``."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(gt=0, description="Relative probability of this choice.")
    params: dict = Field(default_factory=dict, description="Request fields this choice sets.")


class StreamSpec(BaseModel):
    """One stream of requests: who sends what, and on which arrival process."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Label (default: stream<index>).")
    tenant: str = Field(min_length=1, description="Tenant id, one of the scenario's tenants.")
    priority: Literal["interactive", "batch"] = Field(description="Priority class.")
    model: str = Field(min_length=1, description="Catalog model id.")
    params: dict = Field(
        default_factory=dict,
        description="Request body fields every request of the stream sends (prompt, width, "
        "height, num_inference_steps, num_images, guidance_scale, ...). Without prompt or seed, "
        "each request gets its own.",
    )
    variants: list[Variant] = Field(
        default_factory=list,
        max_length=32,
        description="Optional weighted choice of extra parameters per request.",
    )
    deadline_s: float | None = Field(
        default=None, gt=0, description="Seconds after arrival by which each job must start."
    )
    arrival: Arrival = Field(description="Arrival process: poisson, gamma, ramp or diurnal.")
    start_s: float = Field(default=0.0, ge=0, description="When the stream starts sending.")
    end_s: float | None = Field(
        default=None, gt=0, description="When it stops (default: the scenario's end)."
    )


class Scenario(BaseModel):
    """A load-test scenario: tenants, SLOs and streams of requests over a time window."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=64,
        description="Scenario name (used in result directory names).",
    )
    description: str = Field(default="", description="What the scenario is for.")
    duration_s: float = Field(gt=0, description="Seconds of arrivals.")
    seed: int = Field(
        default=0, ge=0, description="Seed of every generator: same seed, same trace."
    )
    tenants: list[TenantSpec] = Field(min_length=1, description="Tenants and their weights.")
    slo: SloSpec = Field(default_factory=SloSpec, description="End-to-end SLO per class.")
    streams: list[StreamSpec] = Field(min_length=1, description="Streams of requests.")

    @property
    def weights(self) -> dict[str, float]:
        return {t.id: t.weight for t in self.tenants}

    def window(self, i: int) -> tuple[float, float]:
        s = self.streams[i]
        return s.start_s, s.end_s if s.end_s is not None else self.duration_s


@dataclass(frozen=True)
class ScenarioIssue:
    """One problem of a scenario file, located by file, line and field."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class ScenarioError(ValueError):
    """Every problem found in a scenario file."""

    def __init__(self, issues: list[ScenarioIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def _line_of(node: Node | None, parts: tuple) -> int | None:
    """The YAML line of the deepest key of ``parts`` present in the document."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in parts:
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    node, line = value, key.start_mark.line + 1
                    break
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
    return line


def _clean(parts: tuple) -> tuple:
    """A pydantic location without the discriminator tags of tagged unions."""
    return tuple(
        p
        for i, p in enumerate(parts)
        if not (i and parts[i - 1] == "arrival" and isinstance(p, str))
    )


def _param_issues(params: dict, where: tuple) -> list[tuple[tuple, str]]:
    out: list[tuple[tuple, str]] = []
    for key in TRACE_SETS:
        if key in params:
            out.append(((*where, key), "set by the scenario, not by params"))
    body = {"prompt": "x", **{k: v for k, v in params.items() if k not in TRACE_SETS}}
    try:
        GenerateRequest.model_validate(body)
    except ValidationError as e:
        for err, (_, message) in zip(e.errors(), field_errors(e), strict=True):
            out.append(((*where, *err["loc"]), message))
    return out


def _cross_issues(s: Scenario) -> list[tuple[tuple, str]]:
    """Checks across fields: known tenants, windows, parameters, total size."""
    out: list[tuple[tuple, str]] = []
    ids = [t.id for t in s.tenants]
    for i, tid in enumerate(ids):
        if tid in ids[:i]:
            out.append((("tenants", i, "id"), f"duplicate tenant {tid!r}"))
    total = 0.0
    for i, st in enumerate(s.streams):
        if st.tenant not in ids:
            out.append((("streams", i, "tenant"), f"unknown tenant {st.tenant!r}; known: {ids}"))
        start, end = s.window(i)
        if end > s.duration_s:
            out.append((("streams", i, "end_s"), f"after the scenario's end ({s.duration_s:g})"))
        if start >= end:
            out.append((("streams", i, "start_s"), f"must be before the stream's end ({end:g})"))
        out += _param_issues(st.params, ("streams", i, "params"))
        for j, v in enumerate(st.variants):
            out += _param_issues(v.params, ("streams", i, "variants", j, "params"))
        arrival = st.arrival
        if getattr(arrival, "process", "") == "ramp" and (
            getattr(arrival, "from_rate", None) == getattr(arrival, "to_rate", None) == 0
        ):
            out.append((("streams", i, "arrival", "to_rate"), "a ramp from 0 to 0 sends nothing"))
        total += expected_count(arrival, max(0.0, end - start))
    if total > MAX_REQUESTS:
        out.append((("streams",), f"expects {total:,.0f} requests; the limit is {MAX_REQUESTS:,}"))
    return out


def parse_scenario(data: object, file: str = "<scenario>", root: Node | None = None) -> Scenario:
    """Validate scenario data; raise ``ScenarioError`` with every problem (``root``: the YAML
    node tree, for line numbers)."""
    problems: list[tuple[tuple, str]] = []
    scenario = None
    if not isinstance(data, dict):
        problems.append(((), "a scenario must be a mapping"))
    else:
        try:
            scenario = Scenario.model_validate(data)
        except ValidationError as e:
            for err, (_, message) in zip(e.errors(), field_errors(e), strict=True):
                problems.append((_clean(err["loc"]), message))
    if scenario is not None:
        problems += _cross_issues(scenario)
    if problems:
        raise ScenarioError(
            [ScenarioIssue(file, _line_of(root, parts), loc(parts), msg) for parts, msg in problems]
        )
    assert scenario is not None
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario YAML file; ``ScenarioError`` names file, line and field."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ScenarioError([ScenarioIssue(file, None, "(file)", e.strerror or str(e))]) from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(e, "problem", None) or str(e)
        issue = ScenarioIssue(file, line, "(yaml)", f"invalid YAML: {problem}")
        raise ScenarioError([issue]) from None
    return parse_scenario(data, file, root)


def find_scenario(name_or_path: str | Path) -> Path:
    """A scenario file: an existing path, or the name of a committed scenario (``smoke``)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    committed = SCENARIOS_DIR / f"{name_or_path}.yaml"
    return committed if committed.exists() else path


def _stream_records(s: Scenario, i: int) -> list[tuple[float, int, int, TraceRecord]]:
    st = s.streams[i]
    rng = np.random.default_rng([s.seed, i])  # per stream: adding a stream changes no other
    start, end = s.window(i)
    times = arrival_times(st.arrival, end - start, rng) + start
    n = len(times)
    picks = np.zeros(n, dtype=int)
    if st.variants:
        w = np.array([v.weight for v in st.variants], dtype=float)
        picks = rng.choice(len(w), size=n, p=w / w.sum())
    seeds = rng.integers(0, 2**31, n)
    label = st.name or f"stream{i}"
    out = []
    for k in range(n):
        params = {**st.params, **(st.variants[picks[k]].params if st.variants else {})}
        params.setdefault("prompt", f"{s.name} {label} {k}")
        params.setdefault("seed", int(seeds[k]))
        record = TraceRecord.model_construct(
            t=round(float(times[k]), 6),
            tenant=st.tenant,
            priority=st.priority,
            model=st.model,
            params=params,
            deadline_s=st.deadline_s,
        )
        out.append((record.t, i, k, record))
    return out


def generate_indexed(scenario: Scenario) -> list[tuple[int, TraceRecord]]:
    """(stream index, record) of the whole trace, sorted by arrival time."""
    rows = [row for i in range(len(scenario.streams)) for row in _stream_records(scenario, i)]
    rows.sort(key=lambda r: r[:3])
    return [(r[1], r[3]) for r in rows]


def generate(scenario: Scenario) -> list[TraceRecord]:
    """The scenario's trace, sorted by arrival time; a pure function of the scenario."""
    return [rec for _, rec in generate_indexed(scenario)]


def stream_locator(path: str | Path, streams: list[int]) -> Callable[[int, str], str]:
    """``(trace index, field) → "file:line: streams.<i>.<field>"``: where a generated request's
    field comes from in the scenario file (``streams``: the stream of each trace record)."""
    try:
        root = yaml.compose(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        root = None

    def locate(index: int, field: str) -> str:
        parts = ("streams", streams[index], *field.split("."))
        line = _line_of(root, parts)
        return f"{path}:{line}: {loc(parts)}" if line else f"{path}: {loc(parts)}"

    return locate
