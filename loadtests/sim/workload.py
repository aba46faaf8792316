"""Trace records resolved for the simulator: each request's model, family, batch key and cost,
resolved against the catalog by the gateway's own ``resolve_request`` (same defaults, same
bounds, same ``batch_key``; the step engine's ``compat_key``). A request the gateway would refuse
(unknown model, a bound) becomes an ERROR record with the status the gateway answers. No Ray
imports.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from genmedia.deployments.scheduler.queues import job_cost
from genmedia.deployments.worker.engine_policy import CompatKey, compat_key
from genmedia.loadtests.traces import TraceRecord
from genmedia.models.catalog import Catalog
from genmedia.models.config_issues import field_errors
from genmedia.models.params import GenerateRequest, GenerationJob, resolve_request


@dataclass(slots=True)
class SimRequest:
    """One trace request as the simulated scheduler sees it."""

    index: int
    t: float
    tenant: str
    priority: str
    model_id: str
    family: str = ""
    key: tuple = ()
    images: int = 1
    steps: int = 1
    megapixels: float = 0.0
    cfg: bool = False
    cost: float = 0.0
    deadline_s: float | None = None
    compat: CompatKey | None = None  # the step engine's join key (``engine_policy.compat_key``)
    error: str | None = None  # refused before admission (validation)
    error_status: int | None = None


_SKIP = ("prompt", "seed")


def _resolve(entry, params: dict) -> tuple[tuple | None, GenerationJob | None, str | None]:
    try:
        body = GenerateRequest.model_validate(params)
    except ValidationError as e:
        field, message = field_errors(e)[0]
        return None, None, f"{field}: {message}"
    job, errors = resolve_request(entry, body, request_id="sim")
    if errors:
        return None, None, "; ".join(f"{e.field}: {e.message}" for e in errors)
    assert job is not None  # resolve_request gives a job or errors
    return job.batch_key, job, None


def prepare(trace: Iterable[TraceRecord], catalog: Catalog) -> list[SimRequest]:
    """Resolve every trace record once (identical parameter sets share the work)."""
    entries = {m.id: m for m in catalog.models}
    cache: dict[tuple, tuple] = {}
    out: list[SimRequest] = []
    for i, rec in enumerate(trace):
        r = SimRequest(i, rec.t, rec.tenant, rec.priority, rec.model, deadline_s=rec.deadline_s)
        out.append(r)
        entry = entries.get(rec.model)
        if entry is None:
            r.error, r.error_status = f"model: unknown model {rec.model!r}", 404
            continue
        params = rec.params
        prompt = params.get("prompt", "")
        shape = {k: v for k, v in params.items() if k not in _SKIP}
        ok_prompt = (
            isinstance(prompt, str)
            and bool(prompt.strip())
            and len(prompt) <= (entry.parameters.max_prompt_chars)
        )
        ck = (rec.model, json.dumps(shape, sort_keys=True, default=str), ok_prompt)
        hit = cache.get(ck)
        if hit is None:
            key, job, error = _resolve(entry, params)
            if error is None:
                assert job is not None
                p = job.params
                hit = (
                    key,
                    job.num_images,
                    p.num_inference_steps,
                    p.width * p.height / 1e6,
                    p.guidance_scale > 1.0,
                    job_cost(job.num_images, p.num_inference_steps, p.width, p.height),
                    compat_key(job),
                    None,
                )
            else:
                hit = (None, 0, 0, 0.0, False, 0.0, None, error)
            cache[ck] = hit
        key, r.images, r.steps, r.megapixels, r.cfg, r.cost, r.compat, error = hit
        r.family = entry.family
        r.key = key or ()
        if error is not None:
            r.error, r.error_status = error, 422
    return out
