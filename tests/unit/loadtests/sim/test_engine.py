"""The simulator's engine: known answers on small traces where the scheduling policy decides
(FIFO vs priority, preemption at a step boundary, batch forming, deadlines), device sharing,
determinism, and the scaling hook."""

from __future__ import annotations

import pytest

from genmedia.loadtests.sim.costs import Profile
from genmedia.loadtests.sim.engine import SimConfig, simulate
from genmedia.loadtests.sim.scaling import ClusterSnapshot
from genmedia.loadtests.sim.workload import prepare
from genmedia.loadtests.traces import TraceRecord
from genmedia.models.catalog import parse_catalog

ONE_SECOND_STEP = {  # a step of one image takes 1 s; nothing else costs anything
    "step_fixed_s": 0.5,
    "step_per_image_s": 0.5,
    "ref_megapixels": 64 * 64 / 1e6,
    "vae_per_image_s": 0.0,
    "call_overhead_s": 0.0,
    "load_s": 0.0,
}


def catalog(batch_wait_ms=0.0, families=("sd15",), max_batch=8):
    models = []
    for f in families:
        models.append(
            {
                "id": f"{f}-m",
                "family": f,
                "weights": f"tiny://{f}",
                "parameters": {
                    "width": {"default": 64, "min": 32, "max": 512},
                    "height": {"default": 64, "min": 32, "max": 512},
                    "steps": {"default": 4, "min": 1, "max": 100},
                    "guidance": {"default": 0.0, "min": 0.0, "max": 10.0},
                    "num_images": {"default": 1, "min": 1, "max": min(4, max_batch)},
                },
                "max_batch_size": max_batch,
                "batch_wait_ms": batch_wait_ms,
                "gpu_fraction": 0.5,
            }
        )
    return parse_catalog({"models": models}, "<test>")


def profile(**over):
    fam = {**ONE_SECOND_STEP, **over}
    return Profile(
        name="test",
        device="test",
        families={"sd15": fam, "sdxl": fam, "flux": fam},
    )


def req(t, priority="batch", model="sd15-m", tenant="a", **params):
    return TraceRecord(
        t=t, tenant=tenant, priority=priority, model=model, params={"prompt": "x", **params}
    )


def run(trace, cat=None, prof=None, **cfg):
    cat = cat or catalog()
    return simulate(cat, prof or profile(), prepare(trace, cat), SimConfig(**cfg))


def latency(res, i):
    r = res.records[i]
    return r.t_done - r.t_submit


def test_one_request_on_an_idle_cluster_takes_its_cost():
    res = run([req(0.0, num_inference_steps=3)], prof=profile(call_overhead_s=0.25))
    assert res.records[0].status == "COMPLETED"
    assert latency(res, 0) == pytest.approx(3.25)
    assert res.records[0].t_first_progress == pytest.approx(1.25)
    assert res.records[0].compute_s == pytest.approx(3.25)


def test_interactive_preempts_batch_at_a_step_boundary_under_priority_not_fifo():
    # A: batch, 4 steps from t=0. B: interactive, 4 steps, arrives at t=0.5.
    trace = [req(0.0, "batch"), req(0.5, "interactive")]
    prio = run(trace, policy="priority")
    # B waits for A's step boundary at t=1, runs 1..5; A resumes and ends at 8.
    assert latency(prio, 1) == pytest.approx(4.5)
    assert latency(prio, 0) == pytest.approx(8.0)
    assert prio.preemptions == 1
    fifo = run(trace, policy="fifo")
    assert latency(fifo, 0) == pytest.approx(4.0)
    assert latency(fifo, 1) == pytest.approx(7.5)
    assert fifo.preemptions == 0


def test_interactive_goes_before_queued_batch_work_under_priority():
    # One replica: 2 main slots. Three batch jobs with different keys fill them and queue;
    # an interactive job arriving later overtakes the queued batch job.
    trace = [
        req(0.0, "batch", num_inference_steps=2),
        req(0.0, "batch", num_inference_steps=3),
        req(0.0, "batch", num_inference_steps=4),
        req(0.1, "interactive", num_inference_steps=1),
    ]
    prio = run(trace)
    fifo = run(trace, policy="fifo")
    assert prio.records[3].t_started < prio.records[2].t_started
    assert fifo.records[3].t_started > fifo.records[2].t_started


def test_compatible_requests_share_one_call_up_to_max_batch_size():
    same = [req(0.0, "batch") for _ in range(3)]
    res = run(same, cat=catalog(batch_wait_ms=100))
    assert res.calls == 1
    assert {r.t_started for r in res.records} == {0.1}  # waited batch_wait for a fuller batch
    # A batch of 3 images: each step costs 0.5 + 3 x 0.5 = 2 s.
    assert latency(res, 0) == pytest.approx(0.1 + 4 * 2.0)
    mixed = [req(0.0, "batch", num_inference_steps=s) for s in (2, 3, 4)]
    assert run(mixed, cat=catalog(batch_wait_ms=100)).calls == 3
    capped = run([req(0.0, "batch") for _ in range(5)], cat=catalog(100, max_batch=2))
    assert capped.calls == 3


def test_queued_job_past_its_deadline_expires():
    trace = [
        req(0.0, "batch", num_inference_steps=50),
        req(0.0, "batch", num_inference_steps=51),
        TraceRecord(
            t=0.0,
            tenant="a",
            priority="batch",
            model="sd15-m",
            params={"prompt": "x", "num_inference_steps": 52},
            deadline_s=2.0,
        ),
    ]
    res = run(trace)
    assert [r.status for r in res.records] == ["COMPLETED", "COMPLETED", "EXPIRED"]
    assert res.records[2].t_done == pytest.approx(2.0)


