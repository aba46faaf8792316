"""Encode a batch's images and store them with a JSON sidecar (model, parameters, seed).

Runs on the family worker, in the pipeline's thread after it releases the step gate, so a
result is stored before its job is marked ``COMPLETED``. Keys start with the tenant id: the
gateway serves a file only to its tenant. PNG bytes depend only on the pixels, so the same model,
parameters and seed give identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from genmedia.deployments.storage import Storage
from genmedia.models.params import GenerationJob


@dataclass
class StoredImage:
    key: str
    seed: int
    width: int
    height: int
    content_type: str
    sha256: str

    def as_record(self) -> dict:
        return asdict(self)


IMAGE_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
IMAGE_SUFFIXES = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def encode_image(pixels: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """uint8 HxWx3 to PNG (lossless, no varying chunks), JPEG or WebP bytes at ``quality``."""
    buf = io.BytesIO()
    img = Image.fromarray(pixels, mode="RGB")
    if fmt == "png":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def output_prefix(request_id: str, now: float) -> str:
    return time.strftime("%Y/%m/%d", time.gmtime(now)) + f"/{request_id}"


def store_images(
    storage: Storage,
    job: GenerationJob,
    images: list[np.ndarray],
    *,
    prefix: str,
    extra: dict,
    now: float,
) -> list[StoredImage]:
    """Write each image and its sidecar under ``prefix``; returns what was written."""
    base = prefix + output_prefix(job.request_id, now)
    output = job.extra.get("output") or {}
    fmt, quality = output.get("format", "png"), int(output.get("quality", 90))
    content_type = IMAGE_CONTENT_TYPES[fmt]
    out: list[StoredImage] = []
    for i, pixels in enumerate(images):
        data = encode_image(pixels, fmt, quality)
        key = f"{base}/{i}.{IMAGE_SUFFIXES[fmt]}"
        sidecar = {
            "request_id": job.request_id,
            "index": i,
            "model": job.params.model_id,
            "parameters": job.describe(),
            "seed": job.seed + i,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            **extra,
        }
        storage.put(key, data, content_type)
        storage.put(f"{base}/{i}.json", json.dumps(sidecar, indent=2).encode(), "application/json")
        out.append(
            StoredImage(
                key=key,
                seed=job.seed + i,
                width=int(pixels.shape[1]),
                height=int(pixels.shape[0]),
                content_type=content_type,
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
    return out
