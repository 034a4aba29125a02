"""Resized copies of stored photos and padded crops of their faces: what to make, where it is kept, how.

A derivative is named by a key (size, fit, quality; face and padding for a crop) and a format, rendered on
first use and kept at {storage}/face_sessions/{session_id}/derived/{image_id}-{key}.{ext}, beside the
session's photos so that deleting the session removes it too. A key names exactly one output, so a file
once written never changes and needs no invalidation; an image's files go when the image does.

render, render_face_crop and ensure_cached block (decode, resize, encode, write): run them off the event
loop. JPEG sources are decoded with DCT scaling (Image.draft), as measured in benchmarks/derivatives.py:
a 320-px copy of a 12 MP photo takes 20 ms instead of 140 ms, with no visible difference.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import BadRequest, FaceNotFound
from ..inputs import ascii_number
from ..layout import SessionLayout
from .decoding import ACCEPTED_FORMATS, with_bounded_metadata
from .files import is_disk_full

FITS = ("inside", "cover")
# format name -> (Content-Type, file extension)
FORMATS: dict[str, tuple[str, str]] = {"jpeg": ("image/jpeg", "jpg"), "webp": ("image/webp", "webp")}
# what an image's and a face crop's URL may add to select a rendition
IMAGE_QUERY_NAMES = ("w", "h", "fit")
CROP_QUERY_NAMES = ("w",)
# JPEG DCT scaling (benchmarks/derivatives.py): 1/2 is near-lossless at any ratio (45 dB and more against
# a full decode), 1/4 and 1/8 are box filters that soften visibly unless the result is resized again by 2x
_DRAFT_MARGIN = 2
_EXIF_ORIENTATION = 0x0112
_WIDE_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ORIENTATIONS_THAT_SWAP_AXES = {5, 6, 7, 8}

Box = tuple[float, float, float, float]
Size = tuple[int, int]
# full displayed size of the source -> (output size, the box of the source that the output shows)
Plan = Callable[[Size], tuple[Size, Box]]


@dataclass(frozen=True)
class Spec:
    """A resized copy: width and/or height, fit, format and JPEG/WebP quality."""

    width: int | None
    height: int | None
    fit: str
    format: str
    quality: int

    @property
    def key(self) -> str:
        parts = [f"w{self.width}" if self.width else "", f"h{self.height}" if self.height else ""]
        parts += ["cover" if self.fit == "cover" else "", f"q{self.quality}"]
        return "-".join(p for p in parts if p)

    @property
    def content_type(self) -> str:
        return FORMATS[self.format][0]

    @property
    def extension(self) -> str:
        return FORMATS[self.format][1]


@dataclass(frozen=True)
class FaceCrop:
    """A face's detector box padded by `padding` of its size on each side, optionally scaled to `width`."""

    face_id: int
    box: tuple[float, float, float, float]
    padding: float
    width: int | None
    format: str
    quality: int

    @property
    def key(self) -> str:
        size = f"-w{self.width}" if self.width else ""
        return f"face{self.face_id}-p{self.padding:g}{size}-q{self.quality}"

    @property
    def content_type(self) -> str:
        return FORMATS[self.format][0]

    @property
    def extension(self) -> str:
        return FORMATS[self.format][1]


# ---------------------------------------------------------------- parsing a request


def is_derivative_query(query: Mapping[str, str]) -> bool:
    """Whether a request for an image asks for a resized copy rather than the original file."""
    return any(query.get(name) for name in IMAGE_QUERY_NAMES)


def negotiate_format(accept: str | None) -> str:
    """WebP when Accept names image/webp (not with q=0), JPEG otherwise: every client decodes JPEG."""
    for item in (accept or "").split(","):
        media, *params = (part.strip().lower() for part in item.split(";"))
        if media != "image/webp":
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    return "webp" if ascii_number(value.strip(), "q", 0.0, 1.0) > 0 else "jpeg"
                except BadRequest:
                    return "jpeg"  # a malformed weight: JPEG, which every client decodes
        return "webp"
    return "jpeg"


def _size(query: Mapping[str, str], name: str, allowed: Iterable[int]) -> int | None:
    raw = query.get(name)
    if not raw:
        return None
    allowed = sorted(allowed)
    # only the configured sizes, so a client cannot fill the disk with one copy per possible pixel count;
    # compared as text, so "0320" is no second name for 320 and a 5000-digit value is no int() to parse
    if raw not in {str(size) for size in allowed}:
        raise BadRequest(f"{name} must be one of {', '.join(map(str, allowed))}")
    return int(raw)


