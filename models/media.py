"""Output encoders: images (PNG, JPEG, WebP), video (MP4, H.264) and audio (WAV, FLAC, MP3).

Where this sits in a request's way: the family worker's pipeline call returns arrays (uint8
images ``[H, W, 3]``, uint8 video frames ``[F, H, W, 3]``, float32 waveforms
``[channels, samples]``); before the result is stored, one of these pure functions turns each
into the bytes of the format the request chose (``check_format`` validates that choice against
the task at the gateway). No Ray, no torch.

Libraries: Pillow for images, PyAV (FFmpeg's libx264, else its own MPEG-4 part 2 encoder) for
video, soundfile (libsndfile) for audio. No timestamps are written: same input, same bytes for
images and audio. Video is the exception: x264 reads some bytes its input buffers leave
uninitialised, so an encode in a few hundred differs in a few macroblocks (same frames in, the
same picture within a few levels out; with glibc's ``MALLOC_PERTURB_`` set it is bit-exact).
"""

from __future__ import annotations

import io
import math
import tempfile
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image

FORMATS_BY_TASK: dict[str, tuple[str, ...]] = {
    "text-to-image": ("png", "jpeg", "webp"),
    "text-to-video": ("mp4",),
    "text-to-audio": ("wav", "flac", "mp3"),
}
DEFAULT_FORMAT_BY_TASK: dict[str, str] = {task: fmts[0] for task, fmts in FORMATS_BY_TASK.items()}
CONTENT_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
}
EXTENSIONS: dict[str, str] = {fmt: ("jpg" if fmt == "jpeg" else fmt) for fmt in CONTENT_TYPES}

IMAGE_QUALITY_RANGE = (1, 100)
DEFAULT_IMAGE_QUALITY = 90
FPS_RANGE = (1, 120)
VIDEO_CRF = 20  # x264 constant rate factor: visually near-lossless, small files
VIDEO_PRESET = "fast"
# Sample rates LAME (MP3) can encode.
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_AUDIO_CHANNELS = 8

_AUDIO_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


class MediaError(ValueError):
    """Bad input to an encoder, or a format the task does not allow."""


def check_format(task: str, fmt: str) -> str:
    """``fmt`` (lower-cased) when the task allows it, else a MediaError naming the allowed ones."""
    if task not in FORMATS_BY_TASK:
        raise MediaError(f"unknown task {task!r}; known: {', '.join(FORMATS_BY_TASK)}")
    allowed = FORMATS_BY_TASK[task]
    name = fmt.lower() if isinstance(fmt, str) else fmt
    if name not in allowed:
        raise MediaError(
            f"output_format {fmt!r} is not available for {task}; allowed: {', '.join(allowed)}"
        )
    return name


