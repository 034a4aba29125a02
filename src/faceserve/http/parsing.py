"""Reading a request's untrusted parts through faceserve.inputs: JSON bodies, text of the query and the path."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import inputs
from ..errors import PayloadTooLarge
from .appkeys import SERVICES


async def read_json(request: web.Request) -> Any:
    """The body as JSON, bounded in size before it is read and in depth before it is parsed."""
    settings = request.app[SERVICES].settings
    limit = settings.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"a JSON body may have at most {limit} bytes")
    body = bytearray()
    while chunk := await request.content.readany():
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
