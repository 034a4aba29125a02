"""Absolute URLs of images in API responses: origin or CDN, signed or not, decided once at start."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from ..config import Settings
from ..core import signing


def listening_origin(request: web.Request) -> str:
    """http://address:port of this process's end of the connection, as the kernel reports it."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple):  # gone, or a Unix socket: the path alone is served
        return ""
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class UrlPolicy:
    """keys: None = unsigned URLs; set at start (and on each refresh) from Postgres when the service
    manages them (signing_store.py, loaded by http/access.py), or from FACESERVE_SIGNING_KEYS when set."""

    public_base_url: str | None
    cdn_base_url: str | None
    keys: signing.SigningKeys | None
    ttl: int
    granularity: int

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        return cls(
            public_base_url=settings.public_base_url.rstrip("/") if settings.public_base_url else None,
            cdn_base_url=settings.cdn_base_url.rstrip("/") if settings.cdn_base_url else None,
            keys=signing.SigningKeys.parse(settings.signing_keys) if settings.signing_keys and settings.auth else None,
            ttl=settings.signed_url_ttl,
            granularity=settings.signed_url_granularity,
        )

    def origin(self, request: web.Request) -> str:
        """PUBLIC_BASE_URL, else the address this connection reached: never the Host header, which the
        client writes (`Host: evil.example` made every url and redirect of the answer point there)."""
        return self.public_base_url or listening_origin(request)

    def signed_path(self, path: str) -> str:
        if self.keys is None:
            return path
        expires = signing.expiry(time.time(), self.ttl, self.granularity)
        return f"{path}?{signing.sign(self.keys, path, expires)}"

    def image_url(self, request: web.Request, image_id: int) -> str:
        base = self.cdn_base_url or self.origin(request)
        return base + self.signed_path(f"/api/face/image/{image_id}")

    def face_url(self, request: web.Request, face_id: int) -> str:
        """A face crop (a part of a photo): the same base and signature as the photo's own URL."""
        base = self.cdn_base_url or self.origin(request)
        return base + self.signed_path(f"/api/face/face/{face_id}")