def content_type(fmt: str) -> str:
    """The MIME type of an output format."""
    try:
        return CONTENT_TYPES[fmt]
    except KeyError:
        raise MediaError(
            f"unknown output format {fmt!r}; known: {', '.join(CONTENT_TYPES)}"
        ) from None


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _check_rgb_uint8(array: np.ndarray, what: str, ndim: int) -> np.ndarray:
    array = np.asarray(array)
    shape = "[F, H, W, 3]" if ndim == 4 else "[H, W, 3]"
    if array.dtype != np.uint8:
        raise MediaError(f"{what} must be uint8 {shape}, got dtype {array.dtype}")
    if array.ndim != ndim or array.shape[-1] != 3 or 0 in array.shape:
        raise MediaError(f"{what} must be uint8 {shape} (RGB), got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array)


def _check_quality(quality: int | None) -> int:
    if quality is None:
        return DEFAULT_IMAGE_QUALITY
    low, high = IMAGE_QUALITY_RANGE
    if isinstance(quality, bool) or not isinstance(quality, int) or not low <= quality <= high:
        raise MediaError(f"quality must be an integer from {low} to {high}, got {quality!r}")
    return quality


def encode_image(pixels: np.ndarray, fmt: str = "png", quality: int | None = None) -> bytes:
    """uint8 ``[H, W, 3]`` to PNG, JPEG or WebP bytes.

    ``quality`` (1-100, default ``DEFAULT_IMAGE_QUALITY``) sets JPEG and WebP compression; PNG
    is lossless and ignores it (but a value out of range is still refused).
    """
    fmt = check_format("text-to-image", fmt)
    q = _check_quality(quality)
    image = Image.fromarray(_check_rgb_uint8(pixels, "image", 3), mode="RGB")
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", optimize=False, compress_level=6)
    elif fmt == "jpeg":
        image.save(buf, format="JPEG", quality=q, optimize=False, progressive=False)
    else:
        image.save(buf, format="WEBP", quality=q, method=4)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def video_codec() -> str:
    """The MP4 video codec this PyAV build has: ``libx264`` (H.264) when present, else
    FFmpeg's native ``mpeg4``."""
    import av

    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # av raises its own UnknownCodecError, a subclass of ValueError
        return "mpeg4"
    return "libx264"


def _check_fps(fps: int | float | Fraction) -> Fraction:
    low, high = FPS_RANGE
    if (
        isinstance(fps, bool)
        or not isinstance(fps, int | float | Fraction)
        or (isinstance(fps, float) and not math.isfinite(fps))
    ):
        raise MediaError(f"fps must be a number from {low} to {high}, got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)
    if not low <= rate <= high:
        raise MediaError(f"fps must be from {low} to {high}, got {fps!r}")
    return rate


def even_size(width: int, height: int) -> tuple[int, int]:
    """The size ``encode_video`` writes: yuv420p needs even sides, odd ones grow by one."""
    return width + width % 2, height + height % 2


def encode_video(frames: np.ndarray, fps: int | float | Fraction, fmt: str = "mp4") -> bytes:
    """uint8 frames ``[F, H, W, 3]`` to an MP4 (H.264 yuv420p, ``+faststart``) at ``fps``.

    yuv420p subsamples colour 2x2, so an odd width or height is padded by repeating the last
    column or row (``even_size``). Same frames and fps, the same picture (bytes: see the module
    docstring).
    """
    import av

    fmt = check_format("text-to-video", fmt)
    frames = _check_rgb_uint8(frames, "frames", 4)
    rate = _check_fps(fps)
    _, height, width, _ = frames.shape
    out_w, out_h = even_size(width, height)
    if (out_w, out_h) != (width, height):
        frames = np.pad(
            frames, ((0, 0), (0, out_h - height), (0, out_w - width), (0, 0)), mode="edge"
        )
    codec = video_codec()
    # +faststart moves the index to the front (playback starts before the download ends); the
    # muxer does it by reopening its output by name, so it writes a real file, not a buffer.
    with tempfile.TemporaryDirectory(prefix="genmedia-video-") as tmp:
        path = Path(tmp) / f"out.{fmt}"
        with av.open(
            str(path), mode="w", options={"movflags": "+faststart", "fflags": "+bitexact"}
        ) as container:
            # One encoder thread: with frame threads x264's bytes vary between runs more often.
            # "fast" keeps a one-thread 480p clip at a few seconds.
            options = {"threads": "1"}
            if codec == "libx264":
                options |= {"crf": str(VIDEO_CRF), "preset": VIDEO_PRESET}
            # a video codec gives a video stream
            stream = cast(av.VideoStream, container.add_stream(codec, rate=rate, options=options))
            stream.width, stream.height, stream.pix_fmt = out_w, out_h, "yuv420p"
            if codec != "libx264":
                stream.bit_rate = max(200_000, out_w * out_h * 4)
            for pixels in frames:
                # Converted here, one frame at a time: the encoder's own converter (a scaler
                # context kept across frames) made some runs' bytes differ.
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
                    format="yuv420p"
                )
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush the encoder
        return path.read_bytes()


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------


def encode_audio(wave: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """float ``[channels, samples]`` in [-1, 1] (clipped) to 16-bit WAV, 16-bit FLAC or MP3.

    A 1-D array is one channel. MP3 takes only LAME's sample rates (``MP3_SAMPLE_RATES``).
    """
    import soundfile as sf

    fmt = check_format("text-to-audio", fmt)
    wave = np.asarray(wave)
    if wave.ndim == 1:
        wave = wave[None, :]
    if not np.issubdtype(wave.dtype, np.floating):
        raise MediaError(f"wave must be float [channels, samples], got dtype {wave.dtype}")
    if wave.ndim != 2 or not 1 <= wave.shape[0] <= MAX_AUDIO_CHANNELS or wave.shape[1] == 0:
        raise MediaError(
            f"wave must be float [channels, samples] with 1 to {MAX_AUDIO_CHANNELS} channels and "
            f"at least one sample, got shape {tuple(wave.shape)}"
        )
    if not np.isfinite(wave).all():
        raise MediaError("wave holds NaN or infinite samples")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise MediaError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if fmt == "mp3" and sample_rate not in MP3_SAMPLE_RATES:
        raise MediaError(
            f"mp3 cannot hold {sample_rate} Hz audio; MP3 sample rates: "
            f"{', '.join(map(str, MP3_SAMPLE_RATES))}"
        )
    container, subtype = _AUDIO_FORMATS[fmt]
    data = np.ascontiguousarray(np.clip(wave, -1.0, 1.0).astype(np.float32).T)
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=container, subtype=subtype)
    return buf.getvalue()
