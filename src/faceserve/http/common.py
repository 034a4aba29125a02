"""Small helpers every handler uses: the success envelope, path and query parameters, absolute URLs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import inputs
from ..errors import FaceServeError
from .appkeys import URLS

_MAX_ID = 2**63 - 1


def ok(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response({"success": True, "data": data}, status=status)


def path_id(request: web.Request, name: str, not_found: type[FaceServeError]) -> int:
    """A numeric id from the path; anything else is an unknown id (404), as the contract says."""
    raw = request.match_info[name]
    if len(raw) > len(str(_MAX_ID)) or not inputs.is_ascii_digits(raw) or int(raw) > _MAX_ID:
        raise not_found(f"{name} {raw!r} does not exist")
    return int(raw)


def number(raw: str | None, name: str, kind: type[int | float], low: float, high: float) -> float | None:
    """A number from a query or form field, in ASCII digits, within [low, high]; None when absent or empty."""
    if raw is None or raw == "":
        return None
    if kind is int:
        return inputs.ascii_int(raw, name, int(low), int(high))
    return inputs.ascii_number(raw, name, low, high)


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    value = number(request.query.get(name), name, int, minimum, maximum)
    return default if value is None else int(value)


def image_url(request: web.Request, image_id: int) -> str:
    return request.app[URLS].image_url(request, image_id)


def face_url(request: web.Request, face_id: int) -> str:
    return request.app[URLS].face_url(request, face_id)
