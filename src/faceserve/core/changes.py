"""One unit of work for a change to a session: faces added or removed, images deleted, a session dropped.

Opened with the transaction that makes the change (session_change), it is told what the transaction does
and writes, inside it, what must commit with the rows: the notifications that every other process applies
(index/sync.py) and the tombstones that make deletes crash-safe (tombstones.py). After the commit it applies
the change to this process: served cache, indexes, files, derivatives and face crops, new faces joining
people. When the transaction fails it runs the compensations registered meanwhile: an upload's saved bytes
undone and its intent given up (upload_intents.py). A database (or object store) lost during a delete
leaves its files to be finished once both are back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np

from .. import db
from ..db import recovery as db_recovery
from ..errors import Unavailable
from ..index import sync as index_sync
from ..media import renditions
from ..media.stores import POSTGRES, Undo
from ..vision.engine import DetectedFace
from . import people, tombstones, upload_intents
from .services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _NewFaces:
    image_id: int
    face_ids: list[int]
    faces: Sequence[DetectedFace]


class SessionChange:
    """What one transaction changes in a session; `conn` is the transaction's connection."""

    def __init__(self, services: Services, conn: db.Connection, session_id: int | None) -> None:
        self.services = services
        self.conn = conn
        self.session_id = session_id
        self._index: list[index_sync.IndexChange] = []
        self._new_faces: list[_NewFaces] = []
        self._crops: list[tuple[int, int]] = []
        self._images: list[db.ImageRecord] = []
        self._session_dropped = False
        self._intents: list[str] = []  # the paths an upload puts its files at (upload_intents.py)
        self._undos: list[Undo] = []

    def _session(self) -> int:
        assert self.session_id is not None, "a change names its session first (lock_people)"
        return self.session_id

    async def lock_people(self, session_id: int) -> None:
        """Before any row of the session is read for change or written: the one lock order (db/people.py)."""
        self.session_id = session_id
        await db.lock_people_writes(self.conn, session_id)

    async def faces_added(self, image_id: int, face_ids: Sequence[int], faces: Sequence[DetectedFace]) -> None:
        """The faces' rows are in: other processes hear of them at commit; here they join the index and then,
        where their neighbours agree, a person; live searches they match get them (live.py)."""
        if not faces:
            return
        vectors = np.stack([f.embedding for f in faces])
        change = index_sync.added(self._session(), face_ids, vectors)
        await index_sync.announce(self.conn, self.services.process_token, change)
        self._index.append(change)
        self._new_faces.append(_NewFaces(image_id, list(face_ids), faces))
        # the session's live searches that they match are recorded with them, and hear of it at commit
        await self.services.live.match_new_faces(self.conn, self._session(), image_id, face_ids, faces)

    async def faces_removed(
        self, face_ids: Sequence[int], persons: Sequence[int], crops: Sequence[tuple[int, int]] = ()
    ) -> None:
        """The faces' rows are gone (the people lock taken first): their people's counts and covers follow at
        once, every index drops them, and the (image id, face id) crops given are removed after the commit."""
        session_id = self._session()
        await people.faces_removed(self.conn, session_id, persons, len(face_ids))
        change = index_sync.removed(session_id, face_ids)
        await index_sync.announce(self.conn, self.services.process_token, change)
        self._index.append(change)
        self._crops.extend(crops)

    async def image_deleted(self, image: db.ImageRecord) -> None:
        """The image's row is gone: its files go after the commit, or at the next start if this process dies
        first (the tombstone)."""
        await tombstones.record_image_deleted(self.conn, image)
        self._images.append(image)

    async def session_dropped(self) -> None:
        """The session's rows are gone: its files go after the commit (the tombstone also keeps `faceserve
        import` from bringing it back), and every process drops its index."""
        session_id = self._session()
        await tombstones.record_session_deleted(self.conn, session_id)
        change = index_sync.dropped(session_id)
        await index_sync.announce(self.conn, self.services.process_token, change)
        self._index.append(change)
        self._session_dropped = True

    def bytes_saved(self, undo: Undo | None) -> None:
        """An upload's bytes are kept (media/stores.py): if the commit fails they are dropped again."""
        if undo is not None:
            self._undos.append(undo)

    @property
    def _deleting(self) -> bool:
        return self._session_dropped or bool(self._images)

    async def _apply(self) -> None:
        """After the commit, to this process."""
        services = self.services
        if self._session_dropped:
            services.served.evict_session(self._session())
        # search joins hits against the database, so deleted faces stop matching at the commit; the index
        # drops them too so they stop taking result slots
        for image in self._images:
            services.served.evict(image.id)
        for change in self._index:
            await index_sync.apply(services.indexes, change)
        if self._session_dropped:
            await services.stores.remove_session(self._session())
            await tombstones.mark_done(db.mark_session_files_removed(services.pool, self._session()))
        for image in self._images:
            await _remove_image_files(services, image)
        if self._crops:
            await asyncio.to_thread(renditions.remove_face_crops, services.storage.layout, self._session(), self._crops)
            await services.stores.remove_face_crops(self._session(), self._crops)
        for new in self._new_faces:
            try:  # the photo is in: a failure here leaves its faces waiting for the next clustering
                await people.place_new_faces(services, self._session(), new.image_id, new.face_ids, new.faces)
            except Exception:
                log.exception("new faces of image %d could not join people", new.image_id)

    async def _compensate(self, error: BaseException) -> None:
        """The transaction failed (or its commit did)."""
        services = self.services
        if self._undos and self._intents and db_recovery.is_database_unavailable(error):
            # lost while committing: the rows may exist, so the files stay until that is known
            for intent in self._intents:
                upload_intents.settle_later(services.pool, services.stores, intent)
            return
        for undo in reversed(self._undos):
            await undo()
        for intent in self._intents:
            # our file is gone (or never came): the record goes, and with it a file a delete of the same path
            # left there for this upload; if the database is down, the next start sees to both
            try:
                await tombstones.mark_done(upload_intents.give_up(services.pool, services.stores, intent))
            except Unavailable:
                # the object store is down (the put failed for it, likely): its object goes once it is back
                upload_intents.settle_later(services.pool, services.stores, intent)


