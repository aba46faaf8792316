"""The scheduler's contention signal, without Ray: compute spans of a family's calls become a
slowdown per concurrent call once no open call can overlap them any more."""

from __future__ import annotations

import pytest

from genmedia.deployments.scheduler.contention import ComputeSpan, ContentionTracker

SOLO_SPU = 0.1


def _run(tracker, calls, family="sd15"):
    """``calls``: (id, replica, start, end, seconds per unit); dispatched at start, finished in
    order of their ends."""
    for cid, _, start, _, _ in calls:
        tracker.dispatched(family, cid, start)
    for cid, rep, start, end, spu in sorted(calls, key=lambda c: c[3]):
        tracker.finished(family, ComputeSpan(cid, rep, "a", 1, start, end, spu))


def _alternating(n, overlap_spu, *, replicas=("r1", "r2")):
    """n solo calls, then n pairs computing side by side on two replicas."""
    calls, t = [], 0.0
    for i in range(n):
        calls.append((f"s{i}", "r1", t, t + 1.0, SOLO_SPU))
        t += 2.0
    for i in range(n):
        calls.append((f"p{i}a", replicas[0], t, t + 1.0, overlap_spu))
        calls.append((f"p{i}b", replicas[1], t, t + 1.0, overlap_spu))
        t += 2.0
    return calls


@pytest.mark.parametrize(("overlap_spu", "expected"), [(0.1, 0.0), (0.2, 1.0), (0.15, 0.5)])
def test_slowdown_per_concurrent_call_from_solo_and_side_by_side_calls(overlap_spu, expected):
    tracker = ContentionTracker(min_samples=4)
    _run(tracker, _alternating(10, overlap_spu))
    s = tracker.slowdown("a", now=50.0)
    assert s is not None and s.per_call == pytest.approx(expected, abs=1e-6)
    assert s.evidence == 20 and s.age_s == pytest.approx(50.0 - 39.0)


def test_calls_of_one_replica_never_count_as_beside_each_other():
    """A paused call and the one that runs meanwhile share one pipeline, not a device."""
    tracker = ContentionTracker(min_samples=4)
    _run(tracker, _alternating(10, 0.2, replicas=("r1", "r1")))
    assert tracker.slowdown("a", now=50.0) is None  # every sample solo: no contended evidence


def test_no_slowdown_without_enough_evidence_or_for_other_models():
    tracker = ContentionTracker(min_samples=8)
    _run(tracker, _alternating(5, 0.2))
    assert tracker.slowdown("a", now=30.0) is None
    assert tracker.slowdown("b", now=30.0) is None


def test_a_span_waits_for_every_call_that_could_overlap_it():
    tracker = ContentionTracker(min_samples=1, solo_below=0.2, contended_over=0.5)
    tracker.dispatched("f", "long", 0.0)
    tracker.dispatched("f", "short", 0.1)
    tracker.finished("f", ComputeSpan("short", "r2", "a", 1, 0.1, 1.1, 0.2))
    assert tracker.pending["f"]  # "long" is still open and may have computed beside it
    tracker.dispatched("f", "solo", 5.0)
    tracker.finished("f", ComputeSpan("solo", "r2", "a", 1, 5.0, 6.0, 0.1))
    tracker.finished("f", ComputeSpan("long", "r1", "a", 1, 0.0, 2.0, 0.15))
    assert not tracker.pending["f"]
    s = tracker.slowdown("a", now=6.0)
    # "short" had "long" beside it all along (x = 1, 2x the solo 0.1), "long" had "short"
    # beside half the time (x = 0.5, 1.5x): one slowdown of 1.0 per concurrent call
    assert s is not None and s.per_call == pytest.approx(1.0)
    assert not tracker.spans["f"]  # nothing left that a later call could overlap


def test_a_dropped_call_releases_the_spans_it_held_back():
    tracker = ContentionTracker(min_samples=1)
    tracker.dispatched("f", "lost", 0.0)
    tracker.dispatched("f", "ok", 0.5)
    tracker.finished("f", ComputeSpan("ok", "r1", "a", 1, 0.5, 1.0, 0.1))
    assert tracker.pending["f"]
    tracker.dropped("f", "lost")
    assert not tracker.pending["f"] and tracker.samples[("a", 1)].solo_n == 1


def test_batch_sizes_are_compared_only_with_themselves():
    """Bigger batches cost less per unit; a contended batch of four must not read as faster
    than a solo batch of one."""
    tracker = ContentionTracker(min_samples=4)
    t = 0.0
    for i in range(6):
        tracker.dispatched("f", f"s{i}", t)
        tracker.finished("f", ComputeSpan(f"s{i}", "r1", "a", 1, t, t + 1, 0.1))
        t += 2
    for i in range(6):
        for rep in ("r1", "r2"):
            tracker.dispatched("f", f"p{i}{rep}", t)
        for rep in ("r1", "r2"):
            tracker.finished("f", ComputeSpan(f"p{i}{rep}", rep, "a", 4, t, t + 1, 0.05))
        t += 2
    assert tracker.slowdown("a", now=t) is None  # no solo batch of four to compare with
