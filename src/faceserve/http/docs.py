"""GET /openapi.json (the committed contract, src/faceserve/openapi.json) and GET /docs (a page rendering it).

The document is the repository's own file, shipped as package data, so what the service serves is what the
repository holds; tests/test_openapi.py fails when a route is missing from it or a real answer breaks it.
The page is a small self-written renderer (docs.html): no CDN, no build step, nothing to vendor.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

_NO_CACHE = "no-cache"  # revalidated each time: the document changes with the deployed version
# the page's own inline <script> and <style>: allowed by their hashes, and nothing else runs or styles it
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


@cache
def document() -> dict[str, Any]:
    return json.loads(resources.files("faceserve").joinpath("openapi.json").read_text(encoding="utf-8"))


@cache
def _document_bytes() -> bytes:
    return json.dumps(document(), ensure_ascii=False).encode()


@cache
def _page_bytes() -> bytes:
    return resources.files("faceserve").joinpath("docs.html").read_bytes()


@cache
def page_headers() -> dict[str, str]:
    """As the web page's (http/page.py): a CSP that lets only the page's own inline code run, never framed."""
    allowed: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for tag, body in _INLINE.findall(_page_bytes()):
        allowed[tag].append(f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'")
    policy = (
        f"default-src 'none'; script-src {' '.join(allowed[b'script'])}; style-src {' '.join(allowed[b'style'])}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Cache-Control": _NO_CACHE,
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=_document_bytes(),
        content_type="application/json",
        headers={"Cache-Control": _NO_CACHE, "X-Content-Type-Options": "nosniff"},
    )


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(body=_page_bytes(), content_type="text/html", charset="utf-8", headers=page_headers())
