"""`faceserve storage migrate --to s3|file|postgres`: move recorded images' bytes to another store, a session
at a time, resumable, every copy checked against the row's SHA-256.

Per session: each image not yet in the target is read from its store and checked against its row's SHA-256
(a damaged original is reported, and its session left as it is), written to the target, read back from there
and checked again. Only when all of a session's images are there does one transaction switch their rows
(bytes_in); the old copies go after that commit. Cut short (a crash, Ctrl-C, a store down), a run leaves
every row naming a complete copy; running it again copies what is left and switches then. An image deleted
during a move stays deleted: the copy made for it is removed again.

Serving nodes may keep running: one that held a switched row finds the old copy gone at its next look,
reloads the row and serves the new copy (http/downloads.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from .. import db
from ..errors import ImageNotFound
from ..media.files import Storage
from ..media.stores import FILE, POSTGRES, S3, ImageStores
from . import tombstones

log = logging.getLogger(__name__)


@dataclass
class MoveReport:
    images_moved: int = 0
    sessions_switched: int = 0
    # (image id, why): their sessions stay where they are until a later run moves them
    failed: list[tuple[int, str]] = field(default_factory=list)


Progress = Callable[[MoveReport, db.ImageRecord], None]


async def move_all(
    pool: asyncpg.Pool, stores: ImageStores, storage: Storage, target: str, progress: Progress | None = None
) -> MoveReport:
    report = MoveReport()
    for session in await db.list_sessions(pool):
        await _move_session(pool, stores, storage, session.id, target, report, progress)
    return report


async def _move_session(
    pool: asyncpg.Pool,
    stores: ImageStores,
    storage: Storage,
    session_id: int,
    target: str,
    report: MoveReport,
    progress: Progress | None,
) -> None:
    images = await db.images_kept_elsewhere(pool, session_id, target)
    if not images:
        return
    copied: list[db.ImageRecord] = []
    failed = 0
    for image in images:
        try:
            if await _copy(pool, stores, storage, image, target):
                copied.append(image)
        except (ImageNotFound, FileNotFoundError, _Mismatch) as exc:
            report.failed.append((image.id, str(exc)))
            failed += 1
        if progress is not None:
            progress(report, image)
    if failed:
        log.warning("session %d stays where it is: %d of its images could not be moved", session_id, failed)
        return
    async with pool.acquire() as conn, conn.transaction():
        switched = await db.switch_store(conn, {image.id: image.bytes_in for image in copied}, target)
        # blobs of a switched row go with the switch; files and objects after it
        await db.delete_blobs(conn, [image.id for image in copied if image.id in switched and image.bytes_in == POSTGRES])
    for image in copied:
        if image.id in switched:
            if image.bytes_in != POSTGRES:
                await stores.of(image).remove(image.file_path)
            report.images_moved += 1
        else:  # deleted (or moved by another run) meanwhile: the copy made for it goes unless a row took its path
            async with pool.acquire() as conn:
                await tombstones.remove_file_unless_taken(conn, stores, image.file_path, bytes_in=target)
    report.sessions_switched += 1


class _Mismatch(Exception):
    """Bytes whose SHA-256 is not their row's."""


async def _copy(
    pool: asyncpg.Pool, stores: ImageStores, storage: Storage, image: db.ImageRecord, target: str
) -> bool:
    """Copy one image's bytes into the target store and check them there; False: the image was deleted."""
    try:
        data = await _read(stores, image)
    except (ImageNotFound, FileNotFoundError):
        if await db.get_image(pool, image.id) is None:
            return False
        raise ImageNotFound(f"the bytes of image {image.id} are missing from {image.bytes_in}") from None
    if hashlib.sha256(data).digest() != image.sha256:
        raise _Mismatch(f"the bytes of image {image.id} in {image.bytes_in} are not the ones recorded")
    if target == POSTGRES:
        try:
            await db.put_blob(pool, image.id, data)
        except asyncpg.ForeignKeyViolationError:
            return False
    else:
        pending = await storage.receive(image.face_session_id, _chunks(data), len(data))
        try:
            if target == FILE:
                await asyncio.to_thread(storage.commit, pending, image.file_path)
            else:
                assert target == S3 and stores.objects is not None
                await stores.objects.put_file(image.file_path, pending.path, pending.size, pending.sha256, image.content_type)
        finally:
            await storage.discard(pending.path)
    if hashlib.sha256(await _read(stores, dataclasses.replace(image, bytes_in=target))).digest() != image.sha256:
        raise _Mismatch(f"the copy of image {image.id} in {target} does not read back as written")
    return True


async def _read(stores: ImageStores, image: db.ImageRecord) -> bytes:
    source = await stores.of(image).source(image)
    return await asyncio.to_thread(source.read_bytes) if isinstance(source, Path) else source


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data
