"""Open-loop replay of a trace against a running genmedia gateway over HTTP.

Between the trace (``traces.py`` / ``scenarios.py``) and the report (``report.py``): every trace
request is sent at its arrival time, whatever happened to the earlier ones (no coordinated
omission: a dispatcher starts one asyncio task per request at its time and never waits for
answers), through the sync API or the queue API (then followed over the SSE stream or by
polling). Each request becomes a ``RequestRecord``. ``preflight`` checks the URL, every API key
and every model and parameter of the trace before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx
import numpy as np

from genmedia.loadtests.records import RequestRecord
from genmedia.loadtests.traces import TraceRecord

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "EXPIRED"}
UNCHECKED = ("prompt", "negative_prompt", "seed")  # free per request: not in the bound check
Locate = Callable[[int, str], str]  # (trace index, field) → "file:line: field" for messages


class PreflightError(RuntimeError):
    """The target cannot take this run: unreachable, a key refused, a model or bound unknown."""


@dataclass(frozen=True)
class ReplayConfig:
    """Where and how to send a trace."""

    url: str
    keys: dict[str, str]  # tenant → API key
    default_key: str | None = None  # for tenants without their own key
    api: Literal["sync", "queue"] = "queue"
    follow: Literal["stream", "poll"] = "stream"  # queue API: how to follow a job
    poll_interval_s: float = 0.25
    request_timeout_s: float = 300.0  # submit → final status, per request
    connect_timeout_s: float = 5.0
    cancel_on_timeout: bool = True

    def key_for(self, tenant: str) -> str:
        key = self.keys.get(tenant, self.default_key)
        if key is None:
            raise PreflightError(f"no API key for tenant {tenant!r}: pass --key {tenant}=KEY")
        return key


@dataclass
class LiveStats:
    """Counters the live view shows; updated by the replay as requests progress."""

    total: int = 0
    sent: int = 0
    in_flight: int = 0
    done: int = 0
    completed: int = 0
    rejected: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def p99(self) -> float | None:
        return float(np.percentile(self.latencies, 99)) if self.latencies else None

    def finish(self, r: RequestRecord) -> None:
        self.in_flight -= 1
        self.done += 1
        if r.status == "COMPLETED":
            self.completed += 1
            if r.latency is not None:
                self.latencies.append(r.latency)
        elif r.status == "REJECTED":
            self.rejected += 1
        else:
            self.errors += 1


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error_text(resp: httpx.Response) -> tuple[str, str]:
    """(type, message) of an API error body, or the raw text."""
    try:
        err = resp.json().get("error") or {}
        return str(err.get("type") or resp.status_code), str(err.get("message") or "")
    except (ValueError, AttributeError):
        return str(resp.status_code), resp.text[:200]


def param_problems(params: dict, schema: dict) -> list[tuple[str, str]]:
    """(field, message) for every parameter outside a model's schema (``GET /v1/models``)."""
    out = []
    for name, value in params.items():
        spec = schema.get(name)
        if spec is None:
            out.append((name, "unknown field for this model"))
            continue
        if name in UNCHECKED or isinstance(value, bool):
            continue
        if "enum" in spec and value not in spec["enum"]:
            out.append((name, f"{value!r} is not one of {spec['enum']}"))
        if not isinstance(value, int | float):
            continue
        if "minimum" in spec and value < spec["minimum"]:
            out.append((name, f"{value:g} is below the model's minimum {spec['minimum']:g}"))
        elif "maximum" in spec and value > spec["maximum"]:
            out.append((name, f"{value:g} is above the model's maximum {spec['maximum']:g}"))
        elif spec.get("multipleOf") and value % spec["multipleOf"]:
            out.append((name, f"{value:g} is not a multiple of {spec['multipleOf']}"))
    return out


async def _list_models(client: httpx.AsyncClient, url: str, tenant: str, key: str) -> dict:
    try:
        resp = await client.get("/v1/models", headers=_headers(key))
    except httpx.HTTPError as e:
        raise PreflightError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
    if resp.status_code == 401:
        _, message = _error_text(resp)
        raise PreflightError(
            f"{url} refused the API key of tenant {tenant!r} (401 {message})".rstrip()
        )
    if resp.status_code != 200:
        kind, message = _error_text(resp)
        raise PreflightError(
            f"{url}/v1/models answered {resp.status_code} ({kind} {message}); "
            "is this a genmedia gateway?"
        )
    try:
        return {m["id"]: m for m in resp.json()["models"]}
    except (ValueError, KeyError, TypeError):
        raise PreflightError(f"{url}/v1/models: not a genmedia model list") from None


