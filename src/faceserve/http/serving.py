"""GET and HEAD /api/face/image/{image_id}: the file of a row, found by id, never by a client's path."""

from __future__ import annotations

import os
from datetime import datetime

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedReader
from aiohttp import web

from .. import db
from ..errors import ImageNotFound
from . import conditional
from .common import path_id
from .keys import SERVICES

CACHE_FOREVER = "public, max-age=31536000, immutable"
_CHUNK = 256 * 1024


def etag_of(image: db.ImageRecord) -> str:
    """Strong validator from the content hash: the same bytes give the same tag on every server."""
    return f'"{image.sha256.hex()[:32]}"'


def _validators(image: db.ImageRecord) -> tuple[str, datetime]:
    return etag_of(image), image.created_at.replace(microsecond=0)


def _common_headers(etag: str, last_modified: datetime) -> dict[str, str]:
    return {
        "ETag": etag,
        "Last-Modified": last_modified.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Cache-Control": CACHE_FOREVER,
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
    }


async def serve_image(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    image_id = path_id(request, "image_id", ImageNotFound)
    image = await db.get_image(services.pool, image_id)
    if image is None:
        raise ImageNotFound(f"image {image_id} does not exist")
    try:
        source = await aiofiles.open(services.storage.absolute(image.file_path), "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise ImageNotFound(f"the file of image {image_id} is gone") from None
    try:
        return await _respond(request, image, source)
    finally:
        await source.close()


async def _respond(request: web.Request, image: db.ImageRecord, source: AsyncBufferedReader) -> web.StreamResponse:
    size = os.fstat(source.fileno()).st_size  # an open file's metadata: no disk wait
    etag, last_modified = _validators(image)
    headers = _common_headers(etag, last_modified)
    status = conditional.evaluate(request.method, request.headers, etag, last_modified)
    if status == 304:
        return web.Response(status=304, headers=headers)
    if status == 412:
        return web.Response(status=412, headers={"ETag": etag, "Cache-Control": "no-store"})

    first, last = 0, size - 1
    code = 200
    if conditional.range_applies(request.headers, etag, last_modified):
        try:
            byte_range = conditional.parse_range(request.headers.get("Range"), size)
        except conditional.Unsatisfiable:
            return web.Response(
                status=416, headers={"Content-Range": f"bytes */{size}", "ETag": etag, "Cache-Control": "no-store"}
            )
        if byte_range is not None:
            first, last = byte_range
            code = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"

    response = web.StreamResponse(status=code, headers=headers)
    response.content_type = image.content_type
    response.content_length = last - first + 1 if size else 0
    await response.prepare(request)
    if request.method == "HEAD" or size == 0:
        return response
    if first:
        await source.seek(first)
    remaining = last - first + 1
    while remaining > 0:
        chunk = await source.read(min(_CHUNK, remaining))
        if not chunk:
            break  # the file shrank under us: the body ends short and the client retries
        await response.write(chunk)
        remaining -= len(chunk)
    await response.write_eof()
    return response