def parse_spec(query: Mapping[str, str], accept: str | None, allowed_sizes: Iterable[int], quality: int) -> Spec:
    """?w=, ?h= (from allowed_sizes, at least one) and ?fit=inside|cover; the format follows Accept."""
    width, height = _size(query, "w", allowed_sizes), _size(query, "h", allowed_sizes)
    if width is None and height is None:
        raise BadRequest("a resized image needs w or h")
    fit = query.get("fit") or "inside"
    if fit not in FITS:
        raise BadRequest("fit must be inside or cover")
    if width is None or height is None:
        fit = "inside"  # with one side given both fits are the same picture: keep one file for it
    return Spec(width, height, fit, negotiate_format(accept), quality)


def parse_face_crop(
    query: Mapping[str, str],
    accept: str | None,
    face_id: int,
    box: Sequence[float],
    padding: float,
    allowed_sizes: Iterable[int],
    quality: int,
) -> FaceCrop:
    """?w= only (from allowed_sizes): the crop keeps the padded box's aspect."""
    x1, y1, x2, y2 = (float(v) for v in box)
    width = _size(query, "w", allowed_sizes)
    return FaceCrop(face_id, (x1, y1, x2, y2), padding, width, negotiate_format(accept), quality)


# ---------------------------------------------------------------- where derivatives live, and their tags


def cache_path(layout: SessionLayout, session_id: int, image_id: int, key: str, extension: str) -> Path:
    return layout.derived_dir(session_id) / f"{int(image_id)}-{key}.{extension}"


def etag(source_sha256_hex: str, key: str, extension: str) -> str:
    """Strong validator: the source's content hash and everything that decides the derivative's bytes."""
    digest = hashlib.sha256(f"{source_sha256_hex}:{key}.{extension}".encode()).hexdigest()
    return f'"{digest[:32]}"'


def remove_derivatives(layout: SessionLayout, session_id: int, image_id: int) -> int:
    """Delete an image's derivatives and face crops, and temporary files of renders of it; returns how many."""
    folder = layout.derived_dir(session_id)
    removed = 0
    # "12-*" never matches image 123's files: the id is always followed by "-"
    for pattern in (f"{int(image_id)}-*", f".{int(image_id)}-*"):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_face_crops(layout: SessionLayout, session_id: int, crops: Iterable[tuple[int, int]]) -> None:
    """Delete the crops of these (image id, face id) faces, and temporary files of renders of them."""
    folder = layout.derived_dir(session_id)
    for image_id, face_id in crops:
        # "face12-" never matches face 123's files: the id is always followed by "-"
        for pattern in (f"{int(image_id)}-face{int(face_id)}-*", f".{int(image_id)}-face{int(face_id)}-*"):
            for path in folder.glob(pattern):
                path.unlink(missing_ok=True)


def ensure_cached(path: Path, make: Callable[[], bytes]) -> bytes | None:
    """Render once: an existing file is kept as it is. Concurrent renders of one key each write a whole
    file under a temporary name and rename it into place, so readers only ever see a complete file.
    None when the file is in place; the rendered bytes themselves when a full disk could not keep them
    (a cache that cannot be written is no reason to refuse the picture)."""
    if path.exists():
        return None
    data = make()
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            # the file is served for a year under a tag that promises these bytes: a crash must not leave
            # a short one under the final name
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if is_disk_full(exc):
            return data
        raise
    return None


# ---------------------------------------------------------------- geometry


def resize_plan(spec: Spec) -> Plan:
    """inside: keep the aspect, fit within w x h, never upscale. cover: exactly w x h, centre crop."""

    def plan(source: Size) -> tuple[Size, Box]:
        width, height = source
        if spec.fit == "cover" and spec.width and spec.height:
            scale = max(spec.width / width, spec.height / height)
            shown_w, shown_h = spec.width / scale, spec.height / scale
            left, top = (width - shown_w) / 2, (height - shown_h) / 2
            return (spec.width, spec.height), (left, top, left + shown_w, top + shown_h)
        scale = min(
            spec.width / width if spec.width else math.inf, spec.height / height if spec.height else math.inf, 1.0
        )
        return (max(1, round(width * scale)), max(1, round(height * scale))), (0.0, 0.0, float(width), float(height))

    return plan


def padded_box(box: Sequence[float], padding: float, source: Size) -> Box:
    """The box grown by padding x its width (height) on each side, clipped to the image."""
    x1, y1, x2, y2 = box
    pad_x, pad_y = padding * (x2 - x1), padding * (y2 - y1)
    left, top = max(0.0, x1 - pad_x), max(0.0, y1 - pad_y)
    right, bottom = min(float(source[0]), x2 + pad_x), min(float(source[1]), y2 + pad_y)
    if right - left < 1 or bottom - top < 1:
        raise FaceNotFound("the face's box lies outside its image")
    return left, top, right, bottom


