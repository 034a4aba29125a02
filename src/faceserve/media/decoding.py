"""Image probing and decoding. Blocking: call from a worker thread, never on the event loop."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from ..errors import ImageTooLarge, NotAnImage

# HEIC/HEIF, current phones' default, for Pillow: the probe, the decode and renditions. It applies the file's
# rotation and mirroring itself and leaves an EXIF orientation of 1, so nothing is turned twice.
register_heif_opener()

# Formats Pillow reads (header probe, renditions); name -> (Content-Type, file extension). OpenCV decodes the
# first four for detection, Pillow the last two (decode_bgr).
ACCEPTED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "BMP": ("image/bmp", "bmp"),
    "HEIF": ("image/heic", "heic"),
    "AVIF": ("image/avif", "avif"),
}
_NOT_AN_IMAGE = "file is not a JPEG, PNG, WebP, BMP, HEIC/HEIF or AVIF image"

_EXIF_ORIENTATION = 0x0112
_ORIENTATIONS_THAT_SWAP_AXES = {5, 6, 7, 8}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    content_type: str
    extension: str
    # as displayed, after the EXIF orientation is applied (which is how OpenCV decodes it)
    width: int
    height: int


def probe(source: Path | bytes, max_pixels: int) -> ImageInfo:
    """Read only the header: format and size. Rejects non-images and decompression bombs before decoding."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp, formats=list(ACCEPTED_FORMATS)) as im:
                image_format = im.format or ""
                width, height = im.size
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if image_format != "BMP" else 1
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has more than {max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise NotAnImage(_NOT_AN_IMAGE) from exc
    if image_format not in ACCEPTED_FORMATS or width <= 0 or height <= 0:
        raise NotAnImage(_NOT_AN_IMAGE)
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height}, more than {max_pixels} pixels")
    if orientation in _ORIENTATIONS_THAT_SWAP_AXES:
        width, height = height, width
    content_type, extension = ACCEPTED_FORMATS[image_format]
    return ImageInfo(image_format, content_type, extension, width, height)


def decode_bgr(data: bytes) -> np.ndarray:
    """Full decode to an HxWx3 BGR array, EXIF orientation applied. Probe first: this trusts the size."""
    if data[4:8] == b"ftyp":  # an ISO media file: HEIC/HEIF or AVIF, which this OpenCV does not read
        return _decode_with_pillow(data)
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise NotAnImage("image data is truncated or corrupt")
    return pixels


def _decode_with_pillow(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["HEIF", "AVIF"]) as im:
                rgb = ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise NotAnImage("image data is truncated or corrupt") from exc
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
