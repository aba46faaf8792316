"""The step engine's policy (``worker/engine_policy.py``): joins and leaves at every step
position, cancel, incompatible members, the batch bound, the cost model and the entry rule for
interactive calls, on a fake clock."""

from __future__ import annotations

import pytest

from genmedia.deployments.worker.engine_policy import (
    JOIN_SLOWDOWN,
    CompatKey,
    EnginePolicy,
    Member,
    StepCostModel,
    compat_key,
    joins_running_set,
    sets_pay,
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
    # one step costs 1 s per row: a with 4 steps left at 1 row = 4 s, 8 s at 2 rows (the
    # slowdown bound is lifted: this is the deadline check alone)
    policy = EnginePolicy(default_rows=8, cost_prior=(1.0, 0.0), join_slowdown=100.0)
    policy.submit(_member("a", rank=0, steps=4, deadline=5.0))
    policy.boundary(0.0)
    policy.submit(_member("bulk"))
    b = policy.boundary(0.0)
    assert not b.joined and "past its deadline" in b.refused["bulk"]
    assert b.deadline_refused == ["bulk"]
    # two steps later a has 2 left: 2 rows cost 4 s, 2 + 4 <= 5 fails ... still refused
    policy.step_done(1.0)
    assert "bulk" in policy.boundary(1.0).refused
    policy.step_done(1.0)
    policy.step_done(1.0)  # one left: 3 + 2 = 5 <= 5
    assert [m.id for m in policy.boundary(3.0).joined] == ["bulk"]


def test_a_member_already_late_does_not_block_joins() -> None:
    policy = EnginePolicy(default_rows=8, cost_prior=(1.0, 0.0), join_slowdown=100.0)
    policy.submit(_member("a", rank=0, steps=4, deadline=1.0))
    policy.boundary(0.0)
    policy.submit(_member("b"))
    assert [m.id for m in policy.boundary(0.0).joined] == ["b"]


def test_bulk_joins_a_set_with_interactive_members_only_within_the_slowdown_bound() -> None:
    """While interactive members run, batch-class ones join only while the set's step stays
    within ``join_slowdown`` x the interactive rows' step alone (the bound the entry rule let
    them in with); the set refills when they leave, and sets without them are not bounded."""
    # a step costs 1·rows + 1.4: an interactive row alone 2.4, within 1.5x up to 3.6 (2 rows)
    policy = EnginePolicy(default_rows=8, cost_prior=(1.0, 1.4))
    policy.submit(_member("fast", rank=0, steps=2))
    policy.boundary(0.0)
    for name in ("b1", "b2", "b3"):
        policy.submit(_member(name))
    b = policy.boundary(0.0)
    assert [m.id for m in b.joined] == ["b1"]
    assert "would slow the set's interactive members" in b.refused["b2"]
    assert b.deadline_refused == []  # not a deadline refusal: it waits for them to leave
    assert [m.id for m in policy.step_done(3.4, steps=2)] == ["fast"]  # b1 has 2 steps left
    assert [m.id for m in policy.boundary(2.0).joined] == ["b2", "b3"]
    policy.submit(_member("b4"))
    assert [m.id for m in policy.boundary(2.0).joined] == ["b4"]  # no interactive: the bound


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


def test_deadline_refused_lists_only_the_deadline_check() -> None:
    policy = EnginePolicy({"m": 2}, default_rows=8, cost_prior=(1.0, 0.0), join_slowdown=100.0)
    policy.submit(_member("a", rank=0, steps=4, deadline=5.0))
    policy.boundary(0.0)
    policy.submit(_member("big", rows=2))  # over the bound
    policy.submit(_member("small"))  # fits, but breaks a's deadline
    b = policy.boundary(0.0)
    assert set(b.refused) == {"big", "small"} and b.deadline_refused == ["small"]


# an SDXL-like step: the per-row part dominates (a = 1, b = 0.2); SD1.5-like: b = 1.4 a
ROW_BOUND = (1.0, 0.2)
FIXED_BOUND = (1.0, 1.4)


@pytest.mark.parametrize(
    ("rank", "rows", "set_rows", "set_rank", "ab", "joins"),
    [
        (1, 1, 8, 1, ROW_BOUND, True),  # batch class: always
        (0, 1, 0, None, ROW_BOUND, True),  # empty set
        (0, 1, 4, 1, None, True),  # no cost known yet: today's behaviour
        (0, 1, 4, 0, ROW_BOUND, True),  # the set holds an interactive member
        (0, 1, 4, 1, ROW_BOUND, False),  # 5.2 s vs 1.5 x 1.2 s alone
        (0, 1, 1, 1, ROW_BOUND, False),  # 2.2 > 1.8
        (0, 1, 1, 1, FIXED_BOUND, True),  # 3.4 <= 3.6
        (0, 1, 2, 1, FIXED_BOUND, False),  # 4.4 > 3.6
        (0, 4, 2, 1, FIXED_BOUND, True),  # 7.4 <= 8.1: a big call barely slows
    ],
)
def test_joins_running_set(
    rank: int,
    rows: int,
    set_rows: int,
    set_rank: int | None,
    ab: tuple[float, float] | None,
    joins: bool,
) -> None:
    assert joins_running_set(rank, rows, set_rows, set_rank, ab) is joins


def test_joins_running_set_follows_the_slowdown_bound() -> None:
    assert JOIN_SLOWDOWN >= 1.0
    # a·(n + r) + b <= s·(a·r + b): 1·(4 + 1) + 0.2 = 5.2 vs s·1.2
    assert not joins_running_set(0, 1, 4, 1, ROW_BOUND, slowdown=4.0)
    assert joins_running_set(0, 1, 4, 1, ROW_BOUND, slowdown=4.4)
    with pytest.raises(ValueError, match=r"at least 1\.0"):
        joins_running_set(0, 1, 4, 1, ROW_BOUND, slowdown=0.5)


PAYS = (1.0, 2.0)  # a step's fixed part matters (a small model): sets of interactive calls pay


def test_accepts_an_interactive_call_that_cannot_join_only_where_sets_pay() -> None:
    """Of a batch-class set's key, an interactive call that cannot join becomes a member (it
    parks the set) where its calls gain from sharing steps (``sets_pay``); where a step's cost
    grows with its rows it takes the request path and preempts the set at the gate."""
    other = CompatKey("m", (128, 128), (), "text-to-image", None, True)
    assert sets_pay(PAYS, 1, JOIN_SLOWDOWN) and not sets_pay(ROW_BOUND, 1, JOIN_SLOWDOWN)
    for prior, interactive in ((PAYS, True), (ROW_BOUND, False), (None, True)):
        policy = EnginePolicy(default_rows=8, cost_prior=prior)
        assert policy.accepts(KEY, 1, 0) and policy.accepts(other, 1, 1)  # empty
        policy.submit(_member("bulk", rows=4))
        policy.boundary(0.0)
        assert policy.accepts(KEY, 1, 1)  # batch class joins
        assert policy.accepts(KEY, 1, 0) is interactive  # unknown cost: it joins the set
        assert not policy.accepts(other, 1, 0) and not policy.accepts(other, 1, 1)
        policy.submit(_member("inter", rank=0))
        policy.boundary(0.0)
        assert policy.accepts(KEY, 1, 0)  # a set with an interactive member: it joins
    with pytest.raises(ValueError, match="join_slowdown"):
        EnginePolicy(join_slowdown=0.9)


def _bulk_running(policy: EnginePolicy, rows: int = 4, steps_run: int = 1) -> Member:
    bulk = _member("bulk", rows=rows)
    policy.submit(bulk)
    policy.boundary(0.0)
    for _ in range(steps_run):
        policy.step_done(ROW_BOUND[0] * rows + ROW_BOUND[1])  # steps cost what the prior says
    return bulk


def test_an_interactive_member_parks_a_batch_set_it_would_slow_too_much() -> None:
    """4 batch rows: a step with the interactive row costs 7 / 3 = 2.3x its step alone. The
    batch member goes back to wait with its progress, the interactive one runs without it
    (the parked member does not rejoin around it) and the batch member resumes (no new
    prepare: ``resumed``) once it left."""
    policy = EnginePolicy(default_rows=8, cost_prior=PAYS)
    bulk = _bulk_running(policy)
    policy.submit(_member("inter", rank=0, steps=2))
    b = policy.boundary(1.0)
    assert [m.id for m in b.parked] == ["bulk"] and [m.id for m in b.joined] == ["inter"]
    assert list(policy.running) == ["inter"] and bulk.done == 1 and "bulk" in policy.waiting
    assert b.refused["bulk"].startswith("a parked set resumes")
    assert [m.id for m in policy.step_done(3.0, steps=2)] == ["inter"]
    b = policy.boundary(3.0)
    assert [m.id for m in b.joined] == ["bulk"] and b.resumed == ["bulk"] and not b.parked
    assert bulk.done == 1 and bulk.left == 3
    assert _run(policy, 3) == ["bulk"]
    # a looser bound: the interactive member joins the set, nothing is parked (the step seen,
    # 4.2 s for 4 rows, fits 1.05 s a row: 5 rows cost 5x one)
    loose = EnginePolicy(default_rows=8, cost_prior=PAYS, join_slowdown=5.0)
    _bulk_running(loose)
    loose.submit(_member("inter", rank=0))
    b = loose.boundary(1.0)
    assert not b.parked and [m.id for m in b.joined] == ["inter"] and loose.rows == 5


def test_a_full_batch_set_is_parked_and_one_with_room_is_joined() -> None:
    """No cost known: room decides. 3 of 4 rows taken: a 1-row interactive member joins, a
    2-row one parks the set."""
    policy = EnginePolicy(default_rows=4)
    _bulk_running(policy, rows=3, steps_run=0)
    policy.submit(_member("one", rank=0))
    b = policy.boundary(0.0)
    assert not b.parked and policy.rows == 4
    wide = EnginePolicy(default_rows=4)
    _bulk_running(wide, rows=3, steps_run=0)
    wide.submit(_member("two", rank=0, rows=2))
    b = wide.boundary(0.0)
    assert [m.id for m in b.parked] == ["bulk"] and list(wide.running) == ["two"]


def test_park_uses_the_fitted_cost() -> None:
    policy = EnginePolicy(default_rows=8)
    _bulk_running(policy, rows=2, steps_run=0)
    policy.submit(_member("first", rank=0))
    assert not policy.boundary(0.0).parked  # nothing observed yet: it joins
    slow = EnginePolicy(default_rows=8)
    _bulk_running(slow, rows=2, steps_run=0)
    slow.step_done(2.0)  # one size seen: 1 s per row, no intercept
    slow.submit(_member("inter", rank=0))
    assert [m.id for m in slow.boundary(1.0).parked] == ["bulk"]  # 3 s vs 1.5 x 1 s


def test_interactive_members_join_each_other_while_the_batch_set_is_parked() -> None:
    policy = EnginePolicy(default_rows=8, cost_prior=ROW_BOUND)
    bulk = _bulk_running(policy)
    policy.submit(_member("i1", rank=0, steps=3))
    policy.boundary(1.0)
    policy.step_done(1.2)
    policy.submit(_member("i2", rank=0, steps=3))
    policy.submit(_member("late", rows=2))  # 4.2 s a step against 1.5 x 2.2 s: it waits too
    b = policy.boundary(2.0)
    assert not b.parked and [m.id for m in b.joined] == ["i2"]
    assert set(policy.running) == {"i1", "i2"} and bulk.done == 1
    assert _run(policy, 3, now=3.0, dt=2.2) == ["i1", "i2"]
    b = policy.boundary(6.0)
    assert [m.id for m in b.joined] == ["bulk", "late"] and b.resumed == ["bulk"]


def test_no_park_while_another_call_waits_and_a_parked_member_can_be_cancelled() -> None:
    """While a call of another key waits for the gate (``admit`` False) the set drains: an
    interactive call that would park it takes the request path, and a member already waiting
    parks nothing; a parked member cancelled later leaves at the next boundary."""
    policy = EnginePolicy(default_rows=8, cost_prior=PAYS)
    _bulk_running(policy, steps_run=0)  # the prior stands: interactive sets pay
    assert policy.accepts(KEY, 1, 0) and not policy.accepts(KEY, 1, 0, admit=False)
    assert policy.accepts(KEY, 1, 1, admit=False)  # batch class: a member, it joins later
    policy.submit(_member("inter", rank=0))
    assert not policy.boundary(1.0, admit=False).parked
    assert [m.id for m in policy.boundary(1.0).parked] == ["bulk"]
    assert policy.cancel("bulk")
    b = policy.boundary(1.0)
    assert [m.id for m in b.cancelled] == ["bulk"] and "bulk" not in policy.waiting


def test_a_parked_set_resumes_once_the_member_it_was_parked_for_left() -> None:
    """The batch class waits while the interactive member the set was parked for runs; once
    it left, parked members rejoin beside a later interactive one within the slowdown bound
    (the 1-row one: 2 rows cost 4 against 1.5 x 3; the 3-row one waits), so a stream of
    interactive calls cannot hold them all out."""
    policy = EnginePolicy(default_rows=8, cost_prior=PAYS)
    policy.submit(_member("wide", rows=3))
    policy.submit(_member("narrow", rows=1))
    policy.boundary(0.0)
    policy.step_done(6.0)
    policy.submit(_member("i1", rank=0, steps=2))
    b = policy.boundary(1.0)
    assert [m.id for m in b.parked] == ["wide", "narrow"] and "parked for" in b.refused["narrow"]
    policy.step_done(3.0)
    policy.submit(_member("i2", rank=0, steps=4))
    b = policy.boundary(2.0)
    assert [m.id for m in b.joined] == ["i2"] and "narrow" in b.refused  # i1 still runs
    assert [m.id for m in policy.step_done(4.0)] == ["i1"]
    b = policy.boundary(3.0)
    assert [m.id for m in b.joined] == ["narrow"] and b.resumed == ["narrow"]
    assert b.refused["wide"].startswith("would slow") and policy.running["narrow"].left == 3


def test_step_done_runs_several_steps_at_once() -> None:
    one, many = EnginePolicy(default_rows=4), EnginePolicy(default_rows=4)
    for policy in (one, many):
        policy.submit(_member("a", steps=5))
        policy.submit(_member("b", steps=3))
        policy.boundary(0.0)
    finished = []
    for _ in range(3):
        finished += one.step_done(0.5)
    assert [m.id for m in many.step_done(0.5, steps=3)] == [m.id for m in finished] == ["b"]
    assert many.running["a"].done == one.running["a"].done == 3
    assert many.cost(KEY).samples == one.cost(KEY).samples
    with pytest.raises(ValueError, match="fewest steps"):
        many.step_done(0.5, steps=3)  # a has 2 left


def test_no_member_overtakes_a_waiting_interactive_member() -> None:
    """An interactive member that does not fit yet goes next: a batch-class member that
    would fit does not join past it (it would hold the rows the interactive one waits for)."""
    policy = EnginePolicy(default_rows=4)
    policy.submit(_member("i1", rank=0, rows=3))
    policy.boundary(0.0)
    policy.submit(_member("i2", rank=0, rows=2))
    policy.submit(_member("b", rows=1))
    b = policy.boundary(0.0)
    assert b.refused["i2"].startswith("batch bound") and not b.joined
    assert set(policy.waiting) == {"i2", "b"} and list(policy.running) == ["i1"]
