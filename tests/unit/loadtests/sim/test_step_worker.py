"""The simulator's step-level worker (``loadtests/sim/step_worker.py``) on small deterministic
traces, in simulated time: joins at step boundaries, an incompatible call waits for the set to
drain (or pauses it when it ranks better), the set bound holds, and interactive latency against
request-level batching on the same trace."""

from __future__ import annotations

import pytest

from genmedia.deployments.worker.engine_policy import EnginePolicy
from genmedia.loadtests.sim.costs import Profile
from genmedia.loadtests.sim.engine import SimConfig, Simulation, simulate
from genmedia.loadtests.sim.workload import prepare
from genmedia.loadtests.traces import TraceRecord
from genmedia.models.catalog import parse_catalog

# one step of n images takes 0.5 + 0.5 n seconds; nothing else costs anything
LINEAR_STEP = {
    "step_fixed_s": 0.5,
    "step_per_image_s": 0.5,
    "ref_megapixels": 64 * 64 / 1e6,
    "vae_per_image_s": 0.0,
    "call_overhead_s": 0.0,
    "load_s": 0.0,
}


def catalog(max_batch=8, engine=None):
    data = {
        "models": [
            {
                "id": "m",
                "family": "sd15",
                "weights": "tiny://sd15",
                "parameters": {
                    "width": {"default": 64, "min": 32, "max": 512},
                    "height": {"default": 64, "min": 32, "max": 512},
                    "steps": {"default": 4, "min": 1, "max": 100},
                    "guidance": {"default": 0.0, "min": 0.0, "max": 10.0},
                    "num_images": {"default": 1, "min": 1, "max": 1},
                },
                "max_batch_size": max_batch,
                "batch_wait_ms": 0,
                "gpu_fraction": 1.0,
            }
        ]
    }
    if engine is not None:
        data["workers"] = {"sd15": {"engine": engine}}
    return parse_catalog(data, "<test>")


def profile(**over):
    return Profile(name="test", device="test", families={"sd15": {**LINEAR_STEP, **over}})


def req(t, priority="batch", **params):
    return TraceRecord(t=t, tenant="a", priority=priority, model="m",
                       params={"prompt": "x", **params})  # fmt: skip


def run(trace, engine="step", cat=None, prof=None):
    cat = cat or catalog()
    config = SimConfig(engine=engine, replicas={"sd15": 1}, gpus=1)
    return simulate(cat, prof or profile(), prepare(trace, cat), config)


def done(res):
    return [r.t_done for r in res.records]


def test_a_compatible_call_joins_the_running_set_at_the_next_step_boundary():
    res = run([req(0.0), req(1.5)])
    # A alone: steps end at 1 and 2; B joins at 2, two steps together at 1.5 s each: A ends at
    # 5; B's other two steps alone: 6, 7.
    assert done(res) == pytest.approx([5.0, 7.0])
    assert res.records[1].t_first_progress == pytest.approx(3.5)
    # request-level: B waits for A's whole call
    assert done(run([req(0.0), req(1.5)], engine="request")) == pytest.approx([4.0, 8.0])


def test_an_incompatible_call_waits_for_the_set_to_drain_and_the_set_takes_no_new_members():
    # B has guidance on (another key): the request path, behind A at the gate; C, A's key,
    # arrives while B waits: refused at every boundary until A's set drained, then runs after B
    res = run([req(0.0), req(0.5, guidance_scale=5.0), req(1.2)])
    assert done(res) == pytest.approx([4.0, 8.0, 12.0])
    assert res.preemptions == 0


def test_an_incompatible_interactive_call_pauses_the_set_at_a_step_boundary():
    res = run([req(0.0), req(0.5, priority="interactive", guidance_scale=5.0)])
    # the set pauses at its boundary at 1 s; the interactive call runs alone until 5
    assert done(res) == pytest.approx([8.0, 5.0])
    assert res.preemptions == 1


