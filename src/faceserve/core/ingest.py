"""Adding photos: file, rows, faces and index entries move together or not at all (removing them: deletes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import numpy as np

from .. import db, layout
from ..errors import BadRequest, Busy, SessionNotFound
from ..media import decoding
from ..media.files import PendingFile, stored_name_for
from ..vision import detection, quality
from ..vision.engine import DetectedFace, FaceEngine, detected_faces
from . import changes, face_sessions
from .services import Services


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
    qualities: list[str]  # each face's verdict: kept whatever it is, marked (vision/quality.py)


def _detect_file(engine: FaceEngine, path: Path, max_pixels: int, limits: quality.Limits) -> _Found:
    """Header check first (cheap, rejects bombs and non-images), then the full decode, detection, alignment
    and each face's quality verdict."""
    info = decoding.probe(path, max_pixels)
    pixels = decoding.decode_bgr(path.read_bytes())
    boxes, landmarks = detection.find_faces(engine, pixels)  # a headshot's face too, with a second pass
    crops = engine.align(pixels, landmarks)
    qualities = [quality.verdict(quality.measure(marks, crop), limits) for marks, crop in zip(landmarks, crops)]
    return _Found(info, boxes, landmarks, crops, qualities)


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
                _detect_file,
                services.engine,
                pending.path,
                services.settings.max_image_pixels,
                quality.limits(services.settings),
            )
        info = found.info
        embeddings = await services.recogniser.embed(found.crops)
        faces = detected_faces(found.boxes, found.landmarks, embeddings, found.qualities)
    except BaseException:
        await services.storage.discard(pending.path)
        raise
    return Analyzed(pending, original_name, stored_name, info=info, faces=faces)


async def upload(
    services: Services, session_id: int, files: AsyncIterator[tuple[str, AsyncIterator[bytes]]]
) -> list[Ingested]:
    """One request's files, each (original name, its bytes): each is received, checked and analysed before
    the next is read, and all are recorded once `files` has ended.

    All or nothing: an upload that fails (a bad file, a body cut short, a client gone) records none of its
    files, so a client retries the whole request; the same bytes map to the same image.
    """
    settings = services.settings
    await face_sessions.require_session(services, session_id)
    analyzed: list[Analyzed] = []
    try:
        async for original_name, chunks in files:
            if len(analyzed) >= settings.max_files_per_upload:
                raise BadRequest(f"at most {settings.max_files_per_upload} files per request")
            # received first (at the body's minimum pace, http/pace.py), then admitted: a slow client holds a
            # connection and a .part file while its bytes arrive, never a slot of the images being processed
            pending = await services.storage.receive(session_id, chunks, settings.max_upload_bytes)
            try:
                with services.upload_gate.admit():
                    analyzed.append(await analyze_image(services, session_id, pending, original_name))
            except Busy:
                await services.storage.discard(pending.path)  # refused before analyze_image took the file over
                raise
        if not analyzed:
            raise BadRequest("no part named 'file' in the upload")
        return await record_images(services, session_id, analyzed)
    except BaseException as exc:
        await _discard_analyzed(services, analyzed)
        if isinstance(exc, Exception):
            await _raise_if_session_gone(services, session_id, exc)
        raise


async def record_image(services: Services, session_id: int, analyzed: Analyzed) -> Ingested:
    """One analysed file recorded (record_images)."""
    return (await record_images(services, session_id, [analyzed]))[0]


async def record_images(services: Services, session_id: int, analyzed: Sequence[Analyzed]) -> list[Ingested]:
    """Rows, faces and the files' renames of one request commit together, or none of them (the files put in
    place are taken back: changes.py); then the indexes hear of the faces. The pending files are discarded."""
    existing = [one.existing for one in analyzed if one.existing is not None]
    if len(existing) == len(analyzed):  # nothing new: no transaction
        for one in analyzed:
            await services.storage.discard(one.pending.path)
        return [Ingested(image, created=False) for image in existing]
    store = services.stores.configured
    names = [_stored_name(one) for one in analyzed]
    paths = [None if name is None else layout.file_path(session_id, name) for name in names]
    try:
        async with changes.session_change(
            services, session_id, file_intents=[p for p in paths if p is not None] if store.by_path else ()
        ) as change:
            await db.lock_new_bytes(change.conn, [one.pending.sha256 for one in analyzed if one.existing is None])
            recorded = [await _record(change, one, name) for one, name in zip(analyzed, names)]
    finally:
        for one in analyzed:
            await services.storage.discard(one.pending.path)
    return recorded


def _stored_name(analyzed: Analyzed) -> str | None:
    """None: the session holds these bytes already."""
    if analyzed.existing is not None:
        return None
    assert analyzed.info is not None
    return analyzed.stored_name or stored_name_for(
        analyzed.original_name, analyzed.pending.sha256_hex, analyzed.info.extension
    )


async def _record(change: changes.SessionChange, analyzed: Analyzed, name: str | None) -> Ingested:
    """Inside the change's transaction: the image's row, its faces, its bytes."""
    if analyzed.existing is not None:
        return Ingested(analyzed.existing, created=False)
    assert analyzed.info is not None and name is not None and change.session_id is not None
    session_id = change.session_id
    pending, faces = analyzed.pending, analyzed.faces
    store = change.services.stores.configured
    try:
        image = await db.insert_image(
            change.conn,
            session_id=session_id,
            file_path=layout.file_path(session_id, name),
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
    if image is None:  # the same bytes arrived concurrently (or earlier in this request) and won the race
        winner = await db.find_image_by_sha256(change.conn, session_id, pending.sha256)
        assert winner is not None
        return Ingested(winner, created=False)
    face_ids = await db.insert_faces(
        change.conn,
        image.id,
        session_id,
        [
            db.NewFace(f.box.tolist(), f.landmarks.ravel().tolist(), f.det_score, f.embedding, f.quality)
            for f in faces
        ],
    )
    await change.faces_added(image.id, face_ids, faces)
    # bytes kept inside the transaction: if the commit fails they are dropped again (media/stores.py)
    change.bytes_saved(await store.save(change.conn, pending, image))
    return Ingested(db.ImageRecord(**{**image.__dict__, "face_count": len(faces)}), created=True)


async def _discard_analyzed(services: Services, analyzed: list[Analyzed]) -> None:
    """Remove the pending files of a request that ends in an error (those recorded are renamed already)."""
    for one in analyzed:
        await services.storage.discard(one.pending.path)


async def _raise_if_session_gone(services: Services, session_id: int, error: Exception) -> None:
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
