"""Host contention in the simulator: computing calls slow down by the profile's measured factor
while the control plane is busy, on a device alone or packed; off, nothing changes; bad input
names the file and the field; the calibration's fit of the factor. No Ray."""

from __future__ import annotations

import pytest
import yaml

from genmedia.loadtests.sim.calibrate import build_profile
from genmedia.loadtests.sim.calibrate_serving import CP_PHASES, fit_contention
from genmedia.loadtests.sim.costs import Profile, ProfileError, load_profile
from tests.unit.loadtests.sim.test_calibration import FIT
from tests.unit.loadtests.sim.test_empirical import assert_profile_refused
from tests.unit.loadtests.sim.test_engine import ONE_SECOND_STEP, catalog, req, run

# Only submits cost the control plane (0.1 s each): nothing else keeps it busy.
SUBMITS_ONLY = {"submit_s": [0.1, 0.1], "follow_s": [0, 0], "done_s": [0, 0], "after_s": [0, 0]}


def prof(slowdown=None, cp=SUBMITS_ONLY, cp_slowdown=1.0, **family):
    """A profile whose compute slows by ``slowdown`` while the control plane works and whose
    control-plane work slows by ``cp_slowdown`` (None: the same factor) while a call computes."""
    fam = {**ONE_SECOND_STEP, **family}
    hc = None
    if slowdown is not None:
        hc = {"compute_slowdown": slowdown, "control_plane_slowdown": cp_slowdown}
    return Profile(
        name="t",
        device="t",
        control_plane=cp,
        host_contention=hc,
        families={"sd15": fam, "sdxl": fam},
    )


def test_a_computing_call_slows_down_while_another_request_is_submitted():
    # A computes 0.1..; B's submit keeps the control plane busy 0.5..0.6, where A runs at half
    # speed: it loses 0.05 s of work and ends at 1.15 instead of 1.1.
    trace = [req(0.0, num_inference_steps=1), req(0.5, num_inference_steps=1)]
    off = run(trace, prof=prof())
    on = run(trace, prof=prof(2.0))
    assert off.records[0].t_done == pytest.approx(1.1)
    assert on.records[0].t_done == pytest.approx(1.15)
    assert on.records[0].compute_s == pytest.approx(1.05)
    assert on.records[1].t_admitted == pytest.approx(0.6)  # the submit itself is unchanged
    # B waited at the gate for A, then computed with the control plane idle: 1 s.
    assert on.records[1].t_done == pytest.approx(1.15 + 1.0)


def test_control_plane_work_slows_down_while_a_call_computes_too():
    # The same trace with the two sides slowing each other alike (control_plane_slowdown unset):
    # B's 0.1 s submit starts at 0.5 while A computes and takes 0.2 s, during which A runs at
    # half speed: B is admitted at 0.7, A loses 0.1 s of work and ends at 1.2.
    trace = [req(0.0, num_inference_steps=1), req(0.5, num_inference_steps=1)]
    on = run(trace, prof=prof(2.0, cp_slowdown=None))
    assert on.records[0].t_admitted == pytest.approx(0.1)  # nothing computed yet: unchanged
    assert on.records[1].t_admitted == pytest.approx(0.7)
    assert on.records[0].t_done == pytest.approx(1.2)
    assert on.records[1].t_done == pytest.approx(1.2 + 1.0)
    # its own factor, apart from the compute side's
    three = run(trace, prof=prof(2.0, cp_slowdown=3.0))
    assert three.records[1].t_admitted == pytest.approx(0.8)
    assert three.records[0].t_done == pytest.approx(1.25)


def test_every_call_packed_on_the_device_slows_down_by_the_same_factor():
    # sd15 and sdxl replicas share one device (half of it each): both compute at full speed,
    # and both lose half their speed while another request is submitted.
    cat = catalog(families=("sd15", "sdxl"))
    trace = [
        req(0.0, model="sd15-m", num_inference_steps=1),
        req(0.0, model="sdxl-m", num_inference_steps=1),
        req(0.5, model="sd15-m", num_inference_steps=1),
    ]
    p = prof(2.0, device_share=0.5)
    off, on = run(trace, cat=cat, prof=prof(device_share=0.5)), run(trace, cat=cat, prof=p)
    assert off.gpus == on.gpus == 1
    # sd15 computes from 0.1 (its submit), sdxl from 0.2 (after sd15's submit)
    assert [r.t_done for r in off.records[:2]] == pytest.approx([1.1, 1.2])
    # sd15 is slowed by sdxl's submit too (0.1..0.2): it loses 0.05 s twice, sdxl once
    assert [r.t_done for r in on.records[:2]] == pytest.approx([1.2, 1.25])


def test_a_lone_request_never_overlaps_the_control_plane_and_costs_the_same():
    cp = {**SUBMITS_ONLY, "done_s": [0.2, 0.2], "after_s": [0.3, 0.3]}
    trace = [req(0.0, num_inference_steps=3), req(10.0, num_inference_steps=2)]
    assert run(trace, prof=prof(3.0, cp=cp)).records == run(trace, prof=prof(None, cp=cp)).records


