"""Who wrote a crash-safety record (pending_uploads, deleted_images, deleted_sessions), whether that writer
is still alive, and the lock under which one process at a time sweeps what dead writers left.

A record's owner is the database backend of the connection that wrote it. Postgres knows which backends are
alive (pg_stat_activity), and a backend outlives nothing of its client: a node killed with -9 has its
sockets closed by the kernel and its backends end, rolling back what it had not committed. So "the owner's
backend is gone" proves the work was abandoned, with no heartbeat to keep and no clock to trust.
"""

from __future__ import annotations

from . import locks
from .pool import Connection

# start-up sweeps take turns (locks.START_SWEEP), across the processes of every node of a fleet. One stored
# file's path (locks.STORED_PATH, hashtext(path)): an upload recording its intent to put a file there and a
# removal of the file there take turns (core/tombstones.py remove_file_unless_taken); a hash collision only
# makes two paths wait for each other

# the values of (owner_pid, owner_started) for a row written by this connection: the function for one pid, as
# the pg_stat_activity view would build every backend's row (with its role and database) on every upload and delete
OWNER_VALUES = "pg_backend_pid(), (SELECT backend_start FROM pg_stat_get_activity(pg_backend_pid()))"


def owner_gone(alias: str) -> str:
    """SQL: the row's writer has no live backend. A live backend with that pid whose backend_start is hidden
    (another role, without pg_read_all_stats) counts as the owner: a sweep may come late, never early."""
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = {alias}.owner_pid "
        f"AND (a.backend_start = {alias}.owner_started OR a.backend_start IS NULL "
        f"OR {alias}.owner_started IS NULL))"
    )


async def refresh_liveness(conn: Connection) -> None:
    """Before each query that asks owner_gone: Postgres reads the list of backends once per transaction and
    keeps it, so a sweep's long transaction would take backends started since (new uploads) for dead ones."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")


async def lock_sweeps(conn: Connection) -> None:
    """Inside the sweep's transaction: waits while another process sweeps, released at its commit."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.START_SWEEP)


def path_lock(param: str) -> str:
    """SQL: wait for and take the lock of the stored path in param, until the transaction ends."""
    return f"pg_advisory_xact_lock({locks.STORED_PATH}, hashtext({param}))"


async def lock_path(conn: Connection, file_path: str) -> None:
    """Inside a transaction: waits while an upload records its intent for this path or a removal of the file
    there is deciding; released at the commit. Check the path after this, in a statement of its own: a
    statement sees what was committed when it began, and this one may have waited."""
    await conn.execute(f"SELECT {path_lock('$1')}", file_path)