def test_bad_requests_are_refused_like_the_gateway_does():
    res = run([req(0.0, model="nope"), req(0.0, width=4096), req(0.0)])
    assert [(r.status, r.http_status) for r in res.records] == [
        ("ERROR", 404),
        ("ERROR", 422),
        ("COMPLETED", None),
    ]
    assert "width" in res.records[1].error


def test_packed_replicas_share_their_gpu():
    cat = catalog(families=("sd15", "sdxl"))
    trace = [req(0.0, model="sd15-m"), req(0.0, model="sdxl-m")]
    full = profile(device_share=1.0)
    packed = run(trace, cat=cat, prof=full, packing="fractional", gpus=1)
    assert packed.gpus == 1
    assert latency(packed, 0) == pytest.approx(8.0)  # two calls at half speed each
    light = run(trace, cat=cat, prof=profile(device_share=0.5), packing="fractional", gpus=1)
    assert latency(light, 0) == pytest.approx(4.0)  # shares sum to 1: both at full speed
    dedicated = run(trace, cat=cat, prof=full, packing="dedicated", gpus=2)
    assert dedicated.gpus == 2
    assert latency(dedicated, 0) == pytest.approx(4.0)


def test_same_trace_gives_the_same_records():
    import random

    rng = random.Random(7)
    t, trace = 0.0, []
    for _ in range(300):
        t += rng.expovariate(3.0)
        trace.append(
            req(
                t,
                rng.choice(["interactive", "batch"]),
                tenant=rng.choice("abc"),
                num_inference_steps=rng.choice([2, 4]),
            )
        )
    a, b = run(trace, gpus=2), run(trace, gpus=2)
    assert a.records == b.records
    assert a.preemptions > 0


def test_a_scaler_is_called_and_its_replicas_join():
    seen: list[ClusterSnapshot] = []

    def scaler(snap: ClusterSnapshot) -> dict[str, int]:
        seen.append(snap)
        return {"sd15": 3}

    trace = [req(i * 0.5, "batch", num_inference_steps=8) for i in range(40)]
    fixed = run(trace, gpus=2, replicas={"sd15": 1})
    scaled = run(trace, gpus=2, replicas={"sd15": 1}, scaler=scaler, scale_interval_s=1.0)
    assert seen and seen[0].families["sd15"].replicas == 1
    assert scaled.replicas["sd15"] == 3
    assert max(r.t_done for r in scaled.records) < max(r.t_done for r in fixed.records)


def test_the_autoscaling_policy_plugs_in_as_a_scaler():
    from genmedia.loadtests.sim.scaling import autoscaling_scaler

    base = catalog()
    data = base.model_dump(exclude={"source"})
    data["workers"] = {"sd15": {"min_replicas": 1, "max_replicas": 4}}
    data["models"][0]["slo"] = {"interactive_s": 5.0, "batch_s": 60.0}
    cat = parse_catalog(data, "<test>")
    trace = [req(i * 0.1, "interactive") for i in range(20)]
    fixed = run(trace, cat=cat, gpus=4, replicas={"sd15": 1})
    scaled = run(
        trace,
        cat=cat,
        gpus=4,
        replicas={"sd15": 1},
        scaler=autoscaling_scaler(cat, gpus=4),
        scale_interval_s=0.5,
    )
    assert fixed.replicas["sd15"] == 1
    assert scaled.replicas["sd15"] == 4  # the policy's cap (max_replicas)
    assert max(r.t_done for r in scaled.records) < max(r.t_done for r in fixed.records)


def test_the_control_plane_serves_submits_and_completions_one_at_a_time():
    prof = Profile(name="t", device="t", control_plane_s=0.5, families={"sd15": ONE_SECOND_STEP})
    res = run([req(0.0, num_inference_steps=1), req(0.0, num_inference_steps=2)], prof=prof)
    assert [r.t_admitted for r in res.records] == pytest.approx([0.5, 1.0])
    # first computes 0.5..1.5, answered 2.0; second (waits at the gate) 1.5..3.5, answered 4.0
    assert [r.t_done for r in res.records] == pytest.approx([2.0, 4.0])


def test_duration_noise_is_seeded_with_mean_one():
    prof = Profile(name="t", device="t", families={"sd15": {**ONE_SECOND_STEP, "cv": 0.3}})
    trace = [req(float(i) * 10, num_inference_steps=4) for i in range(200)]  # never queued
    a, b = run(trace, prof=prof, seed=1), run(trace, prof=prof, seed=1)
    c = run(trace, prof=prof, seed=2)
    assert a.records == b.records
    assert a.records != c.records
    lat = [latency(a, i) for i in range(200)]
    assert sum(lat) / len(lat) == pytest.approx(4.0, rel=0.08)
    assert min(lat) < 3.0 < 5.0 < max(lat)


def test_outputs_are_stored_after_the_gate_while_the_next_call_computes():
    # Storing takes 0.5 s per image, after the call left the gate (deployments/serve/worker.py):
    # B (waiting at the gate) computes from A's compute end, not from A's store end.
    res = run(
        [req(0.0, num_inference_steps=1), req(0.0, num_inference_steps=2)],
        prof=profile(per_image_overhead_s=0.5),
    )
    a, b = res.records
    assert a.t_done == pytest.approx(1.5) and a.compute_s == pytest.approx(1.0)
    assert b.t_first_progress == pytest.approx(2.0)
    assert b.t_done == pytest.approx(3.5) and b.compute_s == pytest.approx(2.0)
