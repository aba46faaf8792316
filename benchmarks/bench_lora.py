"""LoRA benchmark: adapter switch and load times against the base model's load time, and
throughput of traffic spread over many adapters against traffic on one.

Part 1 (load times) uses a pipeline with SD1.5's real architecture and size (UNet 860 M
parameters, CLIP ViT-L text encoder, full VAE; random weights built offline by this script and
saved as safetensors) and rank-16 adapters on its attention projections, loaded through the
worker's own ``AdapterCache`` (diffusers' LoRA loader, peft backend). Measured interleaved
(base load, adapter load, switches; again ...), medians reported:

- switch between two loaded adapters ÷ base pipeline load (target ≤ 1/100);
- load of a new adapter ÷ base pipeline load (target ≤ 1/20).

Part 2 (throughput) runs the tiny SD1.5-style model on a local Ray Serve with ten catalog
adapters, and sends the same open-loop Poisson load (above capacity) alternately all on one
adapter and spread over ten (rounds interleaved): completed images/s spread ÷ one (target ≥ 0.8).

The summary goes to ``loadtests/results/``, the throughput part's jobs to
``loadtests/results/raw/``.

    flock /tmp/genmedia-ray.lock python benchmarks/bench_lora.py [--rounds 3] [--seconds 30]
        [--skip-load] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from _bench import MODEL, ensure_weights, poisson, save, sd15_catalog
from rich.console import Console

from genmedia.loadtests.local import ray_stack, stamp, tenant_record, tenants_file
from genmedia.models.catalog import Catalog

console = Console()
KEY = "gm_0f000001_" + "l" * 43
ADAPTERS = [f"bench-style-{i}" for i in range(10)]


# -- part 1: load times at SD1.5 size ---------------------------------------------------------
def build_sd15_size(out: Path) -> None:
    """Random weights in SD1.5's architecture (diffusers' UNet defaults are SD1.5's, with
    768-wide cross attention), saved with ``save_pretrained`` as safetensors."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from genmedia.models import sd15
    from genmedia.models.tiny_tokenizers import CLIP_MAX_LENGTH, build_clip_tokenizer

    tok = build_clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        scheduler=sd15.SCHEDULERS["euler"].from_config(sd15.SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def load_materialized(ckpt: Path) -> Any:
    """The base pipeline loaded and its weights read into memory. ``from_pretrained`` maps the
    safetensors files lazily; on a GPU the copy to the device reads every byte, on the CPU the
    first call would. Touching every tensor here makes the CPU number the same kind of load."""
    from genmedia.models import sd15

    pipe = sd15.load_pipeline(ckpt)
    for name in ("unet", "vae", "text_encoder"):
        for p in getattr(pipe, name).parameters():
            p.data = p.data.clone()
    return pipe


def build_inputs(workdir: Path, adapters: int) -> tuple[Path, dict[str, Path], dict]:
    """The SD1.5-size checkpoint and ``adapters`` rank-16 adapters for it, with their sizes."""
    from genmedia.models import sd15
    from genmedia.models.lora import build_tiny_adapter

    ckpt = workdir / "sd15-size"
    with console.status("building an SD1.5-size checkpoint (random weights)"):
        build_sd15_size(ckpt)
    pipe = sd15.load_pipeline(ckpt)
    files = {}
    with console.status("building rank-16 adapters"):
        for i in range(adapters):
            path = workdir / f"adapter-{i}.safetensors"
            files[f"a{i}"] = build_tiny_adapter(pipe, "sd15", path, rank=16, seed=i)
    sizes = {
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "checkpoint_bytes": sum(f.stat().st_size for f in ckpt.rglob("*.safetensors")),
        "adapter_bytes": files["a0"].stat().st_size,
    }
    del pipe
    gc.collect()
    return ckpt, files, sizes


def measure_load_times(workdir: Path, rounds: int, switches: int) -> dict:
    from genmedia.models.lora import AdapterCache
    from genmedia.models.params import AdapterUse

    ckpt, files, sizes = build_inputs(workdir, rounds + 2)
    base, load, switch = [], [], []
    first_injection = []
    for r in range(rounds):
        console.print(f"  load-time round {r + 1}/{rounds}")
        t = time.perf_counter()
        pipe = load_materialized(ckpt)
        base.append(time.perf_counter() - t)
        # The worker's cache with every slot taken (the steady state of a busy replica): a new
        # adapter is hot-swapped into the least recently used slot.
        cache = AdapterCache(capacity=2, max_rank=16)
        for aid in ("a0", "a1"):
            first_injection.append(cache.ensure(pipe, {aid: files[aid]}, set()))
        fresh = f"a{r + 2}"
        t = time.perf_counter()
        cache.ensure(pipe, {fresh: files[fresh]}, set())
        load.append(time.perf_counter() - t)
        cache.ensure(pipe, {"a0": files["a0"]}, {fresh})  # two adapters to switch between
        for k in range(switches):
            use = [AdapterUse(fresh if k % 2 else "a0", 1.0, "")]
            t = time.perf_counter()
            cache.activate(pipe, use)
            switch.append(time.perf_counter() - t)
        del pipe, cache
        gc.collect()
    b, lo, sw = (statistics.median(x) for x in (base, load, switch))
    return {
        **sizes,
        "adapter_rank": 16,
        "adapter_load": "hot-swap into the least recently used slot (all slots taken)",
        "adapter_first_injection_s": first_injection,
        "base_load_s": base,
        "adapter_load_s": load,
        "adapter_switch_s": switch,
        "median_base_load_s": b,
        "median_adapter_load_s": lo,
        "median_adapter_switch_s": sw,
        "switch_over_base": sw / b,
        "load_over_base": lo / b,
        "targets": {"switch_over_base": 1 / 100, "load_over_base": 1 / 20},
    }


# -- part 2: throughput over many adapters ---------------------------------------------------
def _catalog(workdir: str) -> Catalog:
    return sd15_catalog(
        workdir,
        model={"batch_wait_ms": 200, "max_loaded_adapters": 16, "priority_class": "batch"},
        loras=[{"id": a, "base_model": MODEL, "source": f"tiny://sd15/{a}"} for a in ADAPTERS],
    )


async def _traffic(url: str, adapters: list[str], seconds: float, rate: float, seed: int) -> dict:
    rng = random.Random(seed)
    arrivals = [(t, rng.choice(adapters)) for t in poisson(rate, seconds, rng)]
    h = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    submitted: list[dict] = []
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, headers=h) as c:
        t0 = time.time() + 0.5

        async def one(at: float, adapter: str) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.time()))
            r = await c.post(
                f"/v1/queue/models/{MODEL}",
                json={"prompt": "bulk", "loras": [{"id": adapter}], "seed": 1},
            )
            submitted.append(
                {"adapter": adapter, "status": r.status_code, "id": r.json().get("request_id")}
            )

        await asyncio.gather(*(one(at, a) for at, a in arrivals))
        sem = asyncio.Semaphore(32)
        done: list[dict] = []

        async def collect(s: dict) -> None:
            async with sem:
                st = (await c.get(f"/v1/queue/requests/{s['id']}/status")).json()
                if st["status"] in ("IN_QUEUE", "IN_PROGRESS"):
                    await c.put(f"/v1/queue/requests/{s['id']}/cancel")
                done.append({**s, "final": st["status"], "finished_at": st.get("finished_at")})

        await asyncio.gather(*(collect(s) for s in submitted if s["id"]))
        await asyncio.sleep(2.0)
    lo, hi = t0 + 5.0, t0 + seconds
    ok = [d for d in done if d["final"] == "COMPLETED" and lo <= (d["finished_at"] or 0) <= hi]
    return {
        "window_s": hi - lo,
        "completed": len(ok),
        "images_per_s": len(ok) / (hi - lo),
        "rejected": sum(1 for s in submitted if s["status"] != 202),
        "jobs": done,
    }


