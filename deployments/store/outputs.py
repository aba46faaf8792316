"""Encode a batch's outputs (images, videos, audio clips) and store each with a JSON sidecar
(model, parameters, seed).

Runs on the family worker, in the pipeline's thread after it releases the step gate, so a
result is stored before its job is marked ``COMPLETED``. Keys start with the tenant id: the
gateway serves a file only to its tenant. The encoders (``models/media.py``) write no
timestamps, so the same model, parameters and seed give identical files. A job whose files
cannot all be written (a full disk: ``StorageFull``) leaves none behind: what was written is
deleted and the error goes up, so the job ends FAILED instead of COMPLETED with missing files.
A job cancelled while its batch ran is not stored (``worker/batch.py`` skips it); where the
cancel reached the worker too late, the scheduler deletes its files (``delete_outputs``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import Any

import numpy as np

from genmedia.deployments.protocol import StoredOutput
from genmedia.deployments.store.storage import Storage
from genmedia.models import media
from genmedia.models.params import GenerationJob


def output_prefix(request_id: str, now: float) -> str:
    """The key part under a tenant for one job's outputs: date, then the request id."""
    return time.strftime("%Y/%m/%d", time.gmtime(now)) + f"/{request_id}"


def encode_output(
    job: GenerationJob, array: np.ndarray, sample_rate: int | None = None
) -> tuple[bytes, dict[str, Any]]:
    """The bytes of one output in the job's format, and what the result records about it."""
    output = job.extra.get("output") or {}
    task = job.params.task
    if task == "text-to-video":
        fps = int(output.get("fps") or 16)
        frames, height, width = array.shape[0], array.shape[1], array.shape[2]
        data = media.encode_video(array, fps, output.get("format", "mp4"))
        return data, {
            "width": width,
            "height": height,
            "num_frames": frames,
            "fps": fps,
            "duration_s": round(frames / fps, 6),
        }
    if task == "text-to-audio":
        if sample_rate is None:
            raise ValueError("audio output needs the model's sample rate")
        data = media.encode_audio(array, sample_rate, output.get("format", "wav"))
        channels = 1 if array.ndim == 1 else int(array.shape[0])
        return data, {
            "width": 0,
            "height": 0,
            "sample_rate": sample_rate,
            "channels": channels,
            "duration_s": round(array.shape[-1] / sample_rate, 6),
        }
    data = media.encode_image(array, output.get("format", "png"), output.get("quality"))
    return data, {"width": int(array.shape[1]), "height": int(array.shape[0])}


def store_outputs(
    storage: Storage,
    job: GenerationJob,
    outputs: list[np.ndarray],
    *,
    prefix: str,
    extra: dict[str, Any],
    now: float,
    sample_rate: int | None = None,
) -> list[StoredOutput]:
    """Write each output and its sidecar under ``prefix``; returns what was written. On a
    failed write the job's files written so far are deleted before the error goes up."""
    base = prefix + output_prefix(job.request_id, now)
    fmt = (job.extra.get("output") or {}).get("format") or media.DEFAULT_FORMAT_BY_TASK.get(
        job.params.task, "png"
    )
    content_type = media.content_type(fmt)
    out: list[StoredOutput] = []
    written: list[str] = []
    try:
        for i, array in enumerate(outputs):
            data, meta = encode_output(job, array, sample_rate)
            key = f"{base}/{i}.{media.EXTENSIONS[fmt]}"
            sidecar = {
                "request_id": job.request_id,
                "index": i,
                "model": job.params.model_id,
                "task": job.params.task,
                "parameters": job.describe(),
                "seed": job.seed + i,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                **meta,
                **extra,
            }
            storage.put(key, data, content_type)
            written.append(key)
            sidecar_key = f"{base}/{i}.json"
            storage.put(sidecar_key, json.dumps(sidecar, indent=2).encode(), "application/json")
            written.append(sidecar_key)
            out.append(
                StoredOutput(
                    key=key,
                    seed=job.seed + i,
                    content_type=content_type,
                    sha256=hashlib.sha256(data).hexdigest(),
                    **meta,
                )
            )
    except BaseException:
        for key in written:
            with contextlib.suppress(Exception):
                storage.delete(key)
        raise
    return out


def sidecar_key(key: str) -> str:
    """The JSON sidecar written beside an output (``<base>/<i>.json``)."""
    return key.rsplit(".", 1)[0] + ".json"


def delete_outputs(storage: Storage, outputs: list[StoredOutput]) -> int:
    """Delete outputs and their sidecars (a job cancelled after they were written); how many
    files were deleted. A failed delete is left for retention and not raised."""
    n = 0
    for out in outputs:
        for key in (out.key, sidecar_key(out.key)):
            with contextlib.suppress(Exception):
                n += bool(storage.delete(key))
    return n
