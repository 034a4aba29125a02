"""The connection pool, the embedded Postgres used when no DATABASE_URL is given, and a liveness query."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import TypeAlias

import asyncpg

from . import migrations
from .recovery import EmbeddedPostgres

log = logging.getLogger(__name__)

# a query function takes either: one connection (inside a transaction) or the pool (one round trip)
Connection: TypeAlias = asyncpg.Connection | asyncpg.Pool


@contextmanager
def embedded_postgres_blocking(pgdata: Path) -> Iterator[str]:
    """Start (or reuse) a Postgres whose data lives in pgdata; stop it on exit. Yields its URI."""
    postgres = EmbeddedPostgres(pgdata)  # adopts a server left running by a killed run
    try:
        yield postgres.uri
    finally:
        postgres.stop()


@asynccontextmanager
async def embedded_postgres(pgdata: Path) -> AsyncIterator[str]:
    """embedded_postgres_blocking, with start and stop off the event loop."""
    manager = embedded_postgres_blocking(pgdata)
    uri = await asyncio.to_thread(manager.__enter__)
    try:
        yield uri
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


@asynccontextmanager
async def database_uri(external: str | None, pgdata: Path) -> AsyncIterator[str]:
    """The external database's URI, or the embedded server's on pgdata (started if need be, stopped after
    unless another process of this machine still uses it)."""
    if external is not None:
        yield external
        return
    async with embedded_postgres(pgdata) as uri:
        yield uri


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset on release. asyncpg always rolls back an open transaction and drops listeners first; its
    default then runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`, a round trip
    after every query of every request. Nothing here leaves session state behind: no SET, no LISTEN or WITH
    HOLD cursors on pool connections (db/notifications.py listens on its own connection), and the one
    session-level advisory lock (a session's full clustering, db/people.py) is released by its holder before
    its connection goes back."""


async def create_pool(dsn: str, min_size: int, max_size: int) -> asyncpg.Pool:
    """The pool, once the schema is at this release's version (missing migrations applied first)."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=_keep_session)
    try:
        async with pool.acquire() as conn:
            await migrations.upgrade(conn)
    except BaseException:
        await pool.close()
        raise
    return pool


async def ping(conn: Connection) -> bool:
    return await conn.fetchval("SELECT 1") == 1


async def server_version_and_time(conn: Connection) -> tuple[str, datetime]:
    """The server's version and its clock (`faceserve doctor` compares that with this host's)."""
    version, now = await conn.fetchrow("SELECT current_setting('server_version'), now()")
    return version, now