def measure_throughput(rounds: int, seconds: float, rate: float) -> dict:
    from genmedia.deployments.serve.local import run_app

    catalog = _catalog(tempfile.mkdtemp(prefix="genmedia-bench-lora-"))
    ensure_weights(catalog)
    runs: dict[str, list[dict]] = {"one": [], "ten": []}
    with ray_stack(num_cpus=2, num_gpus=1) as url:
        run_app(catalog, tenants_file([tenant_record("bench", KEY)]))
        # warm every adapter once (the first load builds the tiny adapter files)
        asyncio.run(_traffic(url, ADAPTERS, 6.0, 4.0, seed=99))
        for r in range(rounds):
            for name, adapters in (("one", ADAPTERS[:1]), ("ten", ADAPTERS)):
                console.print(f"  throughput round {r + 1}/{rounds}: {name} adapter(s)")
                runs[name].append(asyncio.run(_traffic(url, adapters, seconds, rate, seed=r)))

    def rate_of(parts: list[dict]) -> float:
        return sum(p["completed"] for p in parts) / sum(p["window_s"] for p in parts)

    one, ten = rate_of(runs["one"]), rate_of(runs["ten"])
    return {
        "offered_jobs_per_s": rate,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "images_per_s_one_adapter": one,
        "images_per_s_ten_adapters": ten,
        "ten_over_one": ten / one,
        "target": 0.8,
        "per_round": {k: [p["images_per_s"] for p in v] for k, v in runs.items()},
        "raw": runs,
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--switches", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=40.0, help="offered jobs/s (1 image each)")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    return ap.parse_args()


def raw_rows(raw: dict[str, list[dict]] | None) -> Iterator[dict]:
    for name, parts in (raw or {}).items():
        for n, part in enumerate(parts):
            for job in part["jobs"]:
                yield {"run": name, "round": n, **job}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    summary: dict[str, Any] = {
        "benchmark": "bench_lora",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    raw = None
    if not args.skip_load:
        with tempfile.TemporaryDirectory(prefix="genmedia-sd15-size-") as d:
            summary["load_times"] = lt = measure_load_times(Path(d), args.rounds, args.switches)
        console.print(
            f"base load {lt['median_base_load_s']:.2f} s, adapter load "
            f"{lt['median_adapter_load_s'] * 1e3:.1f} ms, switch "
            f"{lt['median_adapter_switch_s'] * 1e3:.2f} ms → switch/base "
            f"[bold]1/{1 / lt['switch_over_base']:.0f}[/], load/base "
            f"[bold]1/{1 / lt['load_over_base']:.0f}[/]"
        )
    if not args.skip_throughput:
        tp = measure_throughput(args.rounds, args.seconds, args.rate)
        raw = tp.pop("raw")
        summary["throughput"] = tp
        console.print(
            f"one adapter {tp['images_per_s_one_adapter']:.2f} img/s, ten adapters "
            f"{tp['images_per_s_ten_adapters']:.2f} img/s → [bold]{tp['ten_over_one']:.3f}[/]"
        )
    summary_path, raw_path = save(f"bench_lora-{stamp()}", summary, raw_rows(raw))
    console.print(f"summary → {summary_path}\nraw samples → {raw_path}")


if __name__ == "__main__":
    main()
