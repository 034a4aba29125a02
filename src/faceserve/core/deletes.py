"""Removing photos and whole sessions: rows first, in one transaction with their tombstones and notifications;
files, indexes and caches after the commit (changes.py)."""

from __future__ import annotations

from .. import db
from ..errors import ImageNotFound, SessionNotFound
from . import changes
from .services import Services


async def delete_image(services: Services, image_id: int) -> db.ImageRecord:
    async with changes.session_change(services) as change:
        found = await db.get_image(change.conn, image_id)
        if found is None:
            raise ImageNotFound(f"image {image_id} does not exist")
        await change.lock_people(found.face_session_id)  # before any row: the one lock order
        persons = await db.persons_of_image(change.conn, image_id)
        deleted = await db.delete_image_row(change.conn, image_id)
        if deleted is None:
            raise ImageNotFound(f"image {image_id} does not exist")
        image, face_ids = deleted
        await change.image_deleted(image)
        await change.faces_removed(face_ids, persons)
    return image


async def delete_session(services: Services, session_id: int) -> None:
    async with changes.session_change(services) as change:
        await change.lock_people(session_id)  # before any row: the one lock order
        if not await db.delete_session(change.conn, session_id, services.settings.db_bulk_timeout_s):
            raise SessionNotFound(f"face session {session_id} does not exist")
        await change.session_dropped()
        # its guest links would otherwise stay live, listed under no event, until they expire
        await db.revoke_session_keys(change.conn, session_id)