def test_the_set_never_holds_more_rows_than_the_models_bound(monkeypatch):
    seen: list[int] = []
    step_done = EnginePolicy.step_done

    def spy(self, seconds, steps=1):
        seen.append(self.rows)
        return step_done(self, seconds, steps)

    monkeypatch.setattr(EnginePolicy, "step_done", spy)
    res = run([req(0.0), req(0.0), req(0.0)], cat=catalog(max_batch=2))
    assert max(seen) == 2
    # A alone one step (B and C arrive while it runs: B joins at 1, C is refused by the bound),
    # then A+B at 1.5 s a step: A ends at 5.5; C joins there; B ends at 7, C at 10
    assert done(res) == pytest.approx([5.5, 7.0, 10.0])


def test_a_deadline_keeps_a_batch_call_out_of_a_set_it_would_slow_past_the_target():
    cat = catalog()
    data = cat.model_dump(mode="json")
    data["models"][0]["slo"] = {"interactive_s": 5.0}
    cat = parse_catalog(data, "<test>")
    # the interactive call alone meets 5 s (4 steps of 1 s); the batch call joining it makes
    # each step 1.5 s, and the policy's fit from 1-row steps predicts 2 s: twice the
    # interactive step alone, past both the 1.5x bound kept while it runs and (at the
    # boundaries at 1 and 2 s) its 5 s target. It joins when the interactive call leaves at 4 s
    res = run([req(0.0, priority="interactive"), req(0.5)], cat=cat)
    assert done(res) == pytest.approx([4.0, 8.0])
    # a batch call alone takes another batch call in at the first boundary (A+B at 1.5 s a step)
    assert done(run([req(0.0), req(0.5)])) == pytest.approx([5.5, 6.5])


def test_interactive_latency_is_lower_than_request_level_batching_on_the_same_trace():
    # a step's fixed part dominates (batching pays): 0.9 s + 0.1 s per image
    prof = profile(step_fixed_s=0.9, step_per_image_s=0.1)
    trace = [req(0.5 * i, priority="interactive") for i in range(8)]
    step = run(trace, prof=prof)
    request = run(trace, engine="request", prof=prof)

    def latencies(res):
        return [r.t_done - r.t_submit for r in res.records]

    assert all(r.status == "COMPLETED" for r in step.records + request.records)
    # request-level: a call at a time (queued interactive jobs batch only while one runs)
    assert max(latencies(step)) < 0.6 * max(latencies(request))
    assert sum(latencies(step)) < 0.8 * sum(latencies(request))


def test_the_engine_comes_from_the_catalog_unless_the_config_sets_it():
    cat = catalog(engine="step")
    assert Simulation(cat, profile()).engines == {"sd15": "step"}
    assert Simulation(cat, profile(), SimConfig(engine="request")).engines == {"sd15": "request"}
    assert Simulation(catalog(), profile()).engines == {"sd15": "request"}


def test_sets_of_replicas_packed_on_one_gpu_share_it_and_leave_it_idle():
    data = catalog().model_dump(mode="json")
    second = {**data["models"][0], "id": "x", "family": "sdxl", "gpu_fraction": 0.5}
    data["models"] = [{**data["models"][0], "gpu_fraction": 0.5}, second]
    cat = parse_catalog(data, "<test>")
    busy = {**LINEAR_STEP, "device_share": 1.0}  # one computing set keeps the GPU busy
    prof = Profile(name="t", device="t", families={"sd15": busy, "sdxl": busy})
    trace = [req(0.25 * i, priority=("interactive", "batch")[i % 2]) for i in range(12)]
    trace += [TraceRecord(t=0.1 + 0.3 * i, tenant="a", priority="batch", model="x",
                          params={"prompt": "x", "guidance_scale": 5.0 * (i % 2)})
              for i in range(12)]  # fmt: skip
    trace.sort(key=lambda r: r.t)
    config = SimConfig(engine="step", replicas={"sd15": 1, "sdxl": 1}, gpus=1)
    sim = Simulation(cat, prof, config)
    res = sim.run(prepare(trace, cat))
    assert all(r.status == "COMPLETED" for r in res.records)
    (gpu,) = sim.cluster.gpus
    assert len(gpu.replicas) == 2
    assert gpu.active == [] and gpu.load == pytest.approx(0.0, abs=1e-9)
    assert sim.steps.joins > 0 and sim.steps.request_path > 0  # both paths were taken
    # on a GPU each, the same trace ends sooner
    alone = simulate(cat, prof, prepare(trace, cat), SimConfig(
        engine="step", replicas={"sd15": 1, "sdxl": 1}, gpus=2, packing="dedicated"))  # fmt: skip
    assert res.sim_end_s > alone.sim_end_s


