"""Face sessions as a whole: look one up, delete one with everything it holds."""

from __future__ import annotations

import asyncio

from .. import db
from ..errors import SessionNotFound
from ..index import sync as index_sync
from . import tombstones
from .services import Services


async def require_session(services: Services, session_id: int) -> db.FaceSession:
    session = await db.get_session(services.pool, session_id)
    if session is None:
        raise SessionNotFound(f"face session {session_id} does not exist")
    return session


async def delete_session(services: Services, session_id: int) -> None:
    with tombstones.finish_deletes_if_database_lost(services.pool, services.storage):
        await _delete_session(services, session_id)


async def _delete_session(services: Services, session_id: int) -> None:
    async with services.pool.acquire() as conn, conn.transaction():
        if not await db.delete_session(conn, session_id):
            raise SessionNotFound(f"face session {session_id} does not exist")
        # the tombstone makes the removal of its files crash-safe and keeps `faceserve import` from
        # bringing the session back (tombstones.py)
        await tombstones.record_session_deleted(conn, session_id)
        # its guest links would otherwise stay live, listed under no event, until they expire
        await db.revoke_session_keys(conn, session_id)
        await index_sync.announce_dropped(conn, services.process_token, session_id)
    services.served.evict_session(session_id)
    await services.indexes.drop(session_id)
    await asyncio.to_thread(services.storage.remove_session, session_id)
    await tombstones.mark_done(db.mark_session_files_removed(services.pool, session_id))
