"""Crash-safe deletes, and deleted things that stay deleted.

A delete records the image (or session) in deleted_images (deleted_sessions) in the same transaction that
deletes its rows. Its files (or objects: media/stores.py) are removed after the commit, and the record is then marked done. A process
killed in between leaves a record not done: finish_pending_removals, run at every start before serving,
removes those files once the record's writer is provably gone (its database backend ended: db/sweeps.py), so
a node of a fleet starting never races another node's delete in flight. So after any crash the files on disk are those of the rows, and no file outlives its
row to be taken in again by `faceserve import`, which also skips any file whose path or content was
deleted from its session and any deleted session (was_deleted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import asyncpg

from .. import db
from ..db import recovery as db_recovery
from ..errors import Unavailable
from ..media.stores import ImageStores

log = logging.getLogger(__name__)


def is_outage(exc: BaseException) -> bool:
    """The database, or the object store past its retries, not answering now: worth trying again later."""
    return db_recovery.is_database_unavailable(exc) or isinstance(exc, Unavailable)


async def record_image_deleted(conn: db.Connection, image: db.ImageRecord) -> None:
    """Inside the transaction that deletes the image's row."""
    await db.insert_deleted_image(conn, image)


async def record_session_deleted(conn: db.Connection, session_id: int) -> None:
    """Inside the transaction that deletes the session's row."""
    await db.insert_deleted_session(conn, session_id)


async def remove_file_unless_taken(
    conn: db.Connection,
    stores: ImageStores,
    file_path: str,
    *,
    bytes_in: str | None = None,
    giving_up_intent: bool = False,
) -> bool:
    """Remove a stored file unless a row holds its path or a live upload is putting its file there (the same
    bytes uploaded anew: the same path); says whether it went. Decided and done under the path's lock, which
    an upload takes to record its intent (db/upload_intents.py) before it puts its file in place: so that
    upload either came first (the file is now its) or waits until this one is gone. Checking first and
    removing after, unlocked, could remove the new upload's file. giving_up_intent: the caller's own upload
    gives up, its intent goes in the same transaction (upload_intents.give_up). bytes_in: the store that
    holds them, when known (ImageStores.remove)."""
    async with conn.transaction():
        await db.lock_path(conn, file_path)
        if giving_up_intent:
            await db.delete_upload_intent(conn, file_path)
        if await db.path_taken(conn, file_path):
            return False
        await stores.remove(file_path, bytes_in)
        return True


async def finish_pending_removals(conn: db.Connection, stores: ImageStores) -> int:
    """Remove the files of deletes committed by a writer that died before removing them (its database
    backend is gone, db/sweeps.py); returns how many deletes were finished. Deletes another live process
    is still finishing are its own. Run inside the sweep's transaction, under its lock (start_sweep.py)."""
    sessions = await db.abandoned_session_removals(conn)
    for session_id in sessions:
        await stores.remove_session(session_id)
        await db.mark_session_files_removed(conn, session_id)
    images = await db.abandoned_image_removals(conn)
    for image in images:
        await remove_file_unless_taken(conn, stores, image.file_path)
        await stores.remove_derivatives(image.face_session_id, image.image_id)
        await db.mark_image_files_removed(conn, image.image_id)
    finished = len(sessions) + len(images)
    if finished:
        log.info("finished %d deletes that an earlier run committed but did not finish", finished)
    return finished


_finishing: set[asyncio.Task[None]] = set()


async def finish_when_back(pool: asyncpg.Pool, stores: ImageStores, retry_s: float = 1.0) -> None:
    """The database (or the object store) was lost during or just after a delete, so its files may still be
    there (its commit may have happened): once both answer, finish every delete left undone, as a start does."""
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                await db.lock_sweeps(conn)  # one sweeper at a time, as at start (start_sweep.py)
                await finish_pending_removals(conn, stores)
            return
        except Exception as exc:
            if not is_outage(exc):
                raise
            await asyncio.sleep(retry_s)


def finish_later(pool: asyncpg.Pool, stores: ImageStores) -> None:
    task = asyncio.create_task(finish_when_back(pool, stores))
    _finishing.add(task)  # a reference, so the task is not collected while it waits
    task.add_done_callback(_finishing.discard)


async def mark_done(marking: Awaitable[None]) -> None:
    """The delete is committed and its files are gone: a database lost just now only means the next start
    removes them once more (nothing), so the client still hears of its delete."""
    try:
        await marking
    except Exception as exc:
        if not db_recovery.is_database_unavailable(exc):
            raise
        log.warning("could not mark a finished delete (%s); the next start will", type(exc).__name__)