async def _remove_image_files(services: Services, image: db.ImageRecord) -> None:
    if image.bytes_in != POSTGRES:  # bytes in Postgres went with the row
        async with services.pool.acquire() as conn:  # not if the same bytes are uploaded anew meanwhile
            await tombstones.remove_file_unless_taken(conn, services.stores, image.file_path, bytes_in=image.bytes_in)
    await services.stores.remove_derivatives(image.face_session_id, image.id)
    await tombstones.mark_done(db.mark_image_files_removed(services.pool, image.id))


@asynccontextmanager
async def session_change(
    services: Services, session_id: int | None = None, *, file_intents: Sequence[str] = ()
) -> AsyncIterator[SessionChange]:
    """A transaction on a connection of the pool, and the change it makes. session_id may be named later, by
    lock_people. file_intents: the paths an upload puts its files at; each recorded (and committed) on this
    connection before the transaction, which then deletes them (upload_intents.py)."""
    change: SessionChange | None = None
    try:
        async with services.pool.acquire() as conn:
            change = SessionChange(services, conn, session_id)
            # in one order (as the rows are locked by done() below): two uploads of the same paths never
            # wait for each other in a circle
            for intent in sorted(set(file_intents)):
                # committed before the file (or object) is put in place, on this connection: a start removes
                # the file once this connection's backend is gone and the row never committed
                await upload_intents.record(conn, intent)
                change._intents.append(intent)
            async with conn.transaction():
                for intent in change._intents:
                    await upload_intents.done(conn, intent)
                yield change
    except BaseException as exc:
        if change is not None:
            try:
                await change._compensate(exc)
            finally:
                _finish_deletes_later(change, exc)
        raise
    try:
        await change._apply()
    except Exception as exc:
        _finish_deletes_later(change, exc)
        raise


def _finish_deletes_later(change: SessionChange, error: BaseException) -> None:
    """A delete's files may still be there (its commit may have happened): once the database and the object
    store answer again, every delete left undone is finished, as a start does (tombstones.py)."""
    if change._deleting and tombstones.is_outage(error):
        tombstones.finish_later(change.services.pool, change.services.stores)
