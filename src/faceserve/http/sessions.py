"""/api/face/sessions: create, list, show, rename, delete."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import db, inputs
from ..core import deletes, face_sessions
from ..errors import BadRequest, SessionNotFound
from .access import visible_sessions
from .appkeys import SERVICES
from .common import ok
from .parsing import read_json
from .route_params import route_id

_MAX_NAME = 200


def session_json(session: db.FaceSession) -> dict[str, Any]:
    return {"id": session.id, "name": session.name, "created_at": session.created_at.isoformat()}


def _name_of(body: object) -> str:
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise BadRequest(f"name must be a non-empty string of at most {_MAX_NAME} characters")
    # a name is shown back as given: refused rather than silently changed
    inputs.storable_text(name, "name")
    return name.strip()


async def create_session(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = _name_of(body)
    days = body.get("expires_in_days")
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500):
        raise BadRequest("expires_in_days must be a whole number of days from 1 to 36500")
    pool = request.app[SERVICES].pool
    async with pool.acquire() as conn, conn.transaction():
        session = await db.create_session(conn, name)
        if days is not None:
            await db.set_expiry(conn, session.id, days)
    expiry = {} if days is None else {"expires_in_days": days}
    return ok({**session_json(session), **expiry}, status=201)


async def list_sessions(request: web.Request) -> web.Response:
    sessions = await db.list_sessions(request.app[SERVICES].pool)
    visible = visible_sessions(request, (s.id for s in sessions))
    return ok({"sessions": [session_json(s) for s in sessions if s.id in visible]})


async def show_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    session_id = route_id(request, "session_id")
    session = await face_sessions.require_session(services, session_id)
    images, faces = await db.session_counts(services.pool, session_id)
    return ok({**session_json(session), "image_count": images, "face_count": faces})


async def rename_session(request: web.Request) -> web.Response:
    """PATCH {"name": ...}: the name guests and organisers see; nothing else changes."""
    session_id = route_id(request, "session_id")
    name = _name_of(await read_json(request))
    session = await db.rename_session(request.app[SERVICES].pool, session_id, name)
    if session is None:
        raise SessionNotFound(f"session {session_id} does not exist")
    return ok(session_json(session))


async def delete_session(request: web.Request) -> web.Response:
    session_id = route_id(request, "session_id")
    await deletes.delete_session(request.app[SERVICES], session_id)
    return ok({"id": session_id, "deleted": True})
