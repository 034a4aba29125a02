"""Small helpers every handler uses: the success envelope, path and query parameters, absolute URLs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import BadRequest, FaceServeError
from .urls import URLS

_MAX_ID = 2**63 - 1


def ok(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response({"success": True, "data": data}, status=status)


def path_id(request: web.Request, name: str, not_found: type[FaceServeError]) -> int:
    """A numeric id from the path; anything else is an unknown id (404), as the contract says."""
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or int(raw) > _MAX_ID:
        raise not_found(f"{name} {raw!r} does not exist")
    return int(raw)


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}")
    return value


def image_url(request: web.Request, image_id: int) -> str:
    return request.app[URLS].image_url(request, image_id)
