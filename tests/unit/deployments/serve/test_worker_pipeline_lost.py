"""The error a family worker replica raises when its pipeline process dies mid-call
(``serve/worker.py``): across Ray it is a ``RayActorError``, which the scheduler retries
(``serve/scheduler_batches.py``), and not an error that makes Serve drop the replica."""

from __future__ import annotations

import pickle

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from genmedia.deployments.serve.worker import PipelineLost


def test_pipeline_lost_crosses_ray_as_a_retried_worker_error() -> None:
    error = PipelineLost("the sd15 pipeline process (pid 42) exited with code -9")
    assert str(error) == "the sd15 pipeline process (pid 42) exited with code -9"
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, PipelineLost) and str(again) == str(error)
    # what the caller of a streaming call sees: the replica's exception, wrapped by Ray
    sent = pickle.loads(pickle.dumps(RayTaskError("run_batch", "Traceback ...", error)))
    seen = sent.as_instanceof_cause()
    assert isinstance(seen, RayActorError | ActorDiedError)  # the scheduler's retry test
    assert not isinstance(seen, ActorDiedError | ActorUnavailableError)
