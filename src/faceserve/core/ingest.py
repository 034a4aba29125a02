"""Adding and removing photos: file, rows, faces and index entries move together or not at all."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import numpy as np

from .. import db, layout
from ..db import recovery as db_recovery
from ..errors import ImageNotFound, SessionNotFound, Unavailable
from ..index import sync as index_sync
from ..media import decoding, renditions
from ..media.files import PendingFile, stored_name_for
from ..media.stores import POSTGRES
from ..vision import detection
from ..vision.engine import DetectedFace, FaceEngine, detected_faces
from . import people, tombstones, upload_intents
from .services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ingested:
    image: db.ImageRecord
    created: bool  # False: the session already held these bytes


@dataclass(frozen=True)
class _Found:
    info: decoding.ImageInfo
    boxes: np.ndarray
    landmarks: np.ndarray
    crops: np.ndarray  # aligned, for the recogniser


def _detect_file(engine: FaceEngine, path: Path, max_pixels: int) -> _Found:
    """Header check first (cheap, rejects bombs and non-images), then the full decode, detection, alignment."""
    info = decoding.probe(path, max_pixels)
    pixels = decoding.decode_bgr(path.read_bytes())
    boxes, landmarks = detection.find_faces(engine, pixels)  # a headshot's face too, with a second pass
    return _Found(info, boxes, landmarks, engine.align(pixels, landmarks))


@dataclass
class Analyzed:
    """A received file, checked and analysed, not yet recorded. Recording commits or discards the file."""

    pending: PendingFile
    original_name: str
    stored_name: str | None
    existing: db.ImageRecord | None = None
    info: decoding.ImageInfo | None = None
    faces: list[DetectedFace] = field(default_factory=list)


async def analyze_image(
    services: Services, session_id: int, pending: PendingFile, original_name: str, stored_name: str | None = None
) -> Analyzed:
    """Dedupe by content hash, then check and analyse the file off the loop. On error the file is discarded."""
    try:
        existing = await db.find_image_by_sha256(services.pool, session_id, pending.sha256)
        if existing is not None:
            return Analyzed(pending, original_name, stored_name, existing=existing)
        # decode, detection and alignment per image on the inference threads (images in parallel); the
        # faces then join those of concurrent images and searches in shared recogniser runs
        with services.recogniser.coming():
            found = await services.infer(
                _detect_file, services.engine, pending.path, services.settings.max_image_pixels
            )
        info = found.info
        faces = detected_faces(found.boxes, found.landmarks, await services.recogniser.embed(found.crops))
    except BaseException:
        await services.storage.discard(pending.path)
        raise
    return Analyzed(pending, original_name, stored_name, info=info, faces=faces)


async def record_image(services: Services, session_id: int, analyzed: Analyzed) -> Ingested:
    """Row, faces and the file's rename commit together; then the index hears of the faces."""
    pending, faces = analyzed.pending, analyzed.faces
    store = services.stores.configured
    undo_save = None
    intent: str | None = None
    try:
        if analyzed.existing is not None:
            return Ingested(analyzed.existing, created=False)
        assert analyzed.info is not None
        name = analyzed.stored_name or stored_name_for(analyzed.original_name, pending.sha256_hex, analyzed.info.extension)
        file_path = layout.file_path(session_id, name)
        async with services.pool.acquire() as conn:
            if store.by_path:
                # committed before the file (or object) is put in place, on this connection: a start removes the file
                # once this connection's backend is gone and the row never committed (core/upload_intents.py)
                await upload_intents.record(conn, file_path)
                intent = file_path
            async with conn.transaction():
                try:
                    image = await db.insert_image(
                        conn,
                        session_id=session_id,
                        file_path=file_path,
                        stored_name=name,
                        original_name=analyzed.original_name,
                        content_type=analyzed.info.content_type,
                        byte_size=pending.size,
                        sha256=pending.sha256,
                        width=analyzed.info.width,
                        height=analyzed.info.height,
                        bytes_in=store.kind,
                    )
                except asyncpg.ForeignKeyViolationError as exc:
                    raise SessionNotFound(f"face session {session_id} does not exist") from exc
                if intent is not None:
                    await upload_intents.done(conn, intent)
                if image is None:  # the same bytes arrived concurrently and won the race
                    winner = await db.find_image_by_sha256(conn, session_id, pending.sha256)
                    assert winner is not None
                    return Ingested(winner, created=False)
                face_ids = await db.insert_faces(
                    conn,
                    image.id,
                    session_id,
                    [db.NewFace(f.box.tolist(), f.landmarks.ravel().tolist(), f.det_score, f.embedding) for f in faces],
                )
                await index_sync.announce_added(conn, services.process_token, session_id, face_ids)
                await services.live.match_new_faces(conn, session_id, image.id, face_ids, faces)
                # bytes kept inside the transaction: if the commit fails they are dropped below (media/stores.py)
                undo_save = await store.save(conn, pending, image)
        undo_save = None
        intent = None
    except BaseException as exc:
        if undo_save is not None and intent is not None and db_recovery.is_database_unavailable(exc):
            # lost while committing: the row may exist, so the file stays until that is known
            upload_intents.settle_later(services.pool, services.stores, intent)
            raise
        if undo_save is not None:
            await undo_save()
        if intent is not None:
            # our file is gone (or never came): the record goes, and with it a file a delete of the same path
            # left there for this upload; if the database is down, the next start sees to both
            try:
                await tombstones.mark_done(upload_intents.give_up(services.pool, services.stores, intent))
            except Unavailable:
                # the object store is down (the put failed for it, likely): its object goes once it is back
                upload_intents.settle_later(services.pool, services.stores, intent)
        raise
    finally:
        await services.storage.discard(pending.path)

    if faces:
        vectors = np.stack([f.embedding for f in faces])
        await services.indexes.add(session_id, np.asarray(face_ids, dtype=np.int64), vectors)
        try:  # the photo is in: a failure here leaves its faces waiting for the next clustering
            await people.place_new_faces(services, session_id, image.id, face_ids, faces)
        except Exception:
            log.exception("new faces of image %d could not join people", image.id)
    return Ingested(db.ImageRecord(**{**image.__dict__, "face_count": len(faces)}), created=True)


