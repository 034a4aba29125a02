"""Image bytes by id: originals (GET and HEAD /api/face/image/{id}), resized copies (the same with
?w=&h=&fit=) and face crops (GET /api/face/face/{face_id}), all answered by the serving core (serving.py).

Renditions and crops keep the originals' contract (strong ETag, a year immutable, 304/412, byte ranges: serving.respond_file
answers for both) with two differences: the format follows Accept, so every answer says Vary: Accept, and
the file is rendered on its first request and kept under the session's derived/ folder; a derivative of an
original kept in S3 is kept as an object under {prefix}/derived/ instead, and served as objects are (the
node streams it, or hands nginx a presigned URL of it).

Renders run on the default executor, not the inference threads: a thumbnail must not wait behind a batch
upload's face detection, which takes far longer per image.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

from aiohttp import web

from .. import db
from ..errors import FaceNotFound, ImageNotFound
from ..media import renditions, stores
from ..media.objects import derived_path
from ..media.stores import ImageStore, StoredImage
from . import accel, conditional, serving
from .appkeys import SERVICES
from .route_params import route_id
from .served import SERVED, ServedFile

# Renders under way in this process, by file: concurrent first requests for one derivative (every open
# gallery asks for a new photo's thumbnail at once) wait for one render instead of each making their own.
# The result is None once the file is in place, or the rendered bytes when a full disk could not keep them.
_rendering: dict[Path | str, asyncio.Future[bytes | None]] = {}


async def serve_image(request: web.Request) -> web.StreamResponse:
    image_id = route_id(request, "image_id")
    cache_control = serving.check_access(request, renditions.IMAGE_QUERY_NAMES)
    # the query is only parsed when there is one: most requests are for the original
    if request.query_string and wants_derivative(request):
        return await serve_image_derivative(request, image_id, cache_control)
    entry = await serving.served_file(request, image_id)
    try:
        return await _serve_original(request, entry, cache_control)
    except ImageNotFound:
        # the bytes may have moved to another store under this process (`faceserve storage migrate`): the
        # entry is evicted by now, and the row read again says where they are (deleted: 404 once more)
        again = await serving.served_file(request, image_id)
        if again.bytes_in == entry.bytes_in:
            raise
        return await _serve_original(request, again, cache_control)


async def _serve_original(request: web.Request, entry: ServedFile, cache_control: str | None) -> web.StreamResponse:
    image_id = entry.image_id
    status = conditional.evaluate(request.method, request.headers, entry.etag, entry.last_modified)
    if status != 200:
        if time.monotonic() < entry.present_until:
            return serving.without_body(status, entry, cache_control)
        # this request looks for the bytes; revalidations arriving meanwhile answer from memory instead of
        # all asking at once (a gone image is evicted below, and then nobody answers from memory)
        request.app[SERVED].seen_present(entry)
    if entry.bytes_in == stores.S3:
        return await _respond_object(request, entry, status, cache_control)
    if entry.bytes_in != stores.FILE:
        return await _respond_blob(request, entry, status, cache_control)
    if time.monotonic() < entry.present_until:
        # seen present a moment ago (SERVED_RECHECK_S): nginx can be handed the file without opening it here
        handed_off = _hand_off(request, entry, None, status, cache_control)
        if handed_off is not None:
            return handed_off
    try:
        fd = os.open(entry.disk_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        request.app[SERVED].evict(image_id)
        raise ImageNotFound(f"the file of image {image_id} is gone") from None
    request.app[SERVED].seen_present(entry)
    try:
        handed_off = _hand_off(request, entry, fd, status, cache_control)
        if handed_off is not None:
            return handed_off
        return await serving.respond(request, entry, serving.FileBody(fd), status, cache_control)
    finally:
        os.close(fd)


def _hand_off(
    request: web.Request, entry: ServedFile, fd: int | None, status: int, cache_control: str | None
) -> web.Response | None:
    """nginx sends the body when FACESERVE_ACCEL_REDIRECT is set and the answer allows it (accel.py)."""
    services = request.app[SERVICES]
    prefix = services.settings.accel_redirect
    if prefix is None:
        return None
    return accel.hand_off(
        request, prefix, services.storage.layout.sessions_root, entry, fd, status, cache_control
    )


async def _respond_blob(
    request: web.Request, entry: ServedFile, status: int, cache_control: str | None
) -> web.StreamResponse:
    pool = request.app[SERVICES].pool
    # no bytes to read (or a stream that must not start with a 200 for nothing): ask whether they exist
    must_ask = status != 200 or request.method == "HEAD" or entry.byte_size > serving.INLINE_BODY
    if must_ask and await db.blob_size(pool, entry.image_id) is None:
        _gone(request, entry)
    # bytes in Postgres are written once with their row, so the row's size is theirs; a read that finds no
    # row means the image was deleted
    body = serving.BlobBody(pool, entry.image_id, entry.byte_size, on_gone=lambda: _gone(request, entry))
    response = await serving.respond(request, entry, body, status, cache_control)
    request.app[SERVED].seen_present(entry)
    return response


async def _respond_object(
    request: web.Request, entry: ServedFile, status: int, cache_control: str | None, derived: bool = False
) -> web.StreamResponse:
    """An object's answer; derived: a derivative just seen present (HEAD), which is never redirected."""
    services = request.app[SERVICES]
    objects = services.stores.objects
    if objects is None:
        raise RuntimeError(f"image {entry.image_id} is kept in S3, and no FACESERVE_S3_BUCKET is set here")
    settings = services.settings
    if settings.s3_accel_redirect is not None and accel.may_hand_off(request, status, entry.byte_size):
        # nginx fetches the body from the store (Range and all); the answer's facts are the node's
        presigned = await objects.presigned_get(
            entry.file_path, settings.s3_accel_url_ttl_s, cache_control or serving.CACHE_FOREVER
        )
        return accel.object_hand_off(settings.s3_accel_redirect, entry, presigned, cache_control)
    ttl_s = settings.s3_redirect_ttl_s
    if ttl_s and status == 200 and request.method == "GET" and not derived:
        # the store sends the body (ranges too: the client asks it again); cached no longer than the URL lives
        location = await objects.presigned_get(entry.file_path, ttl_s, serving.CACHE_FOREVER)
        return web.Response(
            status=308, headers={"Location": location, "Cache-Control": f"public, max-age={ttl_s // 2}"}
        )
    # as for Postgres: a HEAD asks whether the object is there before an answer without its bytes
    must_ask = status != 200 or request.method == "HEAD" or entry.byte_size > serving.INLINE_BODY
    if must_ask and not derived and await objects.size(entry.file_path) is None:
        _gone(request, entry)
    # objects are written once with their row, so the row's size is theirs
    body = serving.ObjectBody(objects, entry.file_path, entry.byte_size, on_gone=lambda: _gone(request, entry))
    response = await serving.respond(request, entry, body, status, cache_control)
    request.app[SERVED].seen_present(entry)
    return response


