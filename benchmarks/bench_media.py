"""Media encoding cost: what encoding adds to a video or audio call, at tiny and at real sizes.

Side by side in one run, alternating rounds (these machines are noisy), one torch thread (a
worker replica with one Ray CPU):

* tiny: the tiny Wan clip (17 frames 64x64, 4 steps) and the tiny Stable Audio clip (4 s,
  4 steps): pipeline call time, then the time to encode its output (MP4; WAV, FLAC, MP3);
  the ratio encode ÷ call says what encoding adds to a call.
* real sizes, encoders only (the output of a real model costs the encoder the same as noise of
  that shape, so no real weights are needed): an 81-frame 832x480 clip (Wan 2.1 480p) to MP4,
  a 47 s stereo 44.1 kHz clip (Stable Audio Open's longest) to WAV, FLAC and MP3; the ratio
  encode time ÷ media duration is the real-time factor.

The summary goes to ``loadtests/results/``, raw per-sample times to ``loadtests/results/raw/``.

    python benchmarks/bench_media.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench import RAW, commit, save
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from genmedia.loadtests.local import stamp
from genmedia.models import media, stable_audio, wan

console = Console()

REAL_VIDEO = (81, 480, 832)  # Wan 2.1 480p: frames, height, width
REAL_AUDIO_S = 47.0  # Stable Audio Open's longest clip
REAL_AUDIO_RATE = 44_100


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _pipelines(tmp: Path) -> tuple[Any, Any]:
    wan.build_tiny(tmp / "wan")
    stable_audio.build_tiny(tmp / "stable-audio")
    return wan.load_pipeline(tmp / "wan"), stable_audio.load_pipeline(tmp / "stable-audio")


def _sample(
    seed: int, kind: str, what: str, seconds: float, media_s: float, out_bytes: int = 0
) -> dict:
    return {
        "round": seed,
        "kind": kind,
        "what": what,
        "seconds": seconds,
        "media_s": media_s,
        "bytes": out_bytes,
    }


def _tiny(video_pipe: Any, audio_pipe: Any, seed: int) -> list[dict]:
    """The tiny pipelines' calls and the encoding of their outputs."""
    out: list[dict] = []
    gen = [torch.Generator().manual_seed(seed)]
    call_s, frames = _timed(
        lambda: wan.run_text_to_video(
            video_pipe,
            ["a red fox running through snow"],
            num_frames=wan.DEFAULT_NUM_FRAMES,
            width=64,
            height=64,
            steps=4,
            generators=gen,
        )
    )
    clip_s = wan.DEFAULT_NUM_FRAMES / wan.DEFAULT_FPS
    out.append(_sample(seed, "tiny", "wan call", call_s, clip_s))
    enc_s, data = _timed(lambda: media.encode_video(frames[0], wan.DEFAULT_FPS))
    out.append(_sample(seed, "tiny", "mp4 encode", enc_s, clip_s, len(data)))

    gen = [torch.Generator().manual_seed(seed)]
    call_s, waves = _timed(
        lambda: stable_audio.run_text_to_audio(
            audio_pipe, ["rain on a tin roof"], duration_s=4.0, steps=4, generators=gen
        )
    )
    out.append(_sample(seed, "tiny", "stable-audio call", call_s, 4.0))
    rate = stable_audio.sample_rate(audio_pipe)
    for fmt in ("wav", "flac", "mp3"):
        enc_s, data = _timed(lambda fmt=fmt: media.encode_audio(waves[0], rate, fmt))
        out.append(_sample(seed, "tiny", f"{fmt} encode", enc_s, 4.0, len(data)))
    return out


