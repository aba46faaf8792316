"""The step engine's policy (``worker/engine_policy.py``): joins and leaves at every step
position, cancel, incompatible members, the batch bound and the cost model, on a fake clock."""

from __future__ import annotations

import pytest

from genmedia.deployments.worker.engine_policy import (
    CompatKey,
    EnginePolicy,
    Member,
    StepCostModel,
    compat_key,
)
from genmedia.models.params import GenerationJob, GenerationParams

KEY = CompatKey("m", (64, 64), (), "text-to-image", None, True)


def _member(mid: str, *, key: CompatKey = KEY, rows: int = 1, steps: int = 4, rank: int = 1,
            deadline: float | None = None) -> Member:  # fmt: skip
    return Member(mid, key, rows, rank, steps, deadline)


def _run(policy: EnginePolicy, steps: int, now: float = 0.0, dt: float = 1.0) -> list[str]:
    """Run ``steps`` engine steps (boundary, then step); ids that finished, in order."""
    left = []
    for _ in range(steps):
        policy.boundary(now)
        left += [m.id for m in policy.step_done(dt)]
        now += dt
    return left


def _job(**params: object) -> GenerationJob:
    base: dict[str, object] = dict(
        model_id="m", width=64, height=64, num_inference_steps=4, guidance_scale=7.5,
        scheduler="euler",
    )  # fmt: skip
    base.update(params)
    return GenerationJob("r", GenerationParams(**base), "a cat", None, 1, 1)  # type: ignore[arg-type]


def test_compat_key_ignores_per_member_settings() -> None:
    a = compat_key(_job())
    assert a == compat_key(_job(guidance_scale=3.0, scheduler="ddim", num_inference_steps=9))
    assert a != compat_key(_job(guidance_scale=1.0))  # guidance off: one row per output
    assert a != compat_key(_job(width=128))
    assert a != compat_key(_job(adapters=(("x", 1.0),)))
    assert compat_key(_job(adapters=(("x", 1.0),))) != compat_key(_job(adapters=(("x", 0.5),)))
    assert a != compat_key(_job(task="image-to-image", strength=0.5))
    neg = GenerationJob("r", _job().params, "a cat", "blurry", 1, 1)
    assert compat_key(neg) == a
    assert compat_key(neg, negative_matters=True) != compat_key(_job(), negative_matters=True)


@pytest.mark.parametrize("join_at", range(4))
def test_join_at_every_step_position(join_at: int) -> None:
    policy = EnginePolicy(default_rows=4)
    policy.submit(_member("a", steps=4))
    finished = _run(policy, join_at)
    policy.submit(_member("b", steps=4))
    b = policy.boundary(float(join_at))
    assert "b" in [m.id for m in b.joined] and set(policy.running) == {"a", "b"}
    finished += [m.id for m in policy.step_done(1.0)]
    finished += _run(policy, 8)
    assert finished == ["a", "b"]
    assert policy.idle


def test_each_member_runs_its_own_steps() -> None:
    policy = EnginePolicy(default_rows=4)
    policy.submit(_member("long", steps=5))
    policy.submit(_member("short", steps=2))
    log: list[tuple[int, str]] = []
    for step in range(6):
        policy.boundary(float(step))
        log += [(step, m.id) for m in policy.step_done(1.0)]
    assert log == [(1, "short"), (4, "long")]


@pytest.mark.parametrize("cancel_at", range(4))
def test_cancel_removes_a_member_at_the_next_step(cancel_at: int) -> None:
    policy = EnginePolicy(default_rows=4)
    policy.submit(_member("a"))
    policy.submit(_member("b"))
    _run(policy, cancel_at)
    assert policy.cancel("b") and not policy.cancel("nope")
    b = policy.boundary(0.0)
    assert [m.id for m in b.cancelled] == ["b"]
    assert set(policy.running) == {"a"}
    assert _run(policy, 4 - cancel_at) == ["a"]


def test_cancel_a_waiting_member() -> None:
    policy = EnginePolicy(default_rows=1)
    policy.submit(_member("a"))
    policy.submit(_member("b"))
    policy.boundary(0.0)
    policy.cancel("b")
    assert [m.id for m in policy.boundary(1.0).cancelled] == ["b"]
    assert not policy.waiting