def _gone(request: web.Request, entry: ServedFile) -> NoReturn:
    request.app[SERVED].evict(entry.image_id)
    raise ImageNotFound(f"the bytes of image {entry.image_id} are gone")


def wants_derivative(request: web.Request) -> bool:
    return renditions.is_derivative_query(request.query)


async def serve_image_derivative(request: web.Request, image_id: int, cache_control: str | None) -> web.StreamResponse:
    """serving.serve_image's branch for ?w= / ?h=, after its access check (cache_control is its answer).
    The original's facts come from the same per-process cache as the original's own requests."""
    original = await serving.served_file(request, image_id)
    settings = request.app[SERVICES].settings
    spec = renditions.parse_spec(
        request.query, request.headers.get("Accept"), settings.derivative_sizes, settings.derivative_quality
    )
    return await _serve(request, original, spec, functools.partial(renditions.render, spec=spec), cache_control)


async def serve_face_crop(request: web.Request) -> web.StreamResponse:
    """GET and HEAD /api/face/face/{face_id}[?w=]: the face's padded box, from the image as displayed."""
    face_id = route_id(request, "face_id")
    # a crop shows part of a photo: the same CDN and signature rules as the photo
    cache_control = serving.check_access(request, renditions.CROP_QUERY_NAMES)
    services = request.app[SERVICES]
    settings = services.settings
    face = await db.get_face(services.pool, face_id)
    if face is None:
        raise FaceNotFound(f"face {face_id} does not exist")
    try:
        original = await serving.served_file(request, face.image_id)
    except ImageNotFound:
        raise FaceNotFound(f"face {face_id} does not exist") from None
    crop = renditions.parse_face_crop(
        request.query,
        request.headers.get("Accept"),
        face.id,
        face.box,
        settings.face_crop_padding,
        settings.derivative_sizes,
        settings.derivative_quality,
    )
    return await _serve(
        request, original, crop, functools.partial(renditions.render_face_crop, crop=crop), cache_control
    )


