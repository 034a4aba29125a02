"""Crash-safe uploads: no file in place without its row, even after a SIGKILL.

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

from . import db
from .storage import Storage

log = logging.getLogger(__name__)


async def record(conn: db.Connection, file_path: str) -> None:
    """Before the file is put in place, in a transaction of its own."""
    await conn.execute(
        "INSERT INTO pending_uploads (file_path) VALUES ($1) ON CONFLICT DO NOTHING", file_path
    )


async def done(conn: db.Connection, file_path: str) -> None:
    """In the transaction that inserts the row (or after the upload gave up)."""
    await conn.execute("DELETE FROM pending_uploads WHERE file_path = $1", file_path)


async def finish_interrupted_uploads(conn: db.Connection, storage: Storage) -> int:
    """Remove files put in place by uploads that never committed; returns how many. Run at start only:
    an upload in flight has a record too."""
    rows = await conn.fetch(
        "SELECT p.file_path FROM pending_uploads p "
        "WHERE NOT EXISTS (SELECT 1 FROM face_session_images i WHERE i.file_path = p.file_path)"
    )
    for row in rows:
        await asyncio.to_thread(storage.absolute(row["file_path"]).unlink, missing_ok=True)
    await conn.execute("DELETE FROM pending_uploads")
    if rows:
        log.info("removed the files of %d uploads an earlier run did not finish", len(rows))
    return len(rows)