async def preflight(
    client: httpx.AsyncClient, cfg: ReplayConfig, trace: list[TraceRecord], locate: Locate
) -> dict[str, dict]:
    """Check the URL, every tenant's key, and every model and parameter of the trace; return
    the models per tenant. Raises ``PreflightError`` at the first problem."""
    tenants = sorted({r.tenant for r in trace})
    keys = {t: cfg.key_for(t) for t in tenants}
    models: dict[str, dict] = {}
    for t in tenants:
        models[t] = await _list_models(client, cfg.url, t, keys[t])
    seen: set[tuple] = set()
    for i, r in enumerate(trace):
        served = models[r.tenant]
        if r.model not in served:
            raise PreflightError(
                f"{locate(i, 'model')}: model {r.model!r} is not served to tenant {r.tenant!r} "
                f"at {cfg.url}; served: {', '.join(sorted(served)) or 'none'}"
            )
        checked = tuple(sorted((k, repr(v)) for k, v in r.params.items() if k not in UNCHECKED))
        if (r.model, checked) in seen:
            continue
        seen.add((r.model, checked))
        problems = param_problems(r.params, served[r.model].get("parameters", {}))
        if problems:
            name, message = problems[0]
            raise PreflightError(f"{locate(i, f'params.{name}')}: {message} ({r.model})")
    return models


def _steps(r: TraceRecord, models: dict[str, dict]) -> int:
    if "num_inference_steps" in r.params:
        return int(r.params["num_inference_steps"])
    schema = models.get(r.tenant, {}).get(r.model, {}).get("parameters", {})
    return int(schema.get("num_inference_steps", {}).get("default") or 0)


