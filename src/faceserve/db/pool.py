"""The connection pool (db/location.py says where the database is, db/migrations.py brings its schema up to
date before the pool is used), and a liveness query."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from ..config import Settings

log = logging.getLogger(__name__)

# a query function takes either: one connection (inside a transaction) or the pool (one round trip)
Connection: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset on release. asyncpg always rolls back an open transaction and drops listeners first; its
    default then runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`, a round trip
    after every query of every request. Nothing here leaves session state behind: no SET, no LISTEN or WITH
    HOLD cursors on pool connections (db/notifications.py listens on its own connection), and the one
    session-level advisory lock (a session's full clustering, db/people.py) is released by its holder before
    its connection goes back, or that connection is discarded instead (core/people.py recluster)."""


class BoundedPool(asyncpg.Pool):
    """asyncpg's pool, whose acquire (its own fetch and execute's too) waits at most acquire_timeout_s unless
    told otherwise: with the postmaster stopped, opening a connection waited for ever (asyncpg's own limit
    is a minute), and so did every request that needed one. The TimeoutError is answered 503 `unavailable`
    (recovery.is_database_unavailable)."""

    def __init__(self, dsn: str, *, acquire_timeout_s: float, **pool_options: Any) -> None:
        super().__init__(dsn, **pool_options)
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)


async def create_pool(
    dsn: str,
    min_size: int,
    max_size: int,
    acquire_timeout_s: float = Settings.db_acquire_timeout_s,
    command_timeout_s: float = Settings.db_command_timeout_s,
) -> asyncpg.Pool:
    """The pool, its connections opened. Every wait on the database is bounded: for a connection (opening
    one included) by acquire_timeout_s, for the answer to a statement by command_timeout_s (asyncpg's
    command_timeout; past it the statement is cancelled). The schema is not looked at: migrate (db/migrations.py)
    before the first query."""
    pool = BoundedPool(
        dsn,
        acquire_timeout_s=acquire_timeout_s,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,  # asyncpg's defaults, spelled out as create_pool does
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        reset=_keep_session,
        timeout=acquire_timeout_s,  # opening a connection
        command_timeout=command_timeout_s,
    )
    await pool
    return pool


def discard(conn: asyncpg.Connection) -> None:
    """Close a held connection whose state cannot be trusted (a COPY cut short, a session lock not
    released): the pool opens a fresh one in its place. Nothing to do when it is closed already."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:  # already closed, and taken back by the pool
        pass


async def ping(conn: Connection) -> bool:
    return await conn.fetchval("SELECT 1") == 1


async def server_version_and_time(conn: Connection) -> tuple[str, datetime]:
    """The server's version and its clock (`faceserve doctor` compares that with this host's)."""
    version, now = await conn.fetchrow("SELECT current_setting('server_version'), now()")
    return version, now
