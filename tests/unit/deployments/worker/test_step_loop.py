"""The replica's step engine without Ray (``worker/step_loop.py``, ``run_step_call``): calls
join a running set, leave when done, are cancelled at a step boundary, and store the same
images as the request-level path, on the tiny SD1.5-style model."""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genmedia.deployments.protocol import BatchRequest, PriorityClass, ProgressEvent, WorkerResult
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.worker.batch import (
    AdapterFiles,
    WorkerContext,
    finish_call,
    run_batch_call,
    run_step_call,
)
from genmedia.deployments.worker.engine_policy import StepCostModel, compat_key
from genmedia.deployments.worker.gate import Cancelled, StepGate
from genmedia.deployments.worker.step_loop import DECODE_WAIT_STEPS, StepCall, StepLoop
from genmedia.models import registry
from genmedia.models.catalog import parse_catalog
from genmedia.models.params import GenerateRequest, GenerationJob, resolve_request
from genmedia.models.runner import LoadedModel, load_model
from genmedia.models.step_engine import MemberState, UNetStepEngine, engine_for


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = tmp_path_factory.mktemp("step-loop") / "sd15"
    registry.family_module("sd15").build_tiny(path, seed=0)
    bounds = {"default": 64, "min": 32, "max": 128}
    catalog = parse_catalog(
        {
            "models": [
                {
                    "id": "m",
                    "family": "sd15",
                    "weights": str(path),
                    "max_batch_size": 4,
                    "parameters": {
                        "width": bounds,
                        "height": bounds,
                        "steps": {"default": 4, "min": 1, "max": 10},
                        "num_images": {"default": 1, "min": 1, "max": 4},
                    },
                }
            ]
        }
    )
    return load_model(catalog.models[0], path, "cpu")


def _job(model: LoadedModel, rid: str, **body: object) -> GenerationJob:
    body.setdefault("prompt", "a cat")
    job, errors = resolve_request(model.entry, GenerateRequest(**body), request_id=rid)  # type: ignore[arg-type]
    assert not errors and job is not None, errors
    return job


def _request(batch_id: str, jobs: list[GenerationJob], priority: str = "batch") -> BatchRequest:
    return BatchRequest(
        batch_id, "m", PriorityClass(priority), jobs, {j.request_id: "t" for j in jobs}
    )


def _context(tmp_path: Path) -> WorkerContext:
    return WorkerContext(
        gate=StepGate(),
        storage=LocalDirStorage(tmp_path),
        device="cpu",
        threads=1,
        replica="r1",
        adapter_files=AdapterFiles(max_bytes=1 << 20),
    )


def _images(ctx: WorkerContext, result: WorkerResult) -> list[np.ndarray]:
    out = []
    for job in result.jobs:
        for o in job.outputs:
            data = ctx.storage.get(o.key)
            assert data is not None
            out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16))
    return out


def test_calls_join_a_running_set_and_match_the_request_path(
    model: LoadedModel, tmp_path: Path
) -> None:
    ctx = _context(tmp_path / "step")
    loop = StepLoop(ctx)
    reqs = [
        _request("b1", [_job(model, "r1", seed=1, num_inference_steps=6)]),
        _request("b2", [_job(model, "r2", seed=2, num_images=2, scheduler="ddim")]),
        _request("b3", [_job(model, "r3", seed=3, num_inference_steps=2)], "interactive"),
    ]
    assert all(loop.accepts(model, r) for r in reqs)
    first_step = threading.Event()
    events: dict[str, list[ProgressEvent]] = {r.batch_id: [] for r in reqs}

    def emit(batch_id: str):
        def _emit(e: ProgressEvent) -> None:
            events[batch_id].append(e)
            first_step.set()

        return _emit

    results: dict[str, WorkerResult] = {}

    def run(req: BatchRequest) -> None:
        results[req.batch_id] = run_step_call(
            ctx, loop, model, req, threading.Event(), emit(req.batch_id)
        )

    threads = [threading.Thread(target=run, args=(reqs[0],))]
    threads[0].start()
    assert first_step.wait(60)  # the others join a set that is already running
    threads += [threading.Thread(target=run, args=(r,)) for r in reqs[1:]]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(120)
    assert set(results) == {"b1", "b2", "b3"}
    assert events["b1"][-1] == ProgressEvent(6, 6) and events["b3"][-1] == ProgressEvent(2, 2)
    ref_ctx = _context(tmp_path / "request")
    for req in reqs:
        got = results[req.batch_id]
        t = got.timings
        assert t.compute_s > 0 and 0 <= t.device_s <= t.compute_s and t.wait_s >= 0
        want = run_batch_call(ref_ctx, model, req, threading.Event(), lambda e: None)
        for g, w in zip(_images(ctx, got), _images(ref_ctx, want), strict=True):
            assert int(np.abs(g - w).max()) <= 1
    assert not ctx.gate.busy or loop.policy.idle
    assert loop.policy.idle and not loop.calls


