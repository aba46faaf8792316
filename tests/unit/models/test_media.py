"""Unit tests for genmedia.models.media: every encoder's output decoded back with another
library (Pillow, PyAV, soundfile), byte-identical re-encodes, and each bad input refused with a
message naming the field and the rule."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from genmedia.models import media
from genmedia.models.media import MediaError


def _gradient(height: int, width: int, shift: int = 0) -> np.ndarray:
    """A smooth RGB image (lossy codecs keep it close), different for each ``shift``."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) // 2])
    return ((rgb.transpose(1, 2, 0) + 4 * shift) % 256).astype(np.uint8)


def _clip(frames: int, height: int, width: int) -> np.ndarray:
    return np.stack([_gradient(height, width, shift=i) for i in range(frames)])


def _tone(channels: int, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)]).astype(
        np.float32
    )


# --------------------------------------------------------------------------------------------
# Formats per task
# --------------------------------------------------------------------------------------------


def test_formats_and_content_types() -> None:
    assert media.FORMATS_BY_TASK["text-to-image"] == ("png", "jpeg", "webp")
    assert media.FORMATS_BY_TASK["text-to-video"] == ("mp4",)
    assert set(media.FORMATS_BY_TASK["text-to-audio"]) == {"wav", "flac", "mp3"}
    for task, formats in media.FORMATS_BY_TASK.items():
        assert media.DEFAULT_FORMAT_BY_TASK[task] == formats[0]
        for fmt in formats:
            assert media.check_format(task, fmt.upper()) == fmt
            assert media.content_type(fmt).split("/")[0] in ("image", "video", "audio")
    assert media.content_type("mp3") == "audio/mpeg"
    assert media.EXTENSIONS["jpeg"] == "jpg"


@pytest.mark.parametrize(
    ("task", "fmt", "message"),
    [
        (
            "text-to-image",
            "mp4",
            "output_format 'mp4' is not available for text-to-image; allowed: png, jpeg, webp",
        ),
        ("text-to-video", "gif", "allowed: mp4"),
        ("text-to-audio", "png", "allowed: wav, flac, mp3"),
        ("text-to-audio", None, "output_format None is not available"),
        ("text-to-3d", "png", "unknown task 'text-to-3d'"),
    ],
)
def test_format_not_valid_for_task(task: str, fmt, message: str) -> None:
    with pytest.raises(MediaError) as excinfo:
        media.check_format(task, fmt)
    assert message in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_unknown_content_type() -> None:
    with pytest.raises(MediaError, match="unknown output format 'tiff'"):
        media.content_type("tiff")


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
)
def test_image_round_trip(fmt: str, pil_format: str) -> None:
    pixels = _gradient(48, 80)
    data = media.encode_image(pixels, fmt, quality=95)
    assert data == media.encode_image(pixels, fmt, quality=95)
    image = Image.open(io.BytesIO(data))
    assert image.format == pil_format and image.size == (80, 48) and image.mode == "RGB"
    decoded = np.asarray(image).astype(int)
    if fmt == "png":
        np.testing.assert_array_equal(decoded, pixels)
    else:
        assert np.abs(decoded - pixels).mean() < 3.0


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_image_quality_changes_size(fmt: str) -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert len(media.encode_image(noisy, fmt, 20)) < len(media.encode_image(noisy, fmt, 95))


def test_png_ignores_quality() -> None:
    pixels = _gradient(16, 16)
    assert media.encode_image(pixels, "png", 10) == media.encode_image(pixels, "png")


@pytest.mark.parametrize("quality", [0, 101, 50.5, True, "90"])
def test_bad_image_quality(quality) -> None:
    with pytest.raises(MediaError, match="quality must be an integer from 1 to 100"):
        media.encode_image(_gradient(8, 8), "jpeg", quality)


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), "image must be uint8 [H, W, 3], got dtype float32"),
        (np.zeros((8, 8), np.uint8), "got shape (8, 8)"),
        (np.zeros((8, 8, 4), np.uint8), "got shape (8, 8, 4)"),
        (np.zeros((0, 8, 3), np.uint8), "got shape (0, 8, 3)"),
    ],
)
def test_bad_image_pixels(pixels: np.ndarray, message: str) -> None:
    with pytest.raises(MediaError) as excinfo:
        media.encode_image(pixels, "png")
    assert message in str(excinfo.value)


def test_image_format_must_be_an_image_format() -> None:
    with pytest.raises(MediaError, match="'mp4' is not available for text-to-image"):
        media.encode_image(_gradient(8, 8), "mp4")


# --------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------


def _decode_video(data: bytes) -> tuple[av.video.stream.VideoStream, list[np.ndarray]]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return stream, frames


def test_video_round_trip() -> None:
    clip = _clip(17, 64, 96)
    data = media.encode_video(clip, 16)
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first
    stream, frames = _decode_video(data)
    assert stream.codec_context.name == ("h264" if media.video_codec() == "libx264" else "mpeg4")
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert (stream.width, stream.height) == (96, 64)
    assert stream.average_rate == 16
    assert float(stream.duration * stream.time_base) == pytest.approx(17 / 16)
    assert len(frames) == 17
    error = np.abs(np.stack(frames).astype(int) - clip.astype(int)).mean()
    assert error < 4.0, error