async def _serve(
    request: web.Request,
    original: ServedFile,
    what: renditions.Spec | renditions.FaceCrop,
    render: Callable[[Path | bytes], bytes],
    cache_control: str | None,
) -> web.StreamResponse:
    services = request.app[SERVICES]
    image_id = original.image_id
    path = renditions.cache_path(services.storage.layout, original.session_id, image_id, what.key, what.extension)
    tag = renditions.etag(original.sha256_hex, what.key, what.extension)
    headers = serving.common_headers(tag, original.last_modified, ("Vary", "Accept"))
    entry = ServedFile(image_id, path, what.content_type, tag, original.last_modified, headers)
    if original.bytes_in == stores.S3:
        return await _serve_derived_object(request, original, entry, render, cache_control)
    # opened on the event loop, as serving does for originals: a page-cache lookup for files in use
    fd = _open(path)
    if fd is None:
        try:
            unkept = await _render_once(
                path,
                functools.partial(
                    _render_and_check, services.stores.of(original), original, path, render, services.admission.renders
                ),
            )
        except ImageNotFound:
            request.app[SERVED].evict(image_id)
            raise
        if unkept is not None:
            # the disk is full: served from memory this once, rendered again on the next request
            status = conditional.evaluate(request.method, request.headers, entry.etag, entry.last_modified)
            return await serving.respond(request, entry, serving.BytesBody(unkept), status, cache_control)
        fd = _open(path)
        if fd is None:
            request.app[SERVED].evict(image_id)
            raise ImageNotFound(f"image {image_id} was deleted")
    try:
        status = conditional.evaluate(request.method, request.headers, entry.etag, entry.last_modified)
        handed_off = _hand_off(request, entry, fd, status, cache_control)
        if handed_off is not None:
            return handed_off
        return await serving.respond_file(request, entry, fd, cache_control)
    finally:
        os.close(fd)


async def _serve_derived_object(
    request: web.Request,
    original: ServedFile,
    entry: ServedFile,
    render: Callable[[Path | bytes], bytes],
    cache_control: str | None,
) -> web.StreamResponse:
    """A derivative of an object, kept as an object: a HEAD finds it (one request to the store), then it is
    served as an original object is; missing, it is rendered from the original once per process, put, and
    this answer sent from memory. Every node of a fleet serves the copy the first one rendered."""
    services = request.app[SERVICES]
    objects = services.stores.objects
    if objects is None:
        raise RuntimeError(f"image {original.image_id} is kept in S3, and no FACESERVE_S3_BUCKET is set here")
    file_path = derived_path(original.session_id, entry.disk_path.name)
    status = conditional.evaluate(request.method, request.headers, entry.etag, entry.last_modified)
    size = await objects.size(file_path)
    if size is not None:
        kept = dataclasses.replace(entry, bytes_in=stores.S3, byte_size=size, file_path=file_path)
        return await _respond_object(request, kept, status, cache_control, derived=True)
    render_and_put = functools.partial(
        _render_and_put, services.stores.of(original), original, file_path, entry.content_type, render, services.admission.renders
    )
    try:
        data = await _render_once(file_path, render_and_put)
    except ImageNotFound:
        request.app[SERVED].evict(original.image_id)
        raise
    assert data is not None
    return await serving.respond(request, entry, serving.BytesBody(data), status, cache_control)


async def _render_and_put(
    store: ImageStore,
    image: StoredImage,
    file_path: str,
    content_type: str,
    render: Callable[[Path | bytes], bytes],
    renders: asyncio.Semaphore | None = None,
) -> bytes:
    objects = store.objects if isinstance(store, stores.S3Store) else None
    assert objects is not None
    async with renders or contextlib.nullcontext():
        source = await store.source(image)
        data = await asyncio.to_thread(render, source)
    await objects.put_bytes(file_path, data, content_type)
    if not await store.exists(image):
        # deleted while this render ran, after its derivatives were removed: do not leave one behind
        await objects.delete(file_path)
        raise ImageNotFound(f"image {image.id} was deleted")
    return data


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None


async def _render_once(path: Path | str, render_and_check: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
    rendering = _rendering.get(path)
    if rendering is None:
        rendering = asyncio.ensure_future(render_and_check())
        _rendering[path] = rendering
        rendering.add_done_callback(lambda _: _rendering.pop(path, None))
    # shielded: a client that goes away must not cancel the render others are waiting for
    return await asyncio.shield(rendering)


async def _render_and_check(
    store: ImageStore,
    image: StoredImage,
    path: Path,
    render: Callable[[Path | bytes], bytes],
    renders: asyncio.Semaphore | None = None,
) -> bytes | None:
    # a few renders at a time: each may decode a large original (max_concurrent_renders)
    async with renders or contextlib.nullcontext():
        source = await store.source(image)
        try:
            unkept = await asyncio.to_thread(renditions.ensure_cached, path, functools.partial(render, source))
        except FileNotFoundError:
            raise ImageNotFound(f"the file of image {image.id} is gone") from None
    if not await store.exists(image):
        # deleted while this render ran, after its derivatives were removed: do not leave one behind
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise ImageNotFound(f"image {image.id} was deleted")
    return unkept
