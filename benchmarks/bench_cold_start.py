"""Cold start: how close a model load comes to the speed of reading its bytes.

Side by side in one run, alternating rounds (these machines are noisy), medians:

* an SD1.5-size checkpoint (a random-weight ``UNet2DConditionModel`` of the real SD1.5 config,
  860 M parameters; written once under ``$GENMEDIA_HOME/bench/``) loaded by
  ``models/fast_load.py`` ÷ a plain sequential read of the same bytes from the page cache into
  a fresh buffer (the physical limit of any load: the bytes have to land in memory), and ÷ the
  same read into one small reused buffer (page-cache bandwidth alone, no fresh memory);
* the same load ÷ diffusers' own ``UNet2DConditionModel.from_pretrained`` with its defaults
  (which on the CPU leaves the weights mapped from the file, so its first forward pays the
  page faults: also given with one read of every weight page after each load, "touched");
* the loader's ``mmap`` mode (``GENMEDIA_LOAD_MODE=mmap``) beside its default ``read`` mode;
* a LoRA adapter's first load (rank 16 on the UNet's attention, the worker's path:
  ``AdapterCache.ensure``, its file read plus peft's injection) ÷ a plain read of its bytes;
* the time from a scale-up decision to a new replica's first image, in phases, measured on the
  tiny SD1.5 model in a fresh Python process per round (the replica's imports, weight
  resolution, the load's phases, kernel options, the first call and a second one);
* the same on a real local Ray Serve (``--serve-rounds``): a family worker deployment of the
  tiny SD1.5 model started from nothing (Serve places the actor, the replica imports, loads
  and reports ready) and its first image through a deployment handle, split into the replica's
  measured load and the rest (actor start, imports, Serve registration).

The summary goes to ``loadtests/results/``, raw samples to ``loadtests/results/raw/``.

    python benchmarks/bench_cold_start.py [--rounds 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _bench import commit, save
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from genmedia.loadtests.local import stamp
from genmedia.models.weights import genmedia_home

console = Console()

# The UNet of runwayml/stable-diffusion-v1-5 (unet/config.json), 859.5 M parameters.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
}
LORA_RANK = 16
READ_CHUNK = 16 * 1024 * 1024


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _free() -> None:
    gc.collect()


def build_checkpoint(dtype: torch.dtype) -> Path:
    """The SD1.5-size UNet as a checkpoint directory (model_index.json + unet/), built once."""
    from diffusers import UNet2DConditionModel

    name = str(dtype).removeprefix("torch.")
    out = genmedia_home() / "bench" / f"sd15-unet-{name}"
    if (out / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        return out
    console.print(f"building a random-weight SD1.5 UNet ({name}) at {out} (once)")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).to(dtype)
    tmp = out.with_name(out.name + ".tmp")
    unet.save_pretrained(tmp / "unet", safe_serialization=True, max_shard_size="100GB")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index))
    del unet
    _free()
    os.replace(tmp, out)
    return out


def plain_read(path: Path, fresh: bool) -> int:
    """Read ``path`` front to back: into a fresh buffer of its size, or a small reused one."""
    size = path.stat().st_size
    buf = torch.empty(size if fresh else READ_CHUNK, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    done = 0
    with path.open("rb", buffering=0) as fh:
        while True:
            part = view[done : done + READ_CHUNK] if fresh else view
            got = fh.readinto(part)
            if not got:
                return done
            done += got


def fast_unet(ckpt: Path, dtype: torch.dtype, mode: str = "read") -> Any:
    from genmedia.models.fast_load import load_component

    return load_component(ckpt, "unet", dtype, mode=mode)


def touch_s(model: Any) -> float:
    """Seconds ``touch`` takes."""
    start = time.perf_counter()
    touch(model)
    return time.perf_counter() - start


def touch(model: Any) -> float:
    """Read one value of every 4 KiB page of every weight (what the first forward does to
    weights that are still only mapped)."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            flat = p.detach().reshape(-1)
            total += float(flat[:: max(1, 4096 // flat.element_size())].float().sum())
    return total


def diffusers_unet(ckpt: Path) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(ckpt, subfolder="unet")


def lora_pipe(unet: Any) -> Any:
    """A StableDiffusionPipeline around ``unet`` with the tiny model's other parts (LoRA keys
    target the UNet only, so the text side does not matter for loading)."""
    from diffusers import StableDiffusionPipeline

    from genmedia.models import sd15

    parts = sd15.build_components()
    parts["unet"] = unet
    return StableDiffusionPipeline(**parts, requires_safety_checker=False)


def build_lora(ckpt: Path, dtype: torch.dtype) -> Path:
    """A rank-16 LoRA for the SD1.5-size UNet's attention (built once)."""
    from genmedia.models.lora import build_tiny_adapter

    out = ckpt / f"lora-r{LORA_RANK}.safetensors"
    if not out.is_file():
        pipe = lora_pipe(fast_unet(ckpt, dtype))
        tmp = out.with_name(".part-" + out.name)
        build_tiny_adapter(pipe, "sd15", tmp, rank=LORA_RANK, seed=1)
        os.replace(tmp, out)
        del pipe
        _free()
    return out


def lora_first_load(unet: Any, lora: Path) -> dict[str, float]:
    """The worker's path for an adapter's first load on a fresh model, and its file read."""
    from genmedia.models.lora import AdapterCache, read_adapter

    pipe = lora_pipe(unet)
    read_s, _ = _timed(lambda: read_adapter(lora))
    cache = AdapterCache(capacity=4, max_rank=LORA_RANK)
    first_s, _ = _timed(lambda: cache.ensure(pipe, {"a": lora}, set()))
    return {"lora_first_load_s": first_s, "lora_read_adapter_s": read_s}


def load_round(ckpt: Path, lora: Path, dtype: torch.dtype) -> dict[str, float]:
    """One round of the load measurements, in an order that changes nothing between them."""
    weights = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
    row: dict[str, float] = {}
    row["plain_read_fresh_s"], _ = _timed(lambda: plain_read(weights, fresh=True))
    _free()
    row["plain_read_reused_s"], _ = _timed(lambda: plain_read(weights, fresh=False))
    row["fast_load_s"], unet = _timed(lambda: fast_unet(ckpt, dtype))
    row["fast_touch_s"] = touch_s(unet)
    row.update(lora_first_load(unet, lora))
    del unet
    _free()
    row["lora_plain_read_s"], _ = _timed(lambda: plain_read(lora, fresh=True))
    row["fast_mmap_load_s"], unet = _timed(lambda: fast_unet(ckpt, dtype, "mmap"))
    row["fast_mmap_touch_s"] = touch_s(unet)
    del unet
    _free()
    row["diffusers_load_s"], unet = _timed(lambda: diffusers_unet(ckpt))
    row["diffusers_touch_s"] = touch_s(unet)
    del unet
    _free()
    return row


CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
from genmedia.models.runner import load_model, run_batch
from genmedia.models.weights import resolve_source
from genmedia.models.params import GenerateRequest, resolve_request
imports_s = time.perf_counter() - t0
sys.path.insert(0, {bench!r})
from _bench import sd15_catalog
entry = sd15_catalog({work!r}).models[0]
t = time.perf_counter(); path = resolve_source(entry.weights); resolve_s = time.perf_counter() - t
t = time.perf_counter(); model = load_model(entry, path, "cpu"); load_s = time.perf_counter() - t
req = GenerateRequest(prompt="a red fox", num_inference_steps=4, seed=1)
job, errors = resolve_request(entry, req, request_id="r1")
assert job is not None, errors
t = time.perf_counter(); run_batch(model, [job]); first_s = time.perf_counter() - t
t = time.perf_counter(); run_batch(model, [job]); second_s = time.perf_counter() - t
phases = {{k: v for k, v in model.load_phases.items() if isinstance(v, float)}}
print(json.dumps({{"imports_s": imports_s, "resolve_s": resolve_s, "load_s": load_s,
    "first_call_s": first_s, "second_call_s": second_s, "load_phases": phases}}))
"""


def scale_up_round(work: Path) -> dict[str, Any]:
    """A new replica's way to its first image, in a fresh process (tiny SD1.5, 64 px, 4 steps)."""
    code = CHILD.format(bench=str(Path(__file__).resolve().parent), work=str(work))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"scale-up child failed:\n{out.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    row["process_wall_s"] = wall
    row["interpreter_s"] = wall - sum(
        row[k] for k in ("imports_s", "resolve_s", "load_s", "first_call_s", "second_call_s")
    )
    row["to_first_image_s"] = wall - row["second_call_s"]
    return row


async def _first_image(handle: Any, req: Any) -> Any:
    """Stream one batch through a worker deployment handle; its result."""
    result = None
    async for event in handle.options(stream=True).run_batch.remote(req):
        result = event
    return result


def serve_scale_up(rounds: int, work: Path) -> list[dict[str, Any]]:
    """A new worker replica on a real local Ray Serve, ``rounds`` times: deploy to ready, then
    its first image (tiny SD1.5, 64 px, 4 steps) through a deployment handle."""
    import asyncio

    from _bench import sd15_catalog
    from ray import serve

    from genmedia.deployments.protocol import BatchRequest, PriorityClass
    from genmedia.deployments.serve.app import deployable, plan_workers
    from genmedia.deployments.serve.worker import FamilyWorkerDeployment
    from genmedia.loadtests.local import ray_stack
    from genmedia.models.params import GenerateRequest, resolve_request

    catalog = deployable(sd15_catalog(work))
    plan = next(p for p in plan_workers(catalog) if p.family == "sd15")
    entries = catalog.families()["sd15"]
    job, errors = resolve_request(
        entries[0], GenerateRequest(prompt="x", num_inference_steps=4, seed=1), request_id="r"
    )
    assert job is not None and not errors
    rows = []
    with ray_stack(num_cpus=2, num_gpus=1):
        for i in range(rounds):
            app = FamilyWorkerDeployment.options(  # type: ignore[attr-defined]
                **plan.deployment_options(True)
            ).bind(
                "sd15",
                [e.model_dump(mode="json") for e in entries],
                {e.id: e.weights for e in entries},
                plan.num_cpus,
                plan.max_loaded_models,
                plan.memory_gb,
                catalog.server.model_dump(mode="json"),
            )
            t0 = time.perf_counter()
            handle = serve.run(app, name=f"coldstart-{i}", route_prefix=None)
            ready_s = time.perf_counter() - t0
            report = handle.ready.remote().result()
            req = BatchRequest(f"b{i}", entries[0].id, PriorityClass.INTERACTIVE, [job], {"r": "t"})

            t1 = time.perf_counter()
            asyncio.run(_first_image(handle, req))
            first_s = time.perf_counter() - t1
            load_s = float(sum((report.get("load_s") or {}).values()))
            rows.append(
                {
                    "decision_to_ready_s": ready_s,
                    "replica_load_s": load_s,
                    "start_imports_registration_s": ready_s - load_s,
                    "first_image_s": first_s,
                    "decision_to_first_image_s": ready_s + first_s,
                }
            )
            serve.delete(f"coldstart-{i}")
    return rows


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def load_summary(rows: list[dict[str, Any]], ckpt_bytes: int, lora_bytes: int) -> dict[str, Any]:
    med = {k: _median(rows, k) for k in rows[0]}
    return {
        "checkpoint_bytes": ckpt_bytes,
        "lora_bytes": lora_bytes,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "fast_load_GBps": round(ckpt_bytes / med["fast_load_s"] / 1e9, 3),
        "plain_read_fresh_GBps": round(ckpt_bytes / med["plain_read_fresh_s"] / 1e9, 3),
        "ratios": {
            "fast_load_over_plain_read": round(med["fast_load_s"] / med["plain_read_fresh_s"], 3),
            "fast_load_over_page_cache_read": round(
                med["fast_load_s"] / med["plain_read_reused_s"], 3
            ),
            "fast_load_over_diffusers": round(med["fast_load_s"] / med["diffusers_load_s"], 3),
            "fast_load_over_diffusers_touched": round(
                (med["fast_load_s"] + med["fast_touch_s"])
                / (med["diffusers_load_s"] + med["diffusers_touch_s"]),
                3,
            ),
            "mmap_load_over_plain_read": round(
                med["fast_mmap_load_s"] / med["plain_read_fresh_s"], 3
            ),
            "mmap_load_over_page_cache_read": round(
                med["fast_mmap_load_s"] / med["plain_read_reused_s"], 3
            ),
            "mmap_load_over_diffusers_touched": round(
                (med["fast_mmap_load_s"] + med["fast_mmap_touch_s"])
                / (med["diffusers_load_s"] + med["diffusers_touch_s"]),
                3,
            ),
            "lora_first_load_over_read": round(
                med["lora_first_load_s"] / med["lora_plain_read_s"], 3
            ),
            "lora_file_read_over_plain_read": round(
                med["lora_read_adapter_s"] / med["lora_plain_read_s"], 3
            ),
        },
        "target": {"fast_load_over_plain_read": 1.5},
    }


def scale_up_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    phases = sorted({k for r in rows for k in r["load_phases"]})
    return {
        "model": "tiny sd15 (64 px, 4 steps), one torch thread, fresh process per round",
        "not_included": "Ray actor start and Serve registration (policy knob replica_start_s)",
        "median_s": {k: round(_median(rows, k), 4) for k in keys},
        "load_phases_median_s": {
            k: round(statistics.median(r["load_phases"].get(k, 0.0) for r in rows), 4)
            for k in phases
        },
    }


def _table(summary: dict[str, Any]) -> Table:
    table = Table(title="cold start (medians)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in summary["load"]["median_s"].items():
        table.add_row(k, f"{v:.3f} s")
    for k, v in summary["load"]["ratios"].items():
        table.add_row(k, f"{v:.2f}x")
    for k, v in summary["scale_up"]["median_s"].items():
        table.add_row(f"scale-up {k}", f"{v:.3f} s")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument(
        "--serve-rounds", type=int, default=3, help="real Ray Serve replica starts (0: none)"
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    ckpt = build_checkpoint(dtype)
    lora = build_lora(ckpt, dtype)
    weights = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
    plain_read(weights, fresh=False)  # into the page cache: the loads below all read from it
    work = genmedia_home() / "bench" / "scale-up"
    from genmedia.models.weights import resolve_source

    resolve_source("tiny://sd15")  # built once here, not in a measured round
    loads: list[dict[str, Any]] = []
    ups: list[dict[str, Any]] = []
    with Progress(console=console) as progress:
        task = progress.add_task("rounds (load, LoRA, scale-up)", total=args.rounds)
        for i in range(args.rounds):
            loads.append({"round": i, **load_round(ckpt, lora, dtype)})
            ups.append({"round": i, **scale_up_round(work)})
            progress.advance(task)
    summary = {
        "bench": "cold_start",
        "commit": commit(),
        "when": stamp(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "checkpoint": f"random-weight SD1.5 UNet ({args.dtype}), {ckpt}",
        "load": load_summary(
            [{k: v for k, v in r.items() if k != "round"} for r in loads],
            weights.stat().st_size,
            lora.stat().st_size,
        ),
        "scale_up": scale_up_summary(ups),
    }
    serve_rows = serve_scale_up(args.serve_rounds, work) if args.serve_rounds else []
    if serve_rows:
        summary["scale_up_on_ray_serve"] = {
            "model": "tiny sd15 (64 px, 4 steps), a fresh family worker deployment per round",
            "median_s": {k: round(_median(serve_rows, k), 4) for k in serve_rows[0]},
        }
    raw = [{"kind": "load", **r} for r in loads] + [{"kind": "scale_up", **r} for r in ups]
    raw += [{"kind": "scale_up_on_ray_serve", **r} for r in serve_rows]
    summary_path, raw_path = save(f"bench_cold_start-{summary['when']}", summary, raw)
    console.print(_table(summary))
    console.print(f"summary: {summary_path}\nraw: {raw_path}")


if __name__ == "__main__":
    main()
