"""Reading multipart bodies: streamed file parts and small form fields, with size limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from ..config import Settings
from ..errors import BadRequest, PayloadTooLarge
from . import pace
from .appkeys import SERVICES

_CHUNK = 256 * 1024
_MAX_FIELD = 1024


async def parts(request: web.Request) -> AsyncIterator[BodyPartReader]:
    # the raw header, not request.content_type: that parses with the email package, ~0.4 ms a request and
    # never cached, as every client picks a new boundary (MultipartReader parses it again, cheaply)
    if not request.headers.get(hdrs.CONTENT_TYPE, "").lstrip().lower().startswith("multipart/"):
        raise BadRequest("body must be multipart/form-data")
    # every read of this body keeps a minimum pace (http/pace.py)
    body_pace = pace.BodyPace.from_settings(request.app[SERVICES].settings)
    pace.current.set(body_pace)
    with _framing_errors():
        reader = await request.multipart()
        while (part := await body_pace.read(reader.next())) is not None:
            if isinstance(part, BodyPartReader):
                yield part


@contextmanager
def _framing_errors() -> Iterator[None]:
    """What aiohttp's multipart reader raises on a malformed or cut body, wherever it reads, as a 400."""
    try:
        yield
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        raise BadRequest(f"malformed multipart body: {getattr(exc, 'message', exc)}") from None


async def skip(part: BodyPartReader) -> None:
    """Read past a part the handler does not want, at the body's pace like any other part (part.release()
    reads with no timeout: a trickled `junk` part held its connection for as long as it kept trickling)."""
    async for _ in chunks(part):
        pass


async def chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    body_pace = pace.current.get() or pace.BodyPace.from_settings(Settings())
    while True:
        with _framing_errors():
            chunk = await body_pace.read(part.read_chunk(_CHUNK))
        if not chunk:
            return
        body_pace.count(len(chunk))
        yield chunk


async def read_all(part: BodyPartReader, max_bytes: int) -> bytes:
    buffer = bytearray()
    async for chunk in chunks(part):
        buffer += chunk
        if len(buffer) > max_bytes:
            raise PayloadTooLarge(f"{part.name} is larger than {max_bytes} bytes")
    return bytes(buffer)


async def read_field(part: BodyPartReader, max_bytes: int = _MAX_FIELD) -> str:
    data = await read_all(part, max_bytes)
    try:
        return data.decode("utf-8").strip(" \t\r\n")  # ASCII white space: U+00A0 is no empty field
    except UnicodeDecodeError:
        raise BadRequest(f"field {part.name} is not UTF-8 text") from None
