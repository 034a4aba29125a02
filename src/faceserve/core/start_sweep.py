"""What a start finishes before serving, after a crash of the run before it: the files of committed deletes
(tombstones.py) and of uploads that never committed (upload_intents.py). Run once per start by the process
that owns the storage (the single process, or the parent of the workers), like the sweep of .part files."""

from __future__ import annotations

import asyncio

from .. import db
from ..media.files import Storage
from . import tombstones, upload_intents


async def finish_interrupted(pool: db.Connection, storage: Storage) -> None:
    await tombstones.finish_pending_removals(pool, storage)
    await upload_intents.finish_interrupted_uploads(pool, storage)


def finish_interrupted_blocking(dsn: str, storage: Storage) -> None:
    """For the parent of the workers, which has no pool of its own; applies the schema first."""

    async def run() -> None:
        pool = await db.create_pool(dsn, 1, 1)
        try:
            await finish_interrupted(pool, storage)
        finally:
            await pool.close()

    asyncio.run(run())
