"""The serving core every image answer shares (originals, renditions, face crops; handlers in downloads.py):
access check, the row's serving facts, preconditions, ranges and bodies, found by id, never by a client's path.

This is the hot path (every thumbnail a mobile app shows), so it does the least it can per request:
- the row's serving metadata is cached per process (http/served.py: ids are never reused and files are
  immutable, so an entry only goes stale when the image is deleted, which the open() in downloads notices);
- preconditions are evaluated before the file is touched: a 304 (or 412) needs no bytes, so it is answered
  from memory when the bytes were last seen present less than `served_recheck_s` ago (nginx's
  open_file_cache_valid makes the same trade; a delete through this process evicts the entry at once);
- the file is opened and fstat'ed on the event loop: for the hot set these are page-cache lookups of a few
  microseconds, cheaper than the executor round trip that would hide them (nginx makes the same trade);
- bodies up to INLINE_BODY are read in one pread and written with the headers; larger ones go out with
  loop.sendfile (zero-copy) where the loop supports it, else in chunks read off the loop.
Images kept in Postgres (media/stores.py) answer the same way, with their bytes read by byte range
(substring of an uncompressed TOAST value reads only the chunks the range needs); images kept in S3 too, the
range answered passed through to the store as a GET with the same Range, streamed as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from collections.abc import Callable, Collection
from datetime import datetime
from typing import NoReturn

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .. import db
from ..core import signing
from ..errors import ImageNotFound
from ..media.objects import ObjectStore
from . import conditional
from .appkeys import SERVICES, URLS
from .middleware import error_response
from .observability import REQUEST_ID_HEADER, request_id_of
from .served import SERVED, ServedFile

CACHE_FOREVER = "public, max-age=31536000, immutable"
INLINE_BODY = 512 * 1024
_CHUNK = 256 * 1024
# bytes per query when streaming an image kept in Postgres: bounds memory per response
_BLOB_CHUNK = 1024 * 1024


def etag_of(image: db.ImageRecord | db.ServedImage) -> str:
    """Strong validator from the content hash: the same bytes give the same tag on every server."""
    return f'"{image.sha256.hex()[:32]}"'


def http_date(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


def common_headers(etag: str, last_modified: datetime, *more: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Made once per served entry; each answer copies them (a C-level copy, ~1.5 µs less than building)."""
    return CIMultiDictProxy(
        CIMultiDict(
            (
                ("ETag", etag),
                ("Last-Modified", http_date(last_modified)),
                ("Cache-Control", CACHE_FOREVER),
                ("Accept-Ranges", "bytes"),
                ("X-Content-Type-Options", "nosniff"),
                *more,
            )
        )
    )


async def served_file(request: web.Request, image_id: int) -> ServedFile:
    services = request.app[SERVICES]
    entry = request.app[SERVED].get(image_id)
    if entry is not None:  # nearly every request: nothing more to make or await
        return entry

    async def load() -> ServedFile | None:
        image = await db.get_served_image(services.pool, image_id)
        if image is None:
            return None
        etag = etag_of(image)
        last_modified = image.created_at.replace(microsecond=0)
        return ServedFile(
            image_id=image_id,
            disk_path=services.storage.absolute(image.file_path),
            content_type=image.content_type,
            etag=etag,
            last_modified=last_modified,
            headers=common_headers(etag, last_modified),
            bytes_in=image.bytes_in,
            byte_size=image.byte_size,
            file_path=image.file_path,
            session_id=image.face_session_id,
            sha256_hex=image.sha256.hex(),
        )

    entry = await request.app[SERVED].get_or_load(image_id, load)
    if entry is None:
        raise ImageNotFound(f"image {image_id} does not exist")
    return entry


_ONE_YEAR = 31536000
_REDIRECT_CACHE = "public, max-age=86400"


def check_access(request: web.Request, query_names: Collection[str]) -> str | None:
    """Redirect to the CDN, refuse a bad signature, or say how long the answer may be cached (None: a year).
    query_names: the parameters the route takes besides the signature."""
    urls = request.app[URLS]
    if urls.cdn_base_url and not _pulled_by_cdn(request):
        raise web.HTTPPermanentRedirect(urls.cdn_base_url + request.path_qs, headers={"Cache-Control": _REDIRECT_CACHE})
    if urls.keys is None:
        return None
    remaining = signing.verify_exact(urls.keys, request.raw_path, time.time(), query_names)
    return f"public, max-age={min(remaining, _ONE_YEAR)}"