def test_cancel_before_a_step(model: LoadedModel, tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    loop = StepLoop(ctx)
    cancel = threading.Event()
    cancel.set()
    req = _request("b1", [_job(model, "r1")])
    with pytest.raises(Cancelled):
        run_step_call(ctx, loop, model, req, cancel, lambda e: None)
    assert not list(tmp_path.rglob("*.png")) and ctx.pins.others("m", "") == set()


class _Decodes:
    """The model's step engine, recording the jobs of each batched prepare and decode;
    members of ``broken`` fail to decode."""

    def __init__(self, model: LoadedModel, broken: str | None = None) -> None:
        engine = engine_for(model)
        assert isinstance(engine, UNetStepEngine)
        self.inner, self.broken = engine, broken
        self.batches: list[list[str]] = []
        self.prepared: list[list[str]] = []
        self.steps_run = 0  # counted by a test that wraps ``step``
        self.prepared_at: dict[str, int] = {}  # job id -> steps run when it was prepared
        self.prepare, self.step = engine.prepare, engine.step

    def prepare_many(self, jobs: list[GenerationJob], sources: list) -> list[MemberState]:
        self.prepared.append([j.request_id for j in jobs])
        self.prepared_at.update({j.request_id: self.steps_run for j in jobs})
        return self.inner.prepare_many(jobs, sources)  # type: ignore[attr-defined]

    def _check(self, members: list[MemberState]) -> None:
        if any(m.job.request_id == self.broken for m in members):
            raise RuntimeError("decode failed")

    def decode(self, member: MemberState) -> list[np.ndarray]:
        self._check([member])
        return self.inner.decode(member)

    def decode_many(self, members: list[MemberState]) -> list[list[np.ndarray]]:
        self.batches.append([m.job.request_id for m in members])
        self._check(members)
        return self.inner.decode_many(members)


def _together(loop: StepLoop, model: LoadedModel, reqs: list[BatchRequest]) -> list[StepCall]:
    """Submit calls so they join at the same step boundary (the loop waits on its lock)."""
    with loop._cond:
        calls = [loop.submit(model, r, {}, threading.Event(), lambda e: None) for r in reqs]
    for call in calls:
        assert call.finished.wait(60)
    return calls


@pytest.mark.parametrize("broken", [None, "r2"])
def test_calls_that_finish_together_decode_in_one_batch(
    model: LoadedModel, tmp_path: Path, broken: str | None
) -> None:
    """Calls joining at one boundary prepare in one batch, and calls finishing on the same
    step decode in one VAE forward; a failure there decodes them one by one, so only the
    broken call fails."""
    ctx = _context(tmp_path)
    loop = StepLoop(ctx)
    engine = loop._engines[id(model)] = _Decodes(model, broken)  # type: ignore[assignment]
    reqs = [
        _request("b1", [_job(model, "r1", seed=1, num_inference_steps=3)]),
        _request("b2", [_job(model, "r2", seed=2, num_inference_steps=3, num_images=2)]),
    ]
    first, second = _together(loop, model, reqs)
    assert engine.prepared == [["r1", "r2"]] and engine.batches[0] == ["r1", "r2"]
    assert first.error is None and first.outputs is not None
    want = engine.inner.decode_many(first.states)
    assert all(np.array_equal(g, w) for g, w in zip(first.outputs[0], want[0], strict=True))
    if broken:
        assert isinstance(second.error, RuntimeError) and second.outputs is None
    else:
        assert second.error is None and second.outputs is not None
        assert [len(o) for o in second.outputs] == [2]
    assert first.times.compute_s > 0 and loop.policy.idle


@pytest.mark.parametrize(
    ("priority", "batches"), [("batch", [["r1", "r2"]]), ("interactive", [["r1"], ["r2"]])]
)
def test_a_finished_batch_job_waits_for_others_to_decode(
    model: LoadedModel, tmp_path: Path, priority: str, batches: list[list[str]]
) -> None:
    """A batch-class job that finishes while the set goes on waits (up to DECODE_WAIT_STEPS)
    and decodes with the next jobs to finish; an interactive job decodes at once."""
    ctx = _context(tmp_path)
    loop = StepLoop(ctx)
    loop.policy.join_slowdown = 100.0  # the batch-class job may join the interactive one
    engine = loop._engines[id(model)] = _Decodes(model)  # type: ignore[assignment]
    later = _request("b2", [_job(model, "r2", seed=2, num_inference_steps=3)])
    joined: list[StepCall] = []
    step = engine.step

    def step_then_submit(members: list[MemberState]) -> None:
        step(members)
        if not joined:  # joins at the second boundary: finishes one step after the first
            joined.append(loop.submit(model, later, {}, threading.Event(), lambda e: None))

    engine.step = step_then_submit  # type: ignore[method-assign]
    first = _request("b1", [_job(model, "r1", seed=1, num_inference_steps=3)], priority)
    call = loop.submit(model, first, {}, threading.Event(), lambda e: None)
    assert call.finished.wait(60) and joined and joined[0].finished.wait(60)
    assert call.error is None and joined[0].error is None
    assert engine.batches == batches
    assert DECODE_WAIT_STEPS >= 1 and loop.policy.idle and not loop._finished


def test_what_the_loop_accepts(model: LoadedModel, tmp_path: Path) -> None:
    loop = StepLoop(_context(tmp_path))
    inpaint = _job(model, "r1")
    inpaint.params = replace(inpaint.params, task="inpainting", strength=0.5)
    assert not loop.accepts(model, _request("b1", [inpaint]))
    assert loop.accepts(model, _request("b2", [_job(model, "r2")]))
    assert loop.accepts(model, _request("b3", [_img2img(model, "r3", _context(tmp_path))]))


def _img2img(model: LoadedModel, rid: str, ctx: WorkerContext, **body: object) -> GenerationJob:
    """An image-to-image job whose input image is in the context's storage."""
    job = _job(model, rid, **body)
    pixels = np.random.default_rng(len(rid)).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    key = f"t/inputs/{rid}.png"
    ctx.storage.put(key, buf.getvalue(), "image/png")
    job.params = replace(job.params, task="image-to-image", strength=0.5)
    job.extra = {**job.extra, "inputs": {"image": key}}
    return job


def test_img2img_calls_read_their_inputs_and_match_the_request_path(
    model: LoadedModel, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    loop = StepLoop(ctx)
    reqs = [
        _request("b1", [_img2img(model, "r1", ctx, seed=1, num_inference_steps=6)]),
        _request("b2", [_img2img(model, "r22", ctx, seed=2, num_images=2, scheduler="ddim")]),
    ]
    results: dict[str, WorkerResult] = {}

    def run(req: BatchRequest) -> None:
        results[req.batch_id] = run_step_call(
            ctx, loop, model, req, threading.Event(), lambda e: None
        )

    threads = [threading.Thread(target=run, args=(r,)) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(results) == {"b1", "b2"}
    assert loop.policy.max_rows["m"] == 4  # the catalog's max_batch_size, within the engine's
    for req in reqs:
        want = run_batch_call(ctx, model, req, threading.Event(), lambda e: None)
        for g, w in zip(_images(ctx, results[req.batch_id]), _images(ctx, want), strict=True):
            assert int(np.abs(g - w).max()) <= 1


def test_a_missing_input_fails_the_call_before_it_joins(model: LoadedModel, tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    loop = StepLoop(ctx)
    job = _img2img(model, "r1", ctx)
    ctx.storage.delete(job.extra["inputs"]["image"])
    with pytest.raises(FileNotFoundError, match="input image of r1 is gone"):
        run_step_call(ctx, loop, model, _request("b1", [job]), threading.Event(), lambda e: None)
    assert loop.policy.idle and not loop.calls


class _FixedCost(StepCostModel):
    def __init__(self, ab: tuple[float, float]) -> None:
        super().__init__()
        self.ab = ab

    @property
    def coefficients(self) -> tuple[float, float] | None:
        return self.ab


def test_an_interactive_call_parks_a_slow_batch_set_which_resumes_where_it_was(
    model: LoadedModel, tmp_path: Path
) -> None:
    """A 4-row batch set: one interactive row in it would step at 5x its step alone, so at the
    next boundary the batch job is parked, the interactive job runs its 2 steps alone, and the
    batch job resumes with its sampler state (prepared once, 6 steps in all, paused meanwhile);
    both store what the request path stores."""
    ctx = _context(tmp_path / "step")
    loop = StepLoop(ctx)
    engine = loop._engines[id(model)] = _Decodes(model)  # type: ignore[assignment]
    loop.policy.max_rows["m"] = 8
    # seconds per step a·n + b as for a small model (the fixed part matters), whatever the
    # tiny model's steps measure here: one interactive row in the 5-row set steps at 7 / 3 of
    # its step alone, and interactive calls share steps well (``sets_pay``)
    key = compat_key(_job(model, "k"))
    loop.policy.costs[key.cost_key] = _FixedCost((1.0, 2.0))
    steps: list[list[str]] = []
    inter_in = threading.Event()

    def step(members: list[MemberState]) -> None:
        engine.inner.step(members)
        steps.append([m.job.request_id for m in members])
        if len(steps) == 1:  # the interactive call arrives during the set's first step
            assert inter_in.wait(60)

    engine.step = step
    bulk = _request("b1", [_job(model, "r1", seed=1, num_images=4, num_inference_steps=6)])
    inter = _request("b2", [_job(model, "r2", seed=2, num_inference_steps=2)], "interactive")
    first = loop.submit(model, bulk, {}, threading.Event(), lambda e: None)
    while not steps:
        threading.Event().wait(0.001)
    assert loop.accepts(model, inter)  # a member: it parks the set rather than take the gate
    second = loop.submit(model, inter, {}, threading.Event(), lambda e: None)
    inter_in.set()
    assert first.finished.wait(60) and second.finished.wait(60)
    assert steps == [["r1"], ["r2"], ["r2"]] + [["r1"]] * 5
    assert engine.prepared == [["r1"], ["r2"]]  # the parked job was not prepared again
    assert ctx.gate.preemptions == 1  # the park, as the replica's info reports it
    # parked while the interactive job ran its steps and decoded
    assert first.times.paused_s > max(second.times.paused_s, 0.5 * second.times.compute_s)
    ref_ctx = _context(tmp_path / "request")
    for call in (first, second):
        assert call.error is None
        got = finish_call(ctx, model, call.req, call.outputs or [], call.times)
        want = run_batch_call(ref_ctx, model, call.req, threading.Event(), lambda e: None)
        for g, w in zip(_images(ctx, got), _images(ref_ctx, want), strict=True):
            assert int(np.abs(g - w).max()) <= 1
    assert loop.policy.idle and not loop.calls and not loop.jobs


def test_a_calls_jobs_join_one_by_one_as_the_set_has_room(
    model: LoadedModel, tmp_path: Path
) -> None:
    """Each job is a member of its own: with 3 of the set's 4 rows taken, one job of a
    two-job call joins now and the other when rows free up; both match the request path."""
    ctx = _context(tmp_path / "step")
    loop = StepLoop(ctx)
    engine = loop._engines[id(model)] = _Decodes(model)  # type: ignore[assignment]
    wide = _request("b1", [_job(model, "r1", seed=1, num_images=3, num_inference_steps=3)])
    pair = _request(
        "b2",
        [
            _job(model, "r2", seed=2, num_inference_steps=2),
            _job(model, "r3", seed=3, num_inference_steps=2),
        ],
    )
    first, second = _together(loop, model, [wide, pair])
    assert engine.prepared == [["r1", "r2"], ["r3"]]
    assert first.error is None and second.error is None and second.outputs is not None
    assert [len(o) for o in second.outputs] == [1, 1]
    ref_ctx = _context(tmp_path / "request")
    for call in (first, second):
        got = finish_call(ctx, model, call.req, call.outputs or [], call.times)
        want = run_batch_call(ref_ctx, model, call.req, threading.Event(), lambda e: None)
        for g, w in zip(_images(ctx, got), _images(ref_ctx, want), strict=True):
            assert int(np.abs(g - w).max()) <= 1
    assert loop.policy.idle and not loop.calls and not loop.jobs


def test_a_job_cancelled_on_its_own_leaves_and_its_call_goes_on(
    model: LoadedModel, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    loop = StepLoop(ctx)
    engine = loop._engines[id(model)] = _Decodes(model)  # type: ignore[assignment]
    req = _request("b1", [_job(model, "r1", seed=1), _job(model, "r2", seed=2)])
    ctx.cancelled_jobs["b1"] = {"r2"}
    result = run_step_call(ctx, loop, model, req, threading.Event(), lambda e: None)
    assert engine.prepared == [["r1"]]
    assert [len(j.outputs) for j in result.jobs] == [1, 0]
    assert loop.policy.idle and not loop.calls and not loop.jobs


class _OneByOne(_Decodes):
    """An engine that prepares job by job (no ``prepare_many``), recording each prepare."""

    prepare_many = None  # type: ignore[assignment]

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        inner = self.prepare

        def prepare(job: GenerationJob, source: dict | None = None) -> MemberState:
            self.prepared.append([job.request_id])
            self.prepared_at[job.request_id] = self.steps_run
            return inner(job, source)

        self.prepare = prepare  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("engine_kind", "prepared"),
    [
        ("batched", [["r1", "r2", "r3", "r4"], ["r5", "r6", "r7"]]),
        ("one by one", [[f"r{k}"] for k in range(1, 8)]),
    ],
)
def test_jobs_next_in_line_prepare_with_a_joiner_and_join_later(
    model: LoadedModel, tmp_path: Path, engine_kind: str, prepared: list[list[str]]
) -> None:
    """A full set gains a job at a time: the job joining prepares with the waiting jobs of the
    set's key next in line (up to the set's 4 rows), which join later with nothing left to
    prepare; their wait still ends when they join, and every image matches the request path.
    An engine that prepares job by job prepares each job when it joins."""
    ctx = _context(tmp_path / "step")
    loop = StepLoop(ctx)
    kind = _Decodes if engine_kind == "batched" else _OneByOne
    engine = loop._engines[id(model)] = kind(model)  # type: ignore[assignment]
    first = [
        _request(f"b{k}", [_job(model, f"r{k}", seed=k, num_inference_steps=steps)])
        for k, steps in ((1, 2), (2, 5), (3, 5), (4, 5))
    ]
    later = [
        _request(f"b{k}", [_job(model, f"r{k}", seed=k, num_inference_steps=2)]) for k in (5, 6, 7)
    ]
    calls: list[StepCall] = []
    step = engine.step

    def step_then_submit(members: list[MemberState]) -> None:
        step(members)
        engine.steps_run += 1
        if not calls:  # waiting while the set is full: r5 joins when r1 leaves, r6, r7 at r2's
            with loop._cond:
                calls.extend(
                    loop.submit(model, r, {}, threading.Event(), lambda e: None) for r in later
                )

    engine.step = step_then_submit  # type: ignore[method-assign]
    started = _together(loop, model, first)
    assert all(c.finished.wait(60) for c in calls)
    assert engine.prepared == prepared
    at = engine.prepared_at  # with r5 (after r1's 2 steps), or each when it joins
    assert at["r5"] == 2
    assert (at["r6"], at["r7"]) == ((2, 2) if engine_kind == "batched" else (4, 5))
    assert calls[1].times.wait_s > calls[0].times.wait_s  # r6 waited until it joined
    ref_ctx = _context(tmp_path / "request")
    for call in started + calls:
        assert call.error is None, call.error
        got = finish_call(ctx, model, call.req, call.outputs or [], call.times)
        want = run_batch_call(ref_ctx, model, call.req, threading.Event(), lambda e: None)
        for g, w in zip(_images(ctx, got), _images(ref_ctx, want), strict=True):
            assert int(np.abs(g - w).max()) <= 1
    assert loop.policy.idle and not loop.calls and not loop.jobs
