"""The start-up sweep with other writers about: it takes only what a writer whose database backend is gone
left behind, and sweeps take turns. (tests/test_fleet.py does the same with real nodes, one paused at its
commit and one killed -9; here the writers are plain connections, opened and closed by the test.)"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
from helpers import backend_gone

from faceserve import db, layout
from faceserve.core import start_sweep, tombstones, upload_intents


async def _writer(dsn: str) -> tuple[asyncpg.Connection, int]:
    conn = await asyncpg.connect(dsn)
    return conn, await conn.fetchval("SELECT pg_backend_pid()")


async def test_a_sweep_takes_only_what_writers_now_gone_left(
    client, services, photos: dict[str, Path]
) -> None:
    dsn = services.settings.database_url
    session_id = (await (await client.post("/api/face/sessions", json={"name": "a"})).json())["data"]["id"]
    storage = services.storage
    paths = {name: layout.file_path(session_id, f"0123456789abcdef_{name}.jpg") for name in ("live", "dead")}
    for path in paths.values():  # files put in place by uploads that have not committed
        storage.absolute(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos["t1"], storage.absolute(path))
    live, live_pid = await _writer(dsn)
    dead, dead_pid = await _writer(dsn)
    await upload_intents.record(live, paths["live"])
    await upload_intents.record(dead, paths["dead"])
    # each row names its writer's backend by pid and start time: a newer backend reusing the pid is another
    owners = await services.pool.fetch("SELECT owner_pid, owner_started FROM pending_uploads ORDER BY owner_pid")
    backends = await services.pool.fetch(
        "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = ANY($1::int[]) ORDER BY pid", [live_pid, dead_pid]
    )
    assert [tuple(r) for r in owners] == [tuple(r) for r in backends] and len(owners) == 2
    # two deletes committed, their folders not yet removed: one by the live writer, one by the dead one
    live_session = (await (await client.post("/api/face/sessions", json={"name": "b"})).json())["data"]["id"]
    dead_session = (await (await client.post("/api/face/sessions", json={"name": "c"})).json())["data"]["id"]
    for writer, gone in ((live, live_session), (dead, dead_session)):
        storage.layout.session_dir(gone).mkdir(parents=True, exist_ok=True)
        async with writer.transaction():
            assert await db.delete_session(writer, gone)
            await tombstones.record_session_deleted(writer, gone)
    await dead.close()
    await backend_gone(services.pool, dead_pid)
    try:
        await start_sweep.finish_interrupted(services.pool, services.stores)

        assert storage.absolute(paths["live"]).exists() and not storage.absolute(paths["dead"]).exists()
        assert await services.pool.fetchval("SELECT array_agg(file_path) FROM pending_uploads") == [
            paths["live"]
        ]
        assert storage.layout.session_dir(live_session).exists()
        assert not storage.layout.session_dir(dead_session).exists()
        assert await services.pool.fetchval(
            "SELECT array_agg(id ORDER BY id) FROM deleted_sessions WHERE NOT files_removed"
        ) == [live_session]
    finally:
        await live.close()


async def test_sweeps_take_turns(services) -> None:
    """While one process sweeps (holds the lock in its transaction), another process's sweep waits."""
    async with services.pool.acquire() as conn, conn.transaction():
        await db.lock_sweeps(conn)
        second = asyncio.create_task(start_sweep.finish_interrupted(services.pool, services.stores))
        await asyncio.sleep(0.5)
        assert not second.done()
    await asyncio.wait_for(second, 10)