def crop_plan(crop: FaceCrop) -> Plan:
    def plan(source: Size) -> tuple[Size, Box]:
        box = padded_box(crop.box, crop.padding, source)
        shown_w, shown_h = box[2] - box[0], box[3] - box[1]
        width = min(crop.width, round(shown_w)) if crop.width else round(shown_w)
        width = max(1, width)
        return (width, max(1, round(shown_h * width / shown_w))), box

    return plan


# ---------------------------------------------------------------- rendering


def render(source: Path | bytes, spec: Spec) -> bytes:
    """source: the original's path, or its bytes (kept in Postgres)."""
    return _render(source, resize_plan(spec), spec.format, spec.quality)


def render_face_crop(source: Path | bytes, crop: FaceCrop) -> bytes:
    """The box is in the coordinates of the image as displayed (EXIF orientation applied), as detected."""
    return _render(source, crop_plan(crop), crop.format, crop.quality)


def _render(source: Path | bytes, plan: Plan, image_format: str, quality: int) -> bytes:
    with warnings.catch_warnings():
        # the size was checked against max_image_pixels when the file was uploaded
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # files stored before uploads were checked may carry thousands of segments: seconds per open
        source = with_bounded_metadata(source)
        opened = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(opened, formats=list(ACCEPTED_FORMATS)) as im:
            displayed = _displayed_size(im)
            size, box = plan(displayed)
            _draft(im, size, box)
            ImageOps.exif_transpose(im, in_place=True)
            # DCT scaling rounds each side up, so scale x and y separately
            sx, sy = im.width / displayed[0], im.height / displayed[1]
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            # a profile describes the source's colour space: only an RGB one fits the RGB output
            icc = im.info.get("icc_profile") if im.mode in ("RGB", "RGBA") else None
            pixels = _output_mode(im, image_format).resize(size, Image.Resampling.LANCZOS, box=box)
    return _encode(pixels, image_format, quality, icc)


def _displayed_size(im: Image.Image) -> Size:
    width, height = im.size
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    return (height, width) if orientation in _ORIENTATIONS_THAT_SWAP_AXES else (width, height)


def draft_factor(scale: float) -> int:
    """The JPEG DCT reduction (1, 2, 4 or 8) to decode at for an output `scale` times the source's size."""
    return next((f for f in (8, 4) if f * scale * _DRAFT_MARGIN <= 1), 2 if 2 * scale <= 1 else 1)


def _draft(im: Image.Image, size: Size, box: Box) -> None:
    """Have libjpeg decode at a reduced scale (other formats ignore it). The scale is the same on both axes,
    so it does not matter which way the file lies."""
    # the smaller ratio: the other one is only larger by the output's rounding to whole pixels, and
    # taking it would lose the reduction at exact fits such as 1280x886 -> 320x222
    factor = draft_factor(min(size[0] / (box[2] - box[0]), size[1] / (box[3] - box[1])))
    if factor > 1:
        # draft() picks the largest scale whose result is at least the size asked for, which is `factor`
        im.draft(None, (max(1, im.width // factor), max(1, im.height // factor)))


def _to_8_bit(im: Image.Image) -> Image.Image:
    """16-bit greyscale (Pillow's I;16 and I modes, as PNGs open) scaled to 8 bits: convert() clips every
    value above 255 instead, and such a photo rendered white."""
    values = np.asarray(im).astype(np.uint32)
    return Image.fromarray((np.minimum(values, 65535) >> 8).astype(np.uint8), "L")


def _output_mode(im: Image.Image, image_format: str) -> Image.Image:
    if im.mode in _WIDE_GREY:
        im = _to_8_bit(im)
    transparent = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if not transparent:
        return im if im.mode == "RGB" else im.convert("RGB")
    rgba = im.convert("RGBA")
    if image_format == "webp":
        return rgba
    # JPEG has no alpha: show transparent parts on white, as a browser page would
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _encode(pixels: Image.Image, image_format: str, quality: int, icc: bytes | None) -> bytes:
    out = io.BytesIO()
    options: dict[str, object] = {"quality": quality}
    if icc:
        options["icc_profile"] = icc
    if image_format == "webp":
        pixels.save(out, "WEBP", method=4, **options)
    else:
        # optimize: a second Huffman pass, 0.3 ms for 3% fewer bytes on a file encoded once and served often
        pixels.save(out, "JPEG", optimize=True, **options)
    return out.getvalue()