async def record_all(services: Services, session_id: int, analyzed: list[Analyzed]) -> list[Ingested]:
    """Record every analysed file of one request, or none: when one fails, the images this call created are
    deleted again (the rest of the pending files are the caller's to discard)."""
    done: list[Ingested] = []
    try:
        for one in analyzed:
            done.append(await record_image(services, session_id, one))
    except BaseException:
        for outcome in done:
            if outcome.created:
                try:
                    await delete_image(services, outcome.image.id)
                except ImageNotFound:
                    pass  # gone with its session already
        raise
    return done


async def discard_analyzed(services: Services, analyzed: list[Analyzed]) -> None:
    """Remove the pending files of a request that ends in an error (those recorded are renamed already)."""
    for one in analyzed:
        await services.storage.discard(one.pending.path)


async def raise_if_session_gone(services: Services, session_id: int, error: Exception) -> None:
    """An upload that failed because its session was deleted meanwhile (its folder removed under the pending
    file, the row gone at insert) is a 404 session_not_found, whatever the failure looked like; the folder
    that receiving made again is removed."""
    if not isinstance(error, SessionNotFound):
        try:
            if await db.get_session(services.pool, session_id) is not None:
                return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return  # the database failing too: the original error says more
    await asyncio.to_thread(services.storage.remove_session, session_id)
    if not isinstance(error, SessionNotFound):
        raise SessionNotFound(f"face session {session_id} was deleted during the upload") from error


async def delete_image(services: Services, image_id: int) -> db.ImageRecord:
    with tombstones.finish_deletes_if_database_lost(services.pool, services.stores):
        return await _delete_image(services, image_id)


async def _delete_image(services: Services, image_id: int) -> db.ImageRecord:
    async with services.pool.acquire() as conn, conn.transaction():
        found = await db.get_image(conn, image_id)
        if found is None:
            raise ImageNotFound(f"image {image_id} does not exist")
        await db.lock_people_writes(conn, found.face_session_id)  # before any row: the one lock order
        persons = await db.persons_of_image(conn, image_id)
        deleted = await db.delete_image_row(conn, image_id)
        if deleted is None:
            raise ImageNotFound(f"image {image_id} does not exist")
        image, face_ids = deleted
        # the files go after the commit; if this process dies first, the next start removes them
        await tombstones.record_image_deleted(conn, image)
        await people.faces_removed(conn, image.face_session_id, persons, len(face_ids))
        await index_sync.announce_removed(conn, services.process_token, image.face_session_id, face_ids)
    # search joins hits against the database, so the deleted faces stop matching at the commit above;
    # the index drops them too so they stop taking result slots
    services.served.evict(image.id)
    await services.indexes.remove(image.face_session_id, np.asarray(face_ids, dtype=np.int64))
    if image.bytes_in != POSTGRES:  # bytes in Postgres went with the row
        async with services.pool.acquire() as conn:  # not if the same bytes are uploaded anew meanwhile
            await tombstones.remove_file_unless_taken(conn, services.stores, image.file_path, bytes_in=image.bytes_in)
    await asyncio.to_thread(renditions.remove_derivatives, services.storage.layout, image.face_session_id, image.id)
    await tombstones.mark_done(db.mark_image_files_removed(services.pool, image.id))
    return image
