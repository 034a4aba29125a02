"""Table pending_uploads: the path an upload is about to fill, committed before its file is put in place and
deleted by the transaction that records its row (core/upload_intents.py)."""

from __future__ import annotations

from .pool import Connection
from .sweeps import OWNER_VALUES, owner_gone, path_lock, refresh_liveness


async def insert_upload_intent(conn: Connection, file_path: str) -> None:
    """Owned by this connection's backend; a leftover of a dead upload of the same path changes hands. Not
    inside a transaction of the caller's: the path's lock is released when this commits."""
    # under the path's lock, taken in this statement's own transaction (one round trip): a removal of the file
    # there that is deciding finishes first, and one that comes after sees this intent
    await conn.execute(
        f"INSERT INTO pending_uploads (file_path, owner_pid, owner_started) SELECT $1::text, {OWNER_VALUES} "
        f"FROM (SELECT {path_lock('$1')}) AS turn "
        "ON CONFLICT (file_path) DO UPDATE "
        "SET owner_pid = excluded.owner_pid, owner_started = excluded.owner_started, created_at = now()",
        file_path,
    )


async def delete_upload_intent(conn: Connection, file_path: str) -> None:
    await conn.execute("DELETE FROM pending_uploads WHERE file_path = $1", file_path)


async def abandoned_upload_paths(conn: Connection) -> list[str]:
    await refresh_liveness(conn)
    rows = await conn.fetch(
        f"SELECT p.file_path FROM pending_uploads p WHERE {owner_gone('p')} ORDER BY p.file_path"
    )
    return [r["file_path"] for r in rows]


async def claim_abandoned_upload(conn: Connection, file_path: str) -> bool | None:
    """Inside a transaction: delete the intent if its owner is still gone, and say whether its file is an
    orphan (no row holds the path: True) or the row committed (False); None if it is no longer abandoned.
    The deleted row stays locked until the commit, so an upload of the same path waits for the sweep."""
    await refresh_liveness(conn)
    row = await conn.fetchrow(
        f"DELETE FROM pending_uploads p WHERE p.file_path = $1 AND {owner_gone('p')} "
        "RETURNING NOT EXISTS (SELECT 1 FROM face_session_images i WHERE i.file_path = p.file_path) AS orphan",
        file_path,
    )
    return None if row is None else bool(row["orphan"])
