"""Small helpers every handler uses: the success envelope, query parameters, absolute URLs (path ids: route_params.py)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .. import inputs
from ..errors import BadRequest
from .appkeys import URLS


def json_line(value: Any) -> str:
    """JSON ending in a newline: curl's output then ends its line instead of running into the prompt."""
    return json.dumps(value) + "\n"


def ok(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response({"success": True, "data": data}, status=status, dumps=json_line)


def number(raw: str | None, name: str, kind: type[int | float], low: float, high: float) -> float | None:
    """A number from a query or form field, in ASCII digits, within [low, high]; None when absent or empty."""
    if raw is None or raw == "":
        return None
    if kind is int:
        return inputs.ascii_int(raw, name, int(low), int(high))
    return inputs.ascii_number(raw, name, low, high)


def form_id(raw: str | None, name: str) -> int | None:
    """An id from a form field, read by the same parser as the ids of paths; None when absent or empty."""
    if raw is None or raw == "":
        return None
    value = inputs.parse_id(raw)
    if value is None:
        raise BadRequest(f"{name} must be a whole number")
    return value


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    value = number(request.query.get(name), name, int, minimum, maximum)
    return default if value is None else int(value)


def image_url(request: web.Request, image_id: int) -> str:
    return request.app[URLS].image_url(request, image_id)


def face_url(request: web.Request, face_id: int) -> str:
    return request.app[URLS].face_url(request, face_id)