def test_video_encodes_of_the_same_frames_decode_alike() -> None:
    """Noise is the hard case. x264 reads bytes its input buffers leave uninitialised, so an
    encode in a few hundred differs in a few macroblocks; the picture must stay the same."""
    noise = np.random.default_rng(0).integers(0, 256, (17, 64, 96, 3), dtype=np.uint8)
    first = np.stack(_decode_video(media.encode_video(noise, 16))[1]).astype(int)
    codec_error = np.abs(first - noise).mean()  # what the encoder loses on noise
    other = np.random.default_rng(1).integers(0, 256, noise.shape, dtype=np.uint8)
    assert np.abs(first - other).mean() > 1.5 * codec_error  # another picture is far away
    for _ in range(20):
        again = np.stack(_decode_video(media.encode_video(noise, 16))[1]).astype(int)
        # a few macroblocks may differ (up to ~2 % of values seen); the picture may not
        assert np.abs(again - first).mean() < 0.25 * codec_error
        assert abs(np.abs(again - noise).mean() - codec_error) < 0.1 * codec_error


def test_video_odd_size_is_padded_to_even() -> None:
    clip = _clip(5, 33, 47)
    assert media.even_size(47, 33) == (48, 34)
    stream, frames = _decode_video(media.encode_video(clip, 8))
    assert (stream.width, stream.height) == (48, 34)
    assert len(frames) == 5
    # The padding repeats the last column and row; the picture itself is where it was.
    assert np.abs(frames[0][:33, :47].astype(int) - clip[0].astype(int)).mean() < 4.0


def test_video_fractional_fps() -> None:
    stream, frames = _decode_video(media.encode_video(_clip(5, 16, 16), 24000 / 1001))
    assert stream.average_rate == Fraction(24000, 1001)
    assert len(frames) == 5


@pytest.mark.parametrize("fps", [0, -5, 121, "16", None, True, float("nan")])
def test_bad_fps(fps) -> None:
    with pytest.raises(MediaError, match="fps must be"):
        media.encode_video(_clip(2, 16, 16), fps)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((2, 16, 16, 3), np.float32), "frames must be uint8 [F, H, W, 3]"),
        (np.zeros((16, 16, 3), np.uint8), "got shape (16, 16, 3)"),
        (np.zeros((0, 16, 16, 3), np.uint8), "got shape (0, 16, 16, 3)"),
        (np.zeros((2, 16, 16, 1), np.uint8), "got shape (2, 16, 16, 1)"),
    ],
)
def test_bad_frames(frames: np.ndarray, message: str) -> None:
    with pytest.raises(MediaError) as excinfo:
        media.encode_video(frames, 16)
    assert message in str(excinfo.value)


def test_video_format_must_be_mp4() -> None:
    with pytest.raises(MediaError, match="'webm' is not available for text-to-video"):
        media.encode_video(_clip(2, 16, 16), 16, "webm")


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "sf_format"), [("wav", "WAV"), ("flac", "FLAC"), ("mp3", "MP3")])
@pytest.mark.parametrize("channels", [1, 2])
def test_audio_round_trip(fmt: str, sf_format: str, channels: int) -> None:
    rate = 16_000
    wave = _tone(channels, 1.0, rate)
    data = media.encode_audio(wave, rate, fmt)
    assert data == media.encode_audio(wave, rate, fmt)
    info = sf.info(io.BytesIO(data))
    assert info.format == sf_format
    assert (info.samplerate, info.channels) == (rate, channels)
    decoded, _ = sf.read(io.BytesIO(data), always_2d=True)
    if fmt == "mp3":  # frame-based: the decoder may pad up to one 1152-sample frame
        assert abs(decoded.shape[0] - rate) <= 1152
    else:
        assert decoded.shape == (rate, channels)
        np.testing.assert_allclose(decoded.T, wave, atol=1 / 16_000)


def test_audio_mono_vector_and_clipping() -> None:
    loud = np.array([2.0, -3.0, 0.25, 0.0], np.float32)
    decoded, rate = sf.read(io.BytesIO(media.encode_audio(loud, 8000, "wav")))
    assert rate == 8000
    np.testing.assert_allclose(decoded, [1.0, -1.0, 0.25, 0.0], atol=1 / 16_000)


@pytest.mark.parametrize(
    ("wave", "rate", "fmt", "message"),
    [
        (np.zeros((2, 8), np.int16), 16_000, "wav", "wave must be float [channels, samples]"),
        (np.zeros((1, 2, 8), np.float32), 16_000, "wav", "got shape (1, 2, 8)"),
        (np.zeros((2, 0), np.float32), 16_000, "wav", "at least one sample"),
        (np.zeros((9, 8), np.float32), 16_000, "flac", "1 to 8 channels"),
        (np.array([[0.0, np.nan]], np.float32), 16_000, "wav", "NaN or infinite"),
        (np.zeros((1, 8), np.float32), 0, "wav", "sample_rate must be a positive integer"),
        (np.zeros((1, 8), np.float32), 16_000.0, "wav", "sample_rate must be a positive"),
        (np.zeros((1, 8), np.float32), 12_345, "mp3", "mp3 cannot hold 12345 Hz audio"),
        (np.zeros((1, 8), np.float32), 16_000, "ogg", "'ogg' is not available for text-to-audio"),
    ],
)
def test_bad_audio(wave: np.ndarray, rate, fmt: str, message: str) -> None:
    with pytest.raises(MediaError) as excinfo:
        media.encode_audio(wave, rate, fmt)
    assert message in str(excinfo.value)
