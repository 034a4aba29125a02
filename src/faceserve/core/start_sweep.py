"""What a start finishes before serving, after a crash of a run before it: the files of committed deletes
(tombstones.py) and of uploads that never committed (upload_intents.py). Run once per start by the process
that owns the start (the single process, or the parent of the workers), like the sweep of .part files.

Safe with several writers on one storage (a fleet: nodes on one Postgres and one shared folder, README "A
fleet behind nginx"): a sweep touches only records whose writer's database backend is gone (db/sweeps.py),
which Postgres knows for certain, so an upload or a delete another node has in flight is never touched; and
sweeps take turns under one advisory lock held by their transaction, so two nodes starting together do not
remove the same files at once nor race each other's claims."""

from __future__ import annotations

import asyncio

import asyncpg

from .. import db
from ..config import Settings
from ..media.files import Storage
from ..media.stores import ImageStores, open_image_stores
from . import tombstones, upload_intents


async def finish_interrupted(pool: asyncpg.Pool, stores: ImageStores) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await db.lock_sweeps(conn)
        await tombstones.finish_pending_removals(conn, stores)
        await upload_intents.finish_interrupted_uploads(conn, stores)


def finish_interrupted_blocking(settings: Settings, dsn: str) -> None:
    """For the parent of the workers, which has no pool of its own, on the database at dsn
    (db.database_uri_blocking); applies the schema first."""

    async def run() -> None:
        pool = await db.create_pool(dsn, 1, 1)
        try:
            await db.migrate(pool, settings.db_bulk_timeout_s)
            async with open_image_stores(settings, Storage(settings.storage), pool) as stores:
                await finish_interrupted(pool, stores)
        finally:
            await pool.close()

    asyncio.run(run())
