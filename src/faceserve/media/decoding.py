"""Image probing and decoding. Blocking: call from a worker thread, never on the event loop."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageTooLarge, MetadataTooLarge, NotAnImage

# Formats both Pillow (header probe) and OpenCV (decode) read; name -> (Content-Type, file extension).
ACCEPTED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "BMP": ("image/bmp", "bmp"),
}

# APPn and COM segments a JPEG may carry before its image data. Exif allows one APP1; ICC profiles and
# extended XMP (depth maps) split into a few dozen 64 KB segments at most. Pillow joins repeated Exif
# segments quadratically: 700 of them (46 MB) cost ~10 s of CPU at every open
MAX_METADATA_SEGMENTS = 128
_SOI, _SOS, _EOI = 0xD8, 0xDA, 0xD9
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn: markers without a length

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


def _metadata_segments(fp: BinaryIO, stop_after: int | None = None) -> list[tuple[int, int]]:
    """(offset, length) of each APPn and COM segment of a JPEG before its first scan, markers included;
    [] for anything that is no JPEG. Reads 4 bytes a segment: linear in their number, never quadratic.
    A malformed file ends the walk: Pillow judges it."""
    if fp.read(2) != bytes((0xFF, _SOI)):
        return []
    found: list[tuple[int, int]] = []
    while stop_after is None or len(found) <= stop_after:
        if fp.read(1) != b"\xff":
            break
        marker = fp.read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = fp.read(1)
        if not marker or marker[0] in (_SOS, _EOI):
            break
        if marker[0] in _STANDALONE:
            continue
        length_bytes = fp.read(2)
        if len(length_bytes) < 2:
            break
        length = int.from_bytes(length_bytes, "big")
        if 0xE0 <= marker[0] <= 0xEF or marker[0] == 0xFE:
            found.append((fp.tell() - 4, length + 2))
        fp.seek(length - 2, os.SEEK_CUR)
    return found


def count_metadata_segments(source: Path | bytes, stop_after: int | None = None) -> int:
    """How many APPn and COM segments a JPEG holds (0 for other formats); stops counting past stop_after."""
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as fp:
        return len(_metadata_segments(fp, stop_after))


def with_bounded_metadata(source: Path | bytes) -> Path | bytes:
    """The source as it is, or, for a JPEG stored before uploads were checked, its bytes without the
    metadata segments past MAX_METADATA_SEGMENTS (the first ones, Exif orientation and ICC, kept)."""
    if count_metadata_segments(source, MAX_METADATA_SEGMENTS) <= MAX_METADATA_SEGMENTS:
        return source
    data = source if isinstance(source, bytes) else source.read_bytes()
    dropped = _metadata_segments(io.BytesIO(data))[MAX_METADATA_SEGMENTS:]
    kept = bytearray()
    position = 0
    for offset, length in dropped:
        kept += data[position:offset]
        position = offset + length
    return bytes(kept + data[position:])


def probe(source: Path | bytes, max_pixels: int) -> ImageInfo:
    """Read only the header: format and size. Rejects non-images, decompression bombs and JPEGs with more
    metadata segments than MAX_METADATA_SEGMENTS before decoding."""
    segments = count_metadata_segments(source, MAX_METADATA_SEGMENTS)
    if segments > MAX_METADATA_SEGMENTS:
        raise MetadataTooLarge(
            f"the JPEG carries more than {MAX_METADATA_SEGMENTS} metadata (APPn, COM) segments; strip them"
        )
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
        raise NotAnImage("file is not a JPEG, PNG, WebP or BMP image") from exc
    if image_format not in ACCEPTED_FORMATS or width <= 0 or height <= 0:
        raise NotAnImage("file is not a JPEG, PNG, WebP or BMP image")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height}, more than {max_pixels} pixels")
    if orientation in _ORIENTATIONS_THAT_SWAP_AXES:
        width, height = height, width
    content_type, extension = ACCEPTED_FORMATS[image_format]
    return ImageInfo(image_format, content_type, extension, width, height)


def decode_bgr(data: bytes) -> np.ndarray:
    """Full decode to an HxWx3 BGR array, EXIF orientation applied. Probe first: this trusts the size."""
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise NotAnImage("image data is truncated or corrupt")
    return pixels
