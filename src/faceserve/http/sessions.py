"""/api/face/sessions: create, list, show, delete."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import db, ingest, inputs
from ..errors import BadRequest, SessionNotFound
from .common import ok, path_id
from .keys import SERVICES
from .parsing import read_json
from .serving import SERVED_FILES

_MAX_NAME = 200


def session_json(session: db.FaceSession) -> dict[str, Any]:
    return {"id": session.id, "name": session.name, "created_at": session.created_at.isoformat()}


async def create_session(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise BadRequest(f"name must be a non-empty string of at most {_MAX_NAME} characters")
    # a name is shown back as given: refused rather than silently changed
    inputs.storable_text(name, "name")
    session = await db.create_session(request.app[SERVICES].pool, name.strip())
    return ok(session_json(session), status=201)


async def list_sessions(request: web.Request) -> web.Response:
    sessions = await db.list_sessions(request.app[SERVICES].pool)
    return ok({"sessions": [session_json(s) for s in sessions]})


async def show_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    session_id = path_id(request, "session_id", SessionNotFound)
    session = await ingest.require_session(services, session_id)
    images, faces = await db.session_counts(services.pool, session_id)
    return ok({**session_json(session), "image_count": images, "face_count": faces})


async def delete_session(request: web.Request) -> web.Response:
    session_id = path_id(request, "session_id", SessionNotFound)
    await ingest.delete_session(request.app[SERVICES], session_id)
    # no 304 from this process's memory for its images from now on (other processes: served_recheck_s)
    request.app[SERVED_FILES].evict_session(session_id)
    return ok({"id": session_id, "deleted": True})
