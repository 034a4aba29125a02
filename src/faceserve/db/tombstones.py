"""Tables deleted_images and deleted_sessions: what a delete removed, recorded in its transaction, kept as
tombstones so `faceserve import` never brings it back, and marked once its files are gone
(core/tombstones.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .images import ImageRecord
from .pool import Connection
from .sweeps import OWNER_VALUES, owner_gone, refresh_liveness


@dataclass(frozen=True)
class PendingImageRemoval:
    image_id: int
    face_session_id: int
    file_path: str


async def insert_deleted_image(conn: Connection, image: ImageRecord) -> None:
    await conn.execute(
        "INSERT INTO deleted_images (image_id, face_session_id, file_path, sha256, owner_pid, owner_started) "
        f"VALUES ($1, $2, $3, $4, {OWNER_VALUES}) ON CONFLICT (image_id) DO NOTHING",
        image.id,
        image.face_session_id,
        image.file_path,
        image.sha256,
    )


async def insert_deleted_session(conn: Connection, session_id: int) -> None:
    await conn.execute(
        f"INSERT INTO deleted_sessions (id, owner_pid, owner_started) VALUES ($1, {OWNER_VALUES}) "
        "ON CONFLICT (id) DO NOTHING",
        session_id,
    )


async def path_taken(conn: Connection, file_path: str) -> bool:
    """A row holds the path (the same bytes uploaded anew), or an upload whose writer is alive is putting its
    file there (pending_uploads). Under the path's lock (sweeps.lock_path), in a statement after it."""
    # the backends' list as of now: a sweep's long transaction would judge by the one it read first, and
    # take an upload whose connection opened since for a dead one
    await refresh_liveness(conn)
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM face_session_images WHERE file_path = $1) "
            f"OR EXISTS (SELECT 1 FROM pending_uploads p WHERE p.file_path = $1 AND NOT {owner_gone('p')})",
            file_path,
        )
    )


async def mark_image_files_removed(conn: Connection, image_id: int) -> None:
    await conn.execute("UPDATE deleted_images SET files_removed = true WHERE image_id = $1", image_id)


async def mark_session_files_removed(conn: Connection, session_id: int) -> None:
    await conn.execute("UPDATE deleted_sessions SET files_removed = true WHERE id = $1", session_id)


async def abandoned_session_removals(conn: Connection) -> list[int]:
    """Sessions deleted by a writer now gone before it removed their folders."""
    await refresh_liveness(conn)
    rows = await conn.fetch(
        f"SELECT d.id FROM deleted_sessions d WHERE NOT d.files_removed AND {owner_gone('d')} ORDER BY d.id"
    )
    return [r["id"] for r in rows]


async def abandoned_image_removals(conn: Connection) -> list[PendingImageRemoval]:
    """Images deleted by a writer now gone before it removed their files."""
    await refresh_liveness(conn)
    rows = await conn.fetch(
        "SELECT d.image_id, d.face_session_id, d.file_path "
        f"FROM deleted_images d WHERE NOT d.files_removed AND {owner_gone('d')} ORDER BY d.image_id"
    )
    return [PendingImageRemoval(**dict(r)) for r in rows]


async def session_was_deleted(conn: Connection, session_id: int) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM deleted_sessions WHERE id = $1)", session_id)
    )


async def deleted_paths(conn: Connection, session_id: int) -> set[str]:
    """file_paths of the session's deleted images that no live image holds again."""
    rows = await conn.fetch(
        "SELECT d.file_path FROM deleted_images d WHERE d.face_session_id = $1 "
        "AND NOT EXISTS (SELECT 1 FROM face_session_images i WHERE i.file_path = d.file_path)",
        session_id,
    )
    return {r["file_path"] for r in rows}


async def content_was_deleted(conn: Connection, session_id: int, sha256: bytes) -> bool:
    """Whether these bytes were deleted from the session (and not uploaded again since)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM deleted_images WHERE face_session_id = $1 AND sha256 = $2) "
            "AND NOT EXISTS (SELECT 1 FROM face_session_images WHERE face_session_id = $1 AND sha256 = $2)",
            session_id,
            sha256,
        )
    )