def _real(seed: int) -> list[dict]:
    """The encoders alone on media of real sizes."""
    out: list[dict] = []
    rng = np.random.default_rng(seed)
    frames_n, height, width = REAL_VIDEO
    # A moving gradient with mild noise: compressible like real footage, not like pure noise.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    clip = np.stack([(base + 3 * i) % 256 for i in range(frames_n)]).astype(np.int16)
    clip = np.clip(clip + rng.integers(-6, 7, clip.shape), 0, 255).astype(np.uint8)
    enc_s, data = _timed(lambda: media.encode_video(clip, wan.DEFAULT_FPS))
    what = f"mp4 encode {frames_n}x{width}x{height}"
    out.append(_sample(seed, "real", what, enc_s, frames_n / wan.DEFAULT_FPS, len(data)))

    t = np.arange(int(REAL_AUDIO_S * REAL_AUDIO_RATE)) / REAL_AUDIO_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)
    wave = np.stack([tone, np.roll(tone, 100)]).astype(np.float32)
    for fmt in ("wav", "flac", "mp3"):
        enc_s, data = _timed(lambda fmt=fmt: media.encode_audio(wave, REAL_AUDIO_RATE, fmt))
        what = f"{fmt} encode 47s stereo 44.1kHz"
        out.append(_sample(seed, "real", what, enc_s, REAL_AUDIO_S, len(data)))
    return out


def _round(video_pipe: Any, audio_pipe: Any, seed: int) -> list[dict]:
    """One round: every measurement once; returns the raw samples."""
    return _tiny(video_pipe, audio_pipe, seed) + _real(seed)


def _summary(samples: list[dict]) -> list[dict]:
    rows: list[dict] = []
    whats = list(dict.fromkeys(s["what"] for s in samples))
    medians = {w: statistics.median(s["seconds"] for s in samples if s["what"] == w) for w in whats}
    calls = {"mp4 encode": "wan call", "wav encode": "stable-audio call"}
    calls |= {"flac encode": "stable-audio call", "mp3 encode": "stable-audio call"}
    for w in whats:
        first = next(s for s in samples if s["what"] == w)
        row = {
            "what": w,
            "kind": first["kind"],
            "median_s": medians[w],
            "bytes": first["bytes"],
            "realtime_factor": medians[w] / first["media_s"],
        }
        if w in calls:
            row["encode_over_call"] = medians[w] / medians[calls[w]]
        rows.append(row)
    return rows


def measure(rounds: int) -> list[dict]:
    """A warm-up round, then ``rounds`` recorded ones; the raw samples."""
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="genmedia-bench-media-") as tmp:
        video_pipe, audio_pipe = _pipelines(Path(tmp))
        _round(video_pipe, audio_pipe, seed=1000)  # warm-up, not recorded
        with Progress(console=console) as progress:
            task = progress.add_task("measuring", total=rounds)
            for r in range(rounds):
                samples.extend(_round(video_pipe, audio_pipe, seed=r))
                progress.advance(task)
    return samples


def report(rounds: int, rows: list[dict]) -> None:
    table = Table(title=f"media encoding ({rounds} rounds, median)")
    for col in ("what", "median s", "bytes", "encode s per media s", "encode ÷ call"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for row in rows:
        ratio = row.get("encode_over_call")
        table.add_row(
            row["what"],
            f"{row['median_s']:.4f}",
            f"{row['bytes']:,}" if row["bytes"] else "",
            f"{row['realtime_factor']:.3f}",
            f"{ratio:.3f}" if ratio is not None else "",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds (default 5).")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    torch.set_num_threads(1)
    date = stamp()
    name = f"bench_media-{date}"
    samples = measure(args.rounds)
    rows = _summary(samples)
    summary: dict[str, Any] = {
        "benchmark": "bench_media",
        "date": date,
        "commit": commit(),
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": 1},
        "video_codec": media.video_codec(),
        "rounds": args.rounds,
        "rows": rows,
        "raw": str((RAW / f"{name}.jsonl").relative_to(RAW.parent)),
    }
    summary_path, raw_path = save(name, summary, samples)
    report(args.rounds, rows)
    console.print(f"summary → {summary_path}\nraw samples → {raw_path}")


if __name__ == "__main__":
    main()
