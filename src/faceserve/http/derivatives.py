"""Resized copies (GET /api/face/image/{id}?w=&h=&fit=) and face crops (GET /api/face/face/{face_id}).

They keep the originals' contract (strong ETag, a year immutable, 304/412, byte ranges: serving.respond_file
answers for both) with two differences: the format follows Accept, so every answer says Vary: Accept, and
the file is rendered on its first request and kept under the session's derived/ folder.

Renders run on the default executor, not the inference threads: a thumbnail must not wait behind a batch
upload's face detection, which takes far longer per image.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .. import db, derivatives
from ..errors import FaceNotFound, ImageNotFound
from ..image_store import ImageStore, StoredImage
from . import serving
from .common import path_id
from .keys import SERVICES

# Renders under way in this process, by file: concurrent first requests for one derivative (every open
# gallery asks for a new photo's thumbnail at once) wait for one render instead of each making their own.
_rendering: dict[Path, asyncio.Future[Path]] = {}


def wants_derivative(request: web.Request) -> bool:
    return derivatives.is_derivative_query(request.query)


async def serve_image_derivative(request: web.Request, image_id: int, cache_control: str | None) -> web.StreamResponse:
    """serving.serve_image's branch for ?w= / ?h=, after its access check (cache_control is its answer).
    The original's facts come from the same per-process cache as the original's own requests."""
    original = await serving.served_file(request, image_id)
    settings = request.app[SERVICES].settings
    spec = derivatives.parse_spec(
        request.query, request.headers.get("Accept"), settings.derivative_sizes, settings.derivative_quality
    )
    return await _serve(request, original, spec, functools.partial(derivatives.render, spec=spec), cache_control)


async def serve_face_crop(request: web.Request) -> web.StreamResponse:
    """GET and HEAD /api/face/face/{face_id}[?w=]: the face's padded box, from the image as displayed."""
    face_id = path_id(request, "face_id", FaceNotFound)
    # a crop shows part of a photo: the same CDN and signature rules as the photo
    cache_control = serving.check_access(request)
    services = request.app[SERVICES]
    settings = services.settings
    face = await db.get_face(services.pool, face_id)
    if face is None:
        raise FaceNotFound(f"face {face_id} does not exist")
    try:
        original = await serving.served_file(request, face.image_id)
    except ImageNotFound:
        raise FaceNotFound(f"face {face_id} does not exist") from None
    crop = derivatives.parse_face_crop(
        request.query,
        request.headers.get("Accept"),
        face.id,
        face.box,
        settings.face_crop_padding,
        settings.derivative_sizes,
        settings.derivative_quality,
    )
    return await _serve(
        request, original, crop, functools.partial(derivatives.render_face_crop, crop=crop), cache_control
    )


async def _serve(
    request: web.Request,
    original: serving.ServedFile,
    what: derivatives.Spec | derivatives.FaceCrop,
    render: Callable[[Path | bytes], bytes],
    cache_control: str | None,
) -> web.StreamResponse:
    services = request.app[SERVICES]
    image_id = original.image_id
    path = derivatives.cache_path(services.storage.root, original.session_id, image_id, what.key, what.extension)
    tag = derivatives.etag(original.sha256_hex, what.key, what.extension)
    headers = (*serving.common_headers(tag, original.last_modified).items(), ("Vary", "Accept"))
    entry = serving.ServedFile(image_id, path, what.content_type, tag, original.last_modified, headers)
    # opened on the event loop, as serving does for originals: a page-cache lookup for files in use
    fd = _open(path)
    if fd is None:
        try:
            await _render_once(
                path,
                functools.partial(
                    _render_and_check, services.stores.of(original), original, path, render, services.renders
                ),
            )
        except ImageNotFound:
            request.app[serving.SERVED_FILES].evict(image_id)
            raise
        fd = _open(path)
        if fd is None:
            request.app[serving.SERVED_FILES].evict(image_id)
            raise ImageNotFound(f"image {image_id} was deleted")
    try:
        return await serving.respond_file(request, entry, fd, cache_control)
    finally:
        os.close(fd)


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None


async def _render_once(path: Path, render_and_check: Callable[[], Awaitable[None]]) -> None:
    rendering = _rendering.get(path)
    if rendering is None:
        rendering = asyncio.ensure_future(render_and_check())
        _rendering[path] = rendering
        rendering.add_done_callback(lambda _: _rendering.pop(path, None))
    # shielded: a client that goes away must not cancel the render others are waiting for
    await asyncio.shield(rendering)


async def _render_and_check(
    store: ImageStore,
    image: StoredImage,
    path: Path,
    render: Callable[[Path | bytes], bytes],
    renders: asyncio.Semaphore | None = None,
) -> None:
    # a few renders at a time: each may decode a large original (max_concurrent_renders)
    async with renders or contextlib.nullcontext():
        source = await store.source(image)
        try:
            await asyncio.to_thread(derivatives.ensure_cached, path, functools.partial(render, source))
        except FileNotFoundError:
            raise ImageNotFound(f"the file of image {image.id} is gone") from None
    if not await store.exists(image):
        # deleted while this render ran, after its derivatives were removed: do not leave one behind
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise ImageNotFound(f"image {image.id} was deleted")
