"""The web page at / and its files under /static/{version}/: plain ES modules shipped in the package.

There is no build step, so the files' URLs carry a version instead of a hashed name: a hash of every shipped
file, computed once when the app is made. index.html names its CSS and entry module under that folder and
the modules import each other relatively, so a new release changes every URL at once and each file can be
cached for a year; index.html itself is revalidated on every load (no-cache with an ETag, a 304 when
unchanged). The files are small (tens of KiB together), so they are read once and served from memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from aiohttp import web

from ..config import Settings
from .conditional import weak_match

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # ES modules are refused under any non-JavaScript type
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
# the page itself: always asked again, answered by a 304 while the release is the same
_REVALIDATE = "no-cache"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True)
class Page:
    version: str
    index: Asset
    assets: dict[str, Asset]
    headers: dict[str, str]  # security headers of the page itself


PAGE = web.AppKey("page", Page)


def _asset(body: bytes, suffix: str) -> Asset:
    return Asset(body, _CONTENT_TYPES[suffix], f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _content_security_policy(settings: Settings) -> str:
    # images may come from the public origin or a CDN (the API's absolute urls); the selfie preview is a blob:
    image_sources = " ".join(
        [
            "'self'",
            "blob:",
            *filter(None, (_origin(settings.public_base_url), _origin(settings.cdn_base_url))),
        ]
    )
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src {image_sources}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def load(settings: Settings, static_dir: Path = STATIC_DIR) -> Page:
    """Read the shipped files once (at app creation, before the loop serves anything)."""
    files = {
        path.name: path.read_bytes()
        for path in sorted(static_dir.iterdir())
        if path.is_file() and path.suffix in _CONTENT_TYPES
    }
    digest = hashlib.sha256()
    for name, body in files.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    version = digest.hexdigest()[:12]
    template = Template(files.pop("index.html").decode("utf-8"))
    index_html = template.substitute(
        static_base=f"/static/{version}",
        # the page asks for thumbnails only in widths the service renders (?w= outside them is a 400)
        derivative_sizes=json.dumps(list(settings.derivative_sizes)),
        # the lifetime a new guest link is offered with (GUEST_LINK_DAYS)
        guest_link_days=str(settings.guest_link_days),
    )
    return Page(
        version=version,
        index=_asset(index_html.encode("utf-8"), ".html"),
        assets={name: _asset(body, Path(name).suffix) for name, body in files.items()},
        headers={
            "Content-Security-Policy": _content_security_policy(settings),
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )



def _respond(request: web.Request, asset: Asset, cache_control: str, extra: dict[str, str]) -> web.Response:
    headers = {"ETag": asset.etag, "Cache-Control": cache_control, **extra}
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and weak_match(if_none_match, asset.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


async def index(request: web.Request) -> web.Response:
    """GET and HEAD /: the page for guests and organisers."""
    page = request.app[PAGE]
    return _respond(request, page.index, _REVALIDATE, page.headers)


async def static_file(request: web.Request) -> web.Response:
    """GET and HEAD /static/{version}/{name}: only the current release's files (an old version is a 404:
    serving today's bytes under yesterday's URL would be cached for a year as yesterday's)."""
    page = request.app[PAGE]
    asset = page.assets.get(request.match_info["name"])
    if request.match_info["version"] != page.version or asset is None:
        raise web.HTTPNotFound(reason="Not Found")
    return _respond(request, asset, _IMMUTABLE, {"X-Content-Type-Options": "nosniff"})
