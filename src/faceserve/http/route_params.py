"""Route parameters parsed once, before the guard: every `{..._id}` of a path becomes a number through
inputs.parse_id, and the guard and the handlers read that number (route_id), never the raw text. Two parsers
once disagreed (the guard skipped ids of 19 characters, the handlers read them), and a key bound to one
session reached every other one through a zero-padded id."""

from __future__ import annotations

import re

from aiohttp import web

from .. import inputs
from ..errors import (
    FaceNotFound,
    FaceServeError,
    ImageNotFound,
    LiveSearchNotFound,
    PersonNotFound,
    SessionNotFound,
)
from .middleware import Handler
from .routing import Route

# what a path that names no such thing answers, by parameter
_NOT_FOUND: dict[str, type[FaceServeError]] = {
    "session_id": SessionNotFound,
    "image_id": ImageNotFound,
    "face_id": FaceNotFound,
    "person_id": PersonNotFound,
    "live_id": LiveSearchNotFound,
}
_IDS = web.RequestKey("route_ids", dict)
_PARAMETER = re.compile(r"\{(\w+)")


def has_ids(route: Route) -> bool:
    """Whether the route's path names an id: only those routes pass through parse_route_ids (routing.Layer)."""
    return any(name in _NOT_FOUND for name in _PARAMETER.findall(route.path))


def parse_ids(match_info: web.UrlMappingMatchInfo) -> dict[str, int]:
    ids: dict[str, int] = {}
    for name, raw in match_info.items():
        if name in _NOT_FOUND:
            value = inputs.parse_id(raw)
            if value is None:
                raise _NOT_FOUND[name](f"{name} {raw!r} does not exist")
            ids[name] = value
    return ids


def route_id(request: web.Request, name: str) -> int:
    """The id this request's path names as `name` (parsed by the middleware below)."""
    return request[_IDS][name]


def route_ids(request: web.Request) -> dict[str, int]:
    return request.get(_IDS, {})


@web.middleware
async def parse_route_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[_IDS] = parse_ids(request.match_info)
    return await handler(request)