def test_the_term_off_or_at_one_gives_the_same_run():
    trace = [req(0.05 * i, priority=("interactive", "batch")[i % 2], num_inference_steps=2)
             for i in range(40)]  # fmt: skip
    noisy = {"duration_quantiles": [0.5, 1.0, 1.5]}
    base = run(trace, prof=prof(None, **noisy), seed=3)
    assert run(trace, prof=prof(1.0, **noisy), seed=3).records == base.records
    slowed = run(trace, prof=prof(1.5, **noisy), seed=3)
    assert slowed.records != base.records
    assert max(r.t_done for r in slowed.records) > max(r.t_done for r in base.records)


def test_profiles_host_contention_on_cpu_off_on_gpu():
    tiny = load_profile("tiny-cpu")
    assert tiny.host_contention is not None and tiny.host_contention.compute_slowdown >= 1.0
    assert load_profile("gpu").host_contention is None


CP = {"submit_s": [0.1, 0.1], "follow_s": [0.2, 0.2], "done_s": [0.3, 0.3], "after_s": [0, 0]}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"control_plane": CP, "host_contention": {"compute_slowdown": 0.5}},
         "host_contention.compute_slowdown", "greater than or equal to 1"),
        ({"control_plane": CP, "host_contention": {"compute_slowdown": "fast"}},
         "host_contention.compute_slowdown", "number"),
        ({"control_plane": CP, "host_contention": {}},
         "host_contention.compute_slowdown", "required"),
        ({"control_plane": CP, "host_contention": {"compute_slowdown": 2, "cores": 2}},
         "host_contention.cores", "unknown field"),
        ({"host_contention": {"compute_slowdown": 2}}, "host_contention",
         "needs a control-plane model"),
        ({"control_plane": CP,
          "host_contention": {"compute_slowdown": 2, "control_plane_slowdown": 0.5}},
         "host_contention.control_plane_slowdown", "greater than or equal to 1"),
        ({"control_plane": CP,
          "host_contention": {"compute_slowdown": 2, "control_plane_slowdown": 11}},
         "host_contention.control_plane_slowdown", "less than or equal to 10"),
    ],
)  # fmt: skip
def test_bad_host_contention_names_the_file_and_the_field(tmp_path, change, field, words):
    assert_profile_refused(tmp_path, change, field, words)


def test_contention_fit_recovers_a_known_line():
    pairs = [(u, 0.9 + 0.45 * u) for u in (0.1, 0.2, 0.3, 0.6, 0.7, 0.8)]
    fit = fit_contention(pairs)
    assert fit["uncontended"] == pytest.approx(0.9)
    assert fit["compute_slowdown"] == pytest.approx(1.5)  # (0.9 + 0.45) / 0.9
    flat = fit_contention([(0.1, 1.0), (0.5, 1.0), (0.9, 1.0)])
    assert flat["compute_slowdown"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two control-plane loads"):
        fit_contention([(0.3, 1.0), (0.3, 1.1), (0.3, 0.9)])


def test_calibrated_profile_carries_the_contention_and_uncontended_times():
    serving = {
        "factor": {"sd15": 2.0},
        "durations": {"sd15": [0.9, 1.0, 1.1]},
        "control_plane": {ph: [0.01, 0.02, 0.05] for ph in CP_PHASES},
        "contention": {"uncontended": 0.8, "compute_slowdown": 1.75},
    }
    p = build_profile({"sd15": FIT}, serving)
    assert p.host_contention.compute_slowdown == pytest.approx(1.75)
    assert p.cost("sd15").step_fixed_s == pytest.approx(0.01 * 2.0 * 0.8)
    assert p.cost("sd15").per_image_overhead_s == pytest.approx(0.003)  # storing: not scaled
    assert build_profile({"sd15": FIT}, None).host_contention is None


def test_a_completion_slows_the_next_call_down_while_the_client_is_answered():
    cp = {**SUBMITS_ONLY, "done_s": [0.2, 0.2]}
    trace = [req(0.0, num_inference_steps=1), req(0.0, num_inference_steps=2)]
    a, b = run(trace, prof=prof(2.0, cp=cp)).records
    # A computes from 0.1 and loses 0.05 s to B's submit (0.1..0.2): ends 1.15, answered
    # 1.35. B computes from 1.15 and loses 0.1 s to A's answer (1.15..1.35): ends 3.25.
    assert a.t_done == pytest.approx(1.35)
    assert b.compute_s == pytest.approx(2.1) and b.t_done == pytest.approx(3.45)


def test_control_plane_servers_take_pieces_of_work_at_once():
    one = Profile(name="t", device="t", control_plane=SUBMITS_ONLY,
                  families={"sd15": ONE_SECOND_STEP})  # fmt: skip
    two = one.model_copy(update={"control_plane_servers": 2})
    trace = [req(0.0, num_inference_steps=1) for _ in range(3)]
    assert [r.t_admitted for r in run(trace, prof=one).records] == pytest.approx([0.1, 0.2, 0.3])
    assert [r.t_admitted for r in run(trace, prof=two).records] == pytest.approx([0.1, 0.1, 0.2])


@pytest.mark.parametrize("value", [0, -1, 1.5, "many"])
def test_bad_control_plane_servers_names_the_file_and_the_field(tmp_path, value):
    data = {"name": "x", "device": "d", "families": {"sd15": ONE_SECOND_STEP},
            "control_plane": CP, "control_plane_servers": value}  # fmt: skip
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as e:
        load_profile(f)
    assert e.value.file == str(f) and e.value.field == "control_plane_servers"
