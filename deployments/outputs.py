"""Encode a worker's images and store them with a JSON sidecar (model, parameters, seed).

Runs in the gateway, in a thread, after the worker returns; the response lists what it wrote.
PNG bytes depend only on the pixels, so same model + parameters + seed give identical files.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from genmedia.deployments.storage import Storage
from genmedia.models.params import GenerationJob


@dataclass
class StoredImage:
    key: str
    url: str
    seed: int
    width: int
    height: int
    content_type: str
    sha256: str
    b64: str | None

    def as_dict(self) -> dict:
        d = {
            "url": self.url,
            "path": self.key,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "content_type": self.content_type,
            "sha256": self.sha256,
        }
        if self.b64 is not None:
            d["base64"] = self.b64
        return d


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 HxWx3 to PNG bytes (no timestamps or other varying chunks)."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def output_prefix(request_id: str, now: float) -> str:
    return time.strftime("%Y/%m/%d", time.gmtime(now)) + f"/{request_id}"


def store_images(
    storage: Storage,
    job: GenerationJob,
    images: list[np.ndarray],
    *,
    base_url: str,
    return_base64: bool,
    extra: dict,
    now: float,
) -> list[StoredImage]:
    """Write each image and its sidecar; returns what the response should list."""
    prefix = output_prefix(job.request_id, now)
    out: list[StoredImage] = []
    for i, pixels in enumerate(images):
        data = encode_png(pixels)
        key = f"{prefix}/{i}.png"
        sidecar = {
            "request_id": job.request_id,
            "index": i,
            "model": job.params.model_id,
            "parameters": job.describe(),
            "seed": job.seed + i,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            **extra,
        }
        storage.put(key, data, "image/png")
        storage.put(
            f"{prefix}/{i}.json", json.dumps(sidecar, indent=2).encode(), "application/json"
        )
        out.append(
            StoredImage(
                key=key,
                url=storage.url(key, base_url),
                seed=job.seed + i,
                width=int(pixels.shape[1]),
                height=int(pixels.shape[0]),
                content_type="image/png",
                sha256=hashlib.sha256(data).hexdigest(),
                b64=base64.b64encode(data).decode() if return_base64 else None,
            )
        )
    return out
