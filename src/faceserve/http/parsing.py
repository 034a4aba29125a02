"""Reading a request's untrusted parts through faceserve.inputs: JSON bodies, text of the query and the path."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import inputs
from ..errors import PayloadTooLarge
from . import pace
from .appkeys import SERVICES


async def read_json(request: web.Request) -> Any:
    """The body as JSON, bounded in size before it is read, in time while it is read (408) and in depth
    before it is parsed."""
    settings = request.app[SERVICES].settings
    limit = settings.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"a JSON body may have at most {limit} bytes")
    # at the body's minimum pace, like multipart bodies (http/pace.py): a trickled JSON body held its connection
    body_pace = pace.BodyPace.from_settings(settings)
    body = bytearray()
    while chunk := await body_pace.read(request.content.readany()):
        body_pace.count(len(chunk))
        body += chunk
        if len(body) > limit:  # chunked bodies say no length up front
            raise PayloadTooLarge(f"a JSON body may have at most {limit} bytes")
    return inputs.parse_json(bytes(body), limit, settings.max_json_depth)


def query_text(request: web.Request, name: str) -> str:
    """A query parameter that goes to Postgres; absent is empty."""
    return inputs.storable_text(request.query.get(name, ""), name)


def path_text(request: web.Request, name: str) -> str:
    """A path segment that goes to Postgres."""
    return inputs.storable_text(request.match_info[name], name)