def _pulled_by_cdn(request: web.Request) -> bool:
    """Whether the request is the CDN's pull (X-Origin-Pull holds the origin secret); with no secret set,
    nothing is redirected."""
    secret = request.app[SERVICES].settings.cdn_origin_secret
    if not secret:
        return True
    # compared as bytes: compare_digest refuses str with non-ASCII characters, which a client may send
    pulled = request.headers.get("X-Origin-Pull", "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(pulled, secret.encode())


async def respond_file(request: web.Request, entry: ServedFile, fd: int, cache_control: str | None) -> web.StreamResponse:
    """Answer with an open file's bytes (the caller closes fd)."""
    status = conditional.evaluate(request.method, request.headers, entry.etag, entry.last_modified)
    return await respond(request, entry, FileBody(fd), status, cache_control)


def without_body(status: int, entry: ServedFile, cache_control: str | None) -> web.Response:
    """The answer to a request whose preconditions decided it: 304 with the 200's headers, or 412."""
    if status == 304:
        headers = entry.headers.copy()
        if cache_control is not None:
            headers["Cache-Control"] = cache_control  # never cached past the signature's expiry
        return web.Response(status=304, headers=headers)
    response = error_response(412, "precondition_failed", "a precondition (If-Match, If-Unmodified-Since) failed")
    response.headers["ETag"] = entry.etag
    return response


class FileBody:
    """An open file: one pread for a small body, sendfile() or chunks read off the loop for a large one."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size

    async def read(self, offset: int, count: int) -> bytes:
        return os.pread(self.fd, count, offset)

    async def send(self, request: web.Request, response: web.StreamResponse, offset: int, count: int) -> None:
        await _send_file(request, response, self.fd, offset, count)


class BytesBody:
    """Bytes in memory: a rendition a full disk could not keep."""

    __slots__ = ("_data", "size")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    async def read(self, offset: int, count: int) -> bytes:
        return self._data[offset : offset + count]

    async def send(self, request: web.Request, response: web.StreamResponse, offset: int, count: int) -> None:
        await response.write(self._data[offset : offset + count])


class BlobBody:
    """Bytes in image_blobs, read a range at a time."""

    __slots__ = ("_image_id", "_on_gone", "_pool", "size")

    def __init__(self, pool: db.Connection, image_id: int, size: int, on_gone: Callable[[], NoReturn]) -> None:
        self._pool = pool
        self._image_id = image_id
        self._on_gone = on_gone
        self.size = size

    async def read(self, offset: int, count: int) -> bytes:
        data = await db.blob_range(self._pool, self._image_id, offset, count)
        if data is None:
            self._on_gone()
        return data

    async def send(self, request: web.Request, response: web.StreamResponse, offset: int, count: int) -> None:
        while count > 0:
            chunk = await db.blob_range(self._pool, self._image_id, offset, min(_BLOB_CHUNK, count))
            if not chunk:
                break  # deleted (or never there): the body ends short and the client retries
            await response.write(chunk)
            offset += len(chunk)
            count -= len(chunk)


class ObjectBody:
    """An object in the S3 store, asked for the range the client asked for and streamed through."""

    __slots__ = ("_file_path", "_objects", "_on_gone", "size")

    def __init__(self, objects: ObjectStore, file_path: str, size: int, on_gone: Callable[[], NoReturn]) -> None:
        self._objects = objects
        self._file_path = file_path
        self._on_gone = on_gone
        self.size = size

    async def read(self, offset: int, count: int) -> bytes:
        data = await self._objects.read(self._file_path, offset, count)
        if data is None:
            self._on_gone()
        return data

    async def send(self, request: web.Request, response: web.StreamResponse, offset: int, count: int) -> None:
        try:
            # closed at once when the client goes away, so the store's connection goes back to the pool
            async with contextlib.aclosing(self._objects.stream(self._file_path, offset, count)) as chunks:
                async for chunk in chunks:
                    await response.write(chunk)
        except FileNotFoundError:
            pass  # deleted since the headers went: the body ends short and the client retries


async def respond(
    request: web.Request,
    entry: ServedFile,
    body: FileBody | BlobBody | BytesBody | ObjectBody,
    status: int,
    cache_control: str | None,
) -> web.StreamResponse:
    """status: what conditional.evaluate said of the request's preconditions."""
    if status != 200:
        return without_body(status, entry, cache_control)
    size = body.size
    headers = entry.headers.copy()
    if cache_control is not None:
        headers["Cache-Control"] = cache_control  # never cached past the signature's expiry

    first, last = 0, size - 1
    code = 200
    if "Range" in request.headers and conditional.range_applies(request.headers, entry.etag, entry.last_modified):
        try:
            byte_range = conditional.parse_range(request.headers["Range"], size)
        except conditional.Unsatisfiable:
            response = error_response(416, "range_not_satisfiable", f"the range starts past the end ({size} bytes)")
            response.headers.update({"Content-Range": f"bytes */{size}", "ETag": entry.etag})
            return response
        if byte_range is not None:
            first, last = byte_range
            code = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    length = last - first + 1 if size else 0

    headers["Content-Type"] = entry.content_type
    if request.method != "HEAD" and length <= INLINE_BODY:
        # one read for the body, sent together with the headers
        return web.Response(status=code, headers=headers, body=await body.read(first, length))

    # sends its headers here, before observability's middleware could add the request id (HEAD included)
    headers[REQUEST_ID_HEADER] = request_id_of(request)
    stream = web.StreamResponse(status=code, headers=headers)
    stream.content_length = length
    await stream.prepare(request)
    if request.method != "HEAD":
        await body.send(request, stream, first, length)
    await stream.write_eof()
    return stream


async def _send_file(request: web.Request, response: web.StreamResponse, fd: int, offset: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    with os.fdopen(os.dup(fd), "rb") as source:
        try:
            await loop.sendfile(transport, source, offset, count, fallback=False)
            return
        except (NotImplementedError, RuntimeError):
            pass  # uvloop, TLS, or a transport without sendfile: copy through user space, off the loop
        while count > 0:
            chunk = await loop.run_in_executor(None, os.pread, fd, min(_CHUNK, count), offset)
            if not chunk:
                break  # the file shrank under us: the body ends short and the client retries
            await response.write(chunk)
            offset += len(chunk)
            count -= len(chunk)