def _slowdown_run(trace, join_slowdown):
    cat = catalog()
    prof = profile(step_fixed_s=0.2, step_per_image_s=1.0)  # the per-image part dominates
    sim = Simulation(cat, prof, SimConfig(engine="step", replicas={"sd15": 1}, gpus=1))
    sim.steps.join_slowdown = join_slowdown
    return sim, sim.run(prepare(trace, cat))


def test_an_interactive_call_that_would_run_much_slower_in_a_batch_set_runs_alone():
    # A (batch) alone 0-4.8 teaches the policy 1.2 s per 1-row step (a = 1.2, b = 0). C (batch)
    # starts at 5; B (interactive) at 6.5 would step at 2.4 s in C's set, 2x its 1.2 s alone,
    # above the 1.5 bound, and interactive calls would not gain from a set of their own
    # (``sets_pay``): the request path, C pauses at its boundary at 7.4, B runs alone until
    # 12.2, C's last two steps end at 14.6
    trace = [req(0.0), req(5.0), req(6.5, priority="interactive")]
    sim, res = _slowdown_run(trace, 1.5)
    assert done(res) == pytest.approx([4.8, 14.6, 12.2])
    assert sim.steps.parks == 0 and res.preemptions == 1 and sim.steps.request_path == 1
    # a looser bound lets it join at 7.4: two steps at 2.2 s with C, then two alone: 14.2
    sim, res = _slowdown_run(trace, 2.5)
    assert done(res) == pytest.approx([4.8, 11.8, 14.2])
    assert sim.steps.parks == 0 and res.preemptions == 0


def test_an_interactive_call_joins_a_set_that_holds_one_whatever_the_cost():
    trace = [req(0.0), req(5.0, priority="interactive"), req(6.5, priority="interactive")]
    sim, res = _slowdown_run(trace, 1.5)
    assert done(res) == pytest.approx([4.8, 11.8, 14.2])
    assert sim.steps.parks == 0 and sim.steps.joins == 3


def test_interactive_calls_join_each_other_while_the_batch_set_is_parked():
    # batching pays here (a step costs 0.5 s a row + 1 s): A and A2 (batch) teach the policy
    # both sizes (a = 0.5, b = 1). C1-C3 (batch) run from 12; B (interactive) at 15 would
    # step at 3 s in their 3-row set, 2x its 1.5 s alone, while two interactive rows share a
    # step at 2 s: the set is parked at its boundary at 16, B steps alone until 17.5, D
    # (interactive, at 16) joins it there instead of queuing behind it at the gate: B ends at
    # 23.5 after three 2-row steps; then C1 rejoins beside D (2 rows: within 1.5x D's step
    # alone) and D ends after one more 2 s step at 25.5
    cat = catalog()
    prof = profile(step_fixed_s=1.0, step_per_image_s=0.5)
    sim = Simulation(cat, prof, SimConfig(engine="step", replicas={"sd15": 1}, gpus=1))
    trace = [req(0.0), req(0.0), req(12.0), req(12.0), req(12.0),
             req(15.0, priority="interactive"), req(16.0, priority="interactive")]  # fmt: skip
    res = sim.run(prepare(trace, cat))
    assert sim.steps.parks == 1 and sim.steps.request_path == 0 and res.preemptions == 0
    *_, c1, c2, c3, b, d = res.records
    assert all(r.status == "COMPLETED" for r in res.records)
    assert b.t_first_progress == pytest.approx(17.5) and b.t_done == pytest.approx(23.5)
    assert d.t_first_progress == pytest.approx(19.5) and d.t_done == pytest.approx(25.5)
    assert min(c.t_done for c in (c1, c2, c3)) > d.t_done  # resumed once B left
