"""Input images of image-to-image and inpainting requests, and uploads (``POST /v1/files``).

Sits in the gateway, before a job is resolved: ``load_input`` turns what a request sent in
``image`` / ``mask_image`` (an upload id, a ``/v1/files/...`` URL of the caller's own files, or
base64) into checked image bytes, ``fetched_input`` the bytes of an input URL (fetched by
``fetch.py``; stored by their content hash); the gateway stores them under the caller's tenant
and the job carries only the storage key, which the family worker reads. What is stored is
written anew by Pillow (``clean_image``): pixels only, no text, EXIF, XMP or ICC chunks, so a
small image with a large metadata chunk is stored small. Errors name the field and the rule.
No Ray imports.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from genmedia.deployments.store.storage import INPUTS, safe_key

UPLOAD_ID = re.compile(r"^upl_[0-9a-f]{32}$")
UPLOAD_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
STORED_TYPES = {"png": "image/png", "jpg": "image/jpeg"}  # what clean_image writes
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
SIGNATURE_CHARS = 24  # base64 of a file's first 18 bytes: every signature Pillow checks
_DATA_URL = re.compile(r"^data:(?P<type>[\w/+.-]+)?(;[\w=.-]+)*;base64,", re.IGNORECASE)


class InputError(ValueError):
    """A request input that is not acceptable: ``field`` names it, ``limit`` gives the rule."""

    def __init__(self, field: str, message: str, limit: object = None, status: int = 422):
        self.field, self.limit, self.status = field, limit, status
        super().__init__(message)


@dataclass(frozen=True)
class InputImage:
    """A checked input image: its bytes as sent, and its size."""

    data: bytes
    width: int
    height: int
    mode: str


def upload_key(tenant: str, upload_id: str, suffix: str) -> str:
    return f"{tenant}/uploads/{upload_id}.{suffix}"


def new_upload_id() -> str:
    return f"upl_{uuid.uuid4().hex}"


def _decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """The image Pillow reads from ``data``, fully decoded, within ``max_pixels`` (checked
    before decoding); the caller closes it."""
    if not data:
        raise InputError(field, "is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InputError(field, "is not an image Pillow can read (png, jpeg, webp, ...)") from None
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise InputError(
                field,
                f"{width}x{height} is over the pixel limit of {max_pixels} pixels",
                max_pixels,
            )
        img.load()  # decode fully: truncated files fail here, not on the worker
    except InputError:
        img.close()
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        img.close()
        raise InputError(field, "is not an image Pillow can read (png, jpeg, webp, ...)") from None
    return img


def check_image(data: bytes, field: str, max_pixels: int) -> InputImage:
    """Bytes that Pillow reads as an image within ``max_pixels`` (checked before decoding)."""
    with _decode(data, field, max_pixels) as img:
        return InputImage(data, img.width, img.height, img.mode)


def clean_image(data: bytes, field: str, max_pixels: int) -> tuple[InputImage, str]:
    """``check_image``, then the image written anew without metadata: a JPEG as JPEG with its
    own quantization tables and subsampling (no second loss beyond rounding), anything else as
    PNG (lossless; the first frame of an animation). Returns the new image and its suffix
    (``png`` or ``jpg``)."""
    with _decode(data, field, max_pixels) as img:
        buf = io.BytesIO()
        if img.format == "JPEG" and img.mode in ("L", "RGB", "CMYK"):
            frame = img.copy()
            frame.info = {}
            opts: dict = {"quality": 95}
            tables = getattr(img, "quantization", None)
            if tables:
                opts = {"qtables": tables}
                sampling = JpegImagePlugin.get_sampling(img)
                if sampling != -1:
                    opts["subsampling"] = sampling
            frame.save(buf, "JPEG", **opts)
            suffix = "jpg"
        else:
            transparency = img.info.get("transparency")
            frame = img.copy()
            frame.info = {}
            if frame.mode not in _PNG_MODES:
                has_alpha = "A" in frame.getbands() or transparency is not None
                frame = frame.convert("RGBA" if has_alpha else "RGB")
                transparency = None
            opts = {} if transparency is None else {"transparency": transparency}
            frame.save(buf, "PNG", **opts)
            suffix = "png"
        out = buf.getvalue()
        return InputImage(out, img.width, img.height, frame.mode), suffix


def _signed_image(head: bytes) -> bool:
    """Whether a Pillow format recognizes ``head`` (a file's first bytes) by its signature."""
    Image.init()
    return any(
        accept is not None and accept(head) for _, accept in (Image.OPEN[i] for i in Image.ID)
    )


def decode_base64(value: str, field: str) -> bytes:
    """Inline base64 (or a ``data:`` URL) as bytes. Its first bytes are checked against the
    image signatures Pillow knows before the whole payload is decoded, so megabytes of
    anything else cost microseconds (formats without a signature, e.g. TGA, are refused)."""
    m = _DATA_URL.match(value)
    start = m.end() if m else 0
    try:
        head = base64.b64decode(value[start : start + SIGNATURE_CHARS], validate=True)
    except (binascii.Error, ValueError):
        head = b""  # the whole payload's decode below names the error
    if head and not _signed_image(head):
        raise InputError(field, "is not an image Pillow can read (png, jpeg, webp, ...)")
    try:
        return base64.b64decode(value[start:] if start else value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            field,
            "must be an uploaded file id (upl_...), a /v1/files/... URL of this service, an "
            "https:// URL, or base64 image data",
        ) from None


def load_input(
    value: str,
    field: str,
    *,
    tenant: str,
    read: Callable[[str], bytes | None],
    max_pixels: int,
    clean: bool = False,
) -> tuple[InputImage, str | None]:
    """Resolve and check one input. Returns the image and, when it is already stored (an upload
    or one of the caller's files), its storage key; a foreign or missing file answers as
    missing (the caller cannot tell another tenant's files from none). With ``clean``, inline
    data comes back written anew (``clean_image``), ready to store."""
    value = value.strip()
    key: str | None = None
    if UPLOAD_ID.match(value):
        for suffix in UPLOAD_TYPES.values():  # the upload's key has its type's suffix
            data = read(upload_key(tenant, value, suffix))
            if data is not None:
                return check_image(data, field, max_pixels), upload_key(tenant, value, suffix)
        raise InputError(field, f"no uploaded file {value!r}", status=404)
    if "/v1/files/" in value:
        path = value.split("/v1/files/", 1)[1].split("?", 1)[0]
        try:
            safe_key(path)
        except ValueError:
            raise InputError(
                field, "is not a valid file path (no '..', '\\', NUL or empty parts)"
            ) from None
        if path.split("/", 1)[0] != tenant:
            raise InputError(field, f"no file {path!r}", status=404)
        key = path
    if key is not None:
        data = read(key)
        if data is None:
            raise InputError(field, f"no file {value!r}", status=404)
        return check_image(data, field, max_pixels), key
    data = decode_base64(value, field)
    if clean:
        return clean_image(data, field, max_pixels)[0], None
    return check_image(data, field, max_pixels), None


def fetched_key(tenant: str, data: bytes, suffix: str) -> str:
    """Where a fetched input is stored (written anew): by the hash of its bytes."""
    return f"{tenant}/{INPUTS}/url/{hashlib.sha256(data).hexdigest()}.{suffix}"


def fetched_input(
    data: bytes, field: str, *, tenant: str, max_pixels: int
) -> tuple[InputImage, str]:
    """The bytes of an input URL checked and written anew (``clean_image``), and the key they
    are stored at: the same image fetched again has the same key (stored once)."""
    img, suffix = clean_image(data, field, max_pixels)
    return img, fetched_key(tenant, img.data, suffix)


def check_mask(mask: InputImage, image: InputImage) -> None:
    if (mask.width, mask.height) != (image.width, image.height):
        raise InputError(
            "mask_image",
            f"is {mask.width}x{mask.height}; it must be the image's size "
            f"{image.width}x{image.height}",
            [image.width, image.height],
        )