def test_incompatible_member_is_refused_and_blocks_later_joins() -> None:
    policy = EnginePolicy(default_rows=8)
    other = CompatKey("m", (64, 64), (("style", 1.0),), "text-to-image", None, True)
    policy.submit(_member("a", steps=2))
    policy.boundary(0.0)
    policy.submit(_member("lora", key=other))
    policy.submit(_member("c"))  # compatible, but arrived after the incompatible one
    b = policy.boundary(1.0)
    assert not b.joined and "incompatible" in b.refused["lora"]
    assert set(policy.running) == {"a"}
    policy.step_done(1.0)
    policy.step_done(1.0)  # a leaves: the set drains
    b = policy.boundary(2.0)
    assert [m.id for m in b.joined] == ["lora"] and policy.key == other
    assert "incompatible" in b.refused["c"]


def test_interactive_goes_first() -> None:
    policy = EnginePolicy(default_rows=1)
    policy.submit(_member("bulk", rank=1))
    policy.submit(_member("inter", rank=0))
    assert [m.id for m in policy.boundary(0.0).joined] == ["inter"]


def test_batch_bound() -> None:
    policy = EnginePolicy({"m": 3}, default_rows=8)
    with pytest.raises(ValueError, match="above the bound 3"):
        policy.submit(_member("huge", rows=4))
    policy.submit(_member("a", rows=2))
    policy.submit(_member("b", rows=2))
    policy.submit(_member("c", rows=1))
    b = policy.boundary(0.0)
    assert [m.id for m in b.joined] == ["a", "c"]  # b does not fit; c still does
    assert "batch bound" in b.refused["b"] and policy.rows == 3
    _run(policy, 4)
    assert [m.id for m in policy.boundary(4.0).joined] == ["b"]


def test_join_refused_when_it_breaks_an_interactive_deadline() -> None:
    # one step costs 1 s per row: a with 4 steps left at 1 row = 4 s, 8 s at 2 rows
    policy = EnginePolicy(default_rows=8, cost_prior=(1.0, 0.0))
    policy.submit(_member("a", rank=0, steps=4, deadline=5.0))
    policy.boundary(0.0)
    policy.submit(_member("bulk"))
    b = policy.boundary(0.0)
    assert not b.joined and "past its deadline" in b.refused["bulk"]
    # two steps later a has 2 left: 2 rows cost 4 s, 2 + 4 <= 5 fails ... still refused
    policy.step_done(1.0)
    assert "bulk" in policy.boundary(1.0).refused
    policy.step_done(1.0)
    policy.step_done(1.0)  # one left: 3 + 2 = 5 <= 5
    assert [m.id for m in policy.boundary(3.0).joined] == ["bulk"]


def test_a_member_already_late_does_not_block_joins() -> None:
    policy = EnginePolicy(default_rows=8, cost_prior=(1.0, 0.0))
    policy.submit(_member("a", rank=0, steps=4, deadline=1.0))
    policy.boundary(0.0)
    policy.submit(_member("b"))
    assert [m.id for m in policy.boundary(0.0).joined] == ["b"]


def test_without_a_cost_estimate_only_the_bound_applies() -> None:
    policy = EnginePolicy(default_rows=8)
    policy.submit(_member("a", rank=0, deadline=0.1))
    policy.boundary(0.0)
    policy.submit(_member("b"))
    assert [m.id for m in policy.boundary(0.0).joined] == ["b"]


def test_cost_model_fits_a_line() -> None:
    model = StepCostModel()
    assert model.predict(3) is None
    model.observe(2, 1.0)
    assert model.predict(4) == pytest.approx(2.0)  # one size seen: proportional
    for n in (1, 2, 4, 8):
        model.observe(n, 0.5 * n + 0.2)
    a, b = model.coefficients or (0.0, 0.0)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(0.2, abs=0.2)
    with pytest.raises(ValueError, match="rows > 0"):
        model.observe(0, 1.0)


def test_step_done_records_cost_per_key() -> None:
    policy = EnginePolicy(default_rows=4)
    policy.submit(_member("a", rows=2))
    policy.boundary(0.0)
    policy.step_done(0.4)
    assert policy.cost(KEY).predict(2) == pytest.approx(0.4)
    assert policy.running["a"].done == 1


def test_submit_twice_is_an_error() -> None:
    policy = EnginePolicy()
    policy.submit(_member("a"))
    with pytest.raises(ValueError, match="already"):
        policy.submit(_member("a"))


def test_no_joins_while_draining() -> None:
    policy = EnginePolicy(default_rows=4)
    policy.submit(_member("a"))
    assert [m.id for m in policy.boundary(0.0, admit=False).joined] == ["a"]  # empty set
    policy.submit(_member("b"))
    assert not policy.boundary(1.0, admit=False).joined
    assert [m.id for m in policy.boundary(1.0).joined] == ["b"]