class Replayer:
    """Sends one trace; ``run`` returns a record per request, in trace order."""

    def __init__(
        self,
        cfg: ReplayConfig,
        client: httpx.AsyncClient,
        models: dict[str, dict],
        stats: LiveStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg, self.client, self.models = cfg, client, models
        self.stats = stats or LiveStats()
        self.clock = clock
        self.t0 = 0.0

    def now(self) -> float:
        return self.clock() - self.t0

    async def run(self, trace: list[TraceRecord]) -> list[RequestRecord]:
        self.stats.total = len(trace)
        self.t0 = self.clock()
        tasks = []
        for i, rec in enumerate(trace):
            delay = rec.t - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(i, rec)))
        return list(await asyncio.gather(*tasks))

    async def one(self, i: int, rec: TraceRecord) -> RequestRecord:
        r = RequestRecord(
            index=i,
            tenant=rec.tenant,
            priority=rec.priority,
            model=rec.model,
            images=rec.images,
            steps=_steps(rec, self.models),
            t_scheduled=rec.t,
            t_submit=self.now(),
        )
        self.stats.sent += 1
        self.stats.in_flight += 1
        headers = _headers(self.cfg.key_for(rec.tenant))
        if rec.deadline_s is not None:
            headers["X-Deadline-Seconds"] = f"{rec.deadline_s:g}"
        body = {**rec.params, "priority": rec.priority}
        try:
            async with asyncio.timeout(self.cfg.request_timeout_s):
                if self.cfg.api == "sync":
                    await self._sync(r, body, headers)
                else:
                    await self._queue(r, body, headers)
        except TimeoutError:
            r.status, r.error = "ERROR", f"no final status within {self.cfg.request_timeout_s:g}s"
            await self._cancel(r, headers)
        except Exception as e:  # one request's failure is a record, never the run's end
            r.status, r.error = "ERROR", f"{type(e).__name__}: {e}"[:300]
        if r.t_done is None:
            r.t_done = self.now()  # when the refusal or the error was known
        self.stats.finish(r)
        return r

    def _refused(self, r: RequestRecord, resp: httpx.Response) -> None:
        r.http_status = resp.status_code
        kind, message = _error_text(resp)
        r.error = f"{resp.status_code} {kind}: {message}"[:300]
        if resp.status_code == 429:
            r.status = "REJECTED"
        elif kind == "deadline_expired":
            r.status, r.t_done = "EXPIRED", self.now()
        elif resp.status_code == 409 and kind.lower() == "cancelled":
            r.status, r.t_done = "CANCELLED", self.now()
        else:
            r.status = "ERROR"

    def _timings(self, r: RequestRecord, result: dict) -> None:
        """Server-side queue time and this request's share of its batch's compute."""
        t = result.get("timings") or {}
        if t.get("queue_s") is not None:
            r.queue_s = float(t["queue_s"])
            if r.t_started is None:
                r.t_started = (r.t_admitted or r.t_submit) + r.queue_s
        batch_images = (result.get("batch") or {}).get("images") or r.images
        if t.get("compute_s") is not None:
            r.compute_s = float(t["compute_s"]) * r.images / max(1, batch_images)

    async def _sync(self, r: RequestRecord, body: dict, headers: dict) -> None:
        resp = await self.client.post(f"/v1/models/{r.model}/generate", json=body, headers=headers)
        if resp.status_code != 200:
            self._refused(r, resp)
            return
        r.t_done = self.now()
        r.http_status = 200
        data = resp.json()
        r.status, r.request_id = "COMPLETED", data.get("request_id")
        self._timings(r, data)

    async def _queue(self, r: RequestRecord, body: dict, headers: dict) -> None:
        resp = await self.client.post(f"/v1/queue/models/{r.model}", json=body, headers=headers)
        if resp.status_code != 202:
            self._refused(r, resp)
            return
        r.t_admitted, r.http_status = self.now(), 202
        r.request_id = resp.json()["request_id"]
        final = None
        if self.cfg.follow == "stream":
            final = await self._stream(r, headers)
        if final is None:  # polling, or a stream that ended early
            final = await self._poll(r, headers)
        if final == "COMPLETED":
            path = f"/v1/queue/requests/{r.request_id}"
            res = await self.client.get(path, headers=headers)
            if res.status_code == 200:
                self._timings(r, res.json())

    def _apply(self, r: RequestRecord, status: dict) -> str | None:
        """Fold one status into the record; the final status when terminal."""
        s = status.get("status")
        now = self.now()
        if s == "IN_PROGRESS":
            r.t_started = r.t_started if r.t_started is not None else now
            step = (status.get("progress") or {}).get("step") or 0
            if step > 0 and r.t_first_progress is None:
                r.t_first_progress = now
        if s not in TERMINAL:
            return None
        r.t_done, r.status = now, s
        err = status.get("error")
        if err:
            r.error = f"{err.get('type')}: {err.get('message')}"[:300]
        return s

    async def _stream(self, r: RequestRecord, headers: dict) -> str | None:
        path = f"/v1/queue/requests/{r.request_id}/stream"
        async with self.client.stream("GET", path, headers=headers) as resp:
            if resp.status_code != 200:
                return None
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    final = self._apply(r, json.loads(line[5:]))
                    if final is not None:
                        return final
        return None

    async def _poll(self, r: RequestRecord, headers: dict) -> str:
        path = f"/v1/queue/requests/{r.request_id}/status"
        while True:
            resp = await self.client.get(path, headers=headers)
            if resp.status_code == 200:
                final = self._apply(r, resp.json())
                if final is not None:
                    return final
            elif resp.status_code != 503:
                kind, message = _error_text(resp)
                raise ValueError(f"status {resp.status_code} {kind}: {message}")
            await asyncio.sleep(self.cfg.poll_interval_s)

    async def _cancel(self, r: RequestRecord, headers: dict) -> None:
        """Best effort: a request we gave up on should not keep loading the cluster."""
        if not (self.cfg.cancel_on_timeout and r.request_id):
            return
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            await asyncio.wait_for(
                self.client.put(f"/v1/queue/requests/{r.request_id}/cancel", headers=headers), 5
            )


def make_client(cfg: ReplayConfig) -> httpx.AsyncClient:
    """One client for every request: big pools (open loop: many requests in flight)."""
    return httpx.AsyncClient(
        base_url=cfg.url.rstrip("/"),
        timeout=httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s),
        limits=httpx.Limits(max_connections=4096, max_keepalive_connections=512),
    )


async def replay(
    trace: list[TraceRecord],
    cfg: ReplayConfig,
    locate: Locate,
    stats: LiveStats | None = None,
    on_start: Callable[[], None] | None = None,
) -> list[RequestRecord]:
    """Preflight, then send the whole trace open loop; the records in trace order."""
    async with make_client(cfg) as client:
        models = await preflight(client, cfg, trace, locate)
        if on_start is not None:
            on_start()
        return await Replayer(cfg, client, models, stats).run(trace)
