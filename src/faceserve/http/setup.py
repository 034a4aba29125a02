"""POST /api/face/setup: a one-time setup link's token in, a new admin key for this browser out."""

from __future__ import annotations

from aiohttp import web

from ..core import setup_links
from ..errors import BadRequest
from .appkeys import SERVICES
from .common import ok
from .parsing import read_json


async def exchange_setup_token(request: web.Request) -> web.Response:
    body = await read_json(request)
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise BadRequest('body must be {"token": "<the token after #setup= in the link>"}')
    text, record = await setup_links.exchange(request.app[SERVICES].pool, token)
    return ok({"key": text, **record.as_json()}, status=201)
