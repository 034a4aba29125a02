"""GET /openapi.json (the committed contract, src/faceserve/openapi.json) and GET /docs (a page rendering it).

The document is the repository's own file, shipped as package data, so what the service serves is what the
repository holds; tests/test_openapi.py fails when a route is missing from it or a real answer breaks it.
The page is a small self-written renderer (docs.html): no CDN, no build step, nothing to vendor.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

_NO_CACHE = "no-cache"  # revalidated each time: the document changes with the deployed version


@cache
def document() -> dict[str, Any]:
    return json.loads(resources.files("faceserve").joinpath("openapi.json").read_text(encoding="utf-8"))


@cache
def _document_bytes() -> bytes:
    return json.dumps(document(), ensure_ascii=False).encode()


@cache
def _page_bytes() -> bytes:
    return resources.files("faceserve").joinpath("docs.html").read_bytes()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=_document_bytes(), content_type="application/json", headers={"Cache-Control": _NO_CACHE}
    )


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(
        body=_page_bytes(), content_type="text/html", charset="utf-8", headers={"Cache-Control": _NO_CACHE}
    )
