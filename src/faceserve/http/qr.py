"""POST /api/face/qr: a QR code (SVG) of a link, for admins. POST so that the link, which may carry a guest
key, travels in the body and never in a URL that access logs and proxies keep."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import BadRequest
from ..media.qr import qr_svg
from .parsing import read_json

# a QR code holds about 2,300 characters at medium error correction; a guest link is ~120
_MAX_TEXT = 1000


async def make_qr(request: web.Request) -> web.Response:
    body = await read_json(request)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text or len(text) > _MAX_TEXT:
        raise BadRequest(f"text must be a non-empty string of at most {_MAX_TEXT} characters")
    try:
        svg = await asyncio.to_thread(qr_svg, text)  # a few ms of pure Python per code: not on the loop
    except ValueError as exc:  # segno's DataOverflowError: more bytes than a QR code holds
        raise BadRequest(f"text does not fit in a QR code: {exc}") from None
    return web.Response(
        body=svg,
        content_type="image/svg+xml",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'"},
    )
