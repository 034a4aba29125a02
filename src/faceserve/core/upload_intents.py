"""Crash-safe uploads: no file (or object: media/stores.py) in place without its row, even after a SIGKILL.

An upload renames its received file into place inside the transaction that inserts its row (so both
commit together or the file is removed). A process killed after the rename and before the commit leaves a
file with no row, which nothing would ever remove and `faceserve import` would take in. So an upload
records the path first (committed on its own, one short round trip), the row's transaction deletes that
record, and finish_interrupted_uploads, run at start before serving, removes the file of every record left
whose path has no row.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from .. import db
from ..media.stores import ImageStores
from . import tombstones

log = logging.getLogger(__name__)


async def record(conn: db.Connection, file_path: str) -> None:
    """Before the file is put in place, in a transaction of its own, on the connection whose transaction then
    records the row: the intent is that connection's (its database backend's) until the row commits, so no
    other node's sweep takes it for abandoned while the upload lives (db/sweeps.py)."""
    await db.insert_upload_intent(conn, file_path)


async def done(conn: db.Connection, file_path: str) -> None:
    """In the transaction that inserts the row (or after the upload gave up)."""
    await db.delete_upload_intent(conn, file_path)


async def finish_interrupted_uploads(conn: db.Connection, stores: ImageStores) -> int:
    """Remove files put in place by uploads that never committed, of writers now gone; returns how many.
    Inside the sweep's transaction, under its lock (start_sweep.py). Each intent is claimed (deleted, its
    row locked until the sweep commits) before its file goes, so an upload of the same path that starts
    meanwhile waits for the sweep instead of losing its file to it."""
    removed = 0
    for file_path in await db.abandoned_upload_paths(conn):
        if await db.claim_abandoned_upload(conn, file_path):
            await stores.remove(file_path)
            removed += 1
    if removed:
        log.info("removed the files of %d uploads an earlier run did not finish", removed)
    return removed


_settling: set[asyncio.Task[None]] = set()


async def give_up(pool: asyncpg.Pool, stores: ImageStores, file_path: str) -> None:
    """An upload that recorded its intent and will not commit: the intent goes, and the file at its path
    unless a row holds it. A delete of the same path that ran meanwhile left that file to this upload
    (tombstones.remove_file_unless_taken), so it is this upload's to remove."""
    async with pool.acquire() as conn:
        await tombstones.remove_file_unless_taken(conn, stores, file_path, giving_up_intent=True)


async def settle(pool: asyncpg.Pool, stores: ImageStores, file_path: str, retry_s: float = 1.0) -> None:
    """The database was lost while an upload committed, so whether its row exists is unknown (or the object
    store was lost while an upload gave up): once both answer again, keep the file if the row (or a newer
    upload of the same path) is there and remove it otherwise. Left unfinished (the process stops first),
    the next start does the same."""
    while True:
        try:
            await give_up(pool, stores, file_path)
            return
        except Exception as exc:
            if not tombstones.is_outage(exc):
                raise
            await asyncio.sleep(retry_s)


def settle_later(pool: asyncpg.Pool, stores: ImageStores, file_path: str) -> None:
    task = asyncio.create_task(settle(pool, stores, file_path))
    _settling.add(task)  # a reference, so the task is not collected while it waits
    task.add_done_callback(_settling.discard)
