"""What a finished job keeps in the store: its result (outputs, seed, parameters, timings, batch)
and its metered usage, pure; the public message of a worker error.

Where it sits: the scheduler calls these when a worker call's ``WorkerResult`` comes back, and
writes both with the job's move to COMPLETED in one store transaction (a job cancelled while its
batch ran keeps only its usage: the compute it used is metered); the result API answers the
stored result as it is. No Ray here.
"""

from __future__ import annotations

from typing import Any

from genmedia.deployments.protocol import StoredOutput, WorkerResult
from genmedia.deployments.store.jobs import JobRecord
from genmedia.models.params import GenerationJob


def public_error(error_type: str, job_id: str) -> str:
    """The message a tenant reads for a worker error (the error itself goes to the operator's
    logs with the job id; its text may name files, hosts or internals)."""
    what = "the job's worker was lost" if error_type == "worker_lost" else "generation failed"
    return f"{what} (request {job_id}); the operator's logs have the details"


def usage_of(job: GenerationJob, compute_s: float) -> dict[str, Any]:
    """What the tenant is metered for one job: images, denoising steps, compute seconds."""
    return {
        "images": job.num_images,
        "steps": job.num_images * job.params.num_inference_steps,
        "compute_s": compute_s,
    }


def result_payload(
    rec: JobRecord,
    job: GenerationJob,
    outputs: list[StoredOutput],
    result: WorkerResult,
    requests: int,
    now: float,
) -> dict[str, Any]:
    """The result a job keeps in the store (and the result API answers)."""
    t = result.timings
    started = rec.started_at or now
    return {
        "images": [o.as_record() for o in outputs],
        "seed": job.seed,
        "parameters": job.describe(),
        "timings": {
            "queue_s": round(started - rec.submitted_at, 6),
            "load_s": round(t.load_s, 6),
            "adapter_load_s": round(t.adapter_load_s, 6),
            "wait_s": round(t.wait_s, 6),
            "paused_s": round(t.paused_s, 6),
            "compute_s": round(t.compute_s, 6),
            "device_s": round(t.device_s, 6),
            "store_s": round(t.store_s, 6),
            "total_s": round(now - rec.submitted_at, 6),
        },
        "batch": {"id": result.batch_id, "images": result.batch_images, "requests": requests},
        "device": result.device,
        "acceleration": result.acceleration,
        "loras": [{"id": a, "scale": w} for a, w in result.adapters],
        "task": job.params.task,
    }
