"""Face sessions as a whole: look one up (deleting one with everything it holds: deletes.py)."""

from __future__ import annotations

from .. import db
from ..errors import SessionNotFound
from .services import Services


async def require_session(services: Services, session_id: int) -> db.FaceSession:
    session = await db.get_session(services.pool, session_id)
    if session is None:
        raise SessionNotFound(f"face session {session_id} does not exist")
    return session
