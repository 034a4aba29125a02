"""Table face_sessions: one row per event or album."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from . import locks
from .pool import Connection


@dataclass(frozen=True)
class FaceSession:
    id: int
    name: str
    created_at: datetime



async def create_session(conn: Connection, name: str, session_id: int | None = None) -> FaceSession:
    if session_id is None:
        row = await conn.fetchrow(
            "INSERT INTO face_sessions (name) VALUES ($1) RETURNING id, name, created_at", name
        )
    else:
        row = await conn.fetchrow(
            "INSERT INTO face_sessions (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
            session_id,
            name,
        )
        # keep the serial ahead of ids chosen by hand (import of an old tree)
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('face_sessions', 'id'), "
            "GREATEST((SELECT max(id) FROM face_sessions), 1))"
        )
    return FaceSession(**dict(row))


async def get_session(conn: Connection, session_id: int) -> FaceSession | None:
    row = await conn.fetchrow("SELECT id, name, created_at FROM face_sessions WHERE id = $1", session_id)
    return None if row is None else FaceSession(**dict(row))


async def list_sessions(conn: Connection) -> list[FaceSession]:
    rows = await conn.fetch("SELECT id, name, created_at FROM face_sessions ORDER BY id")
    return [FaceSession(**dict(r)) for r in rows]


async def session_counts(conn: Connection, session_id: int) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM face_session_images WHERE face_session_id = $1) AS images, "
        "       (SELECT count(*) FROM faces WHERE face_session_id = $1) AS faces",
        session_id,
    )
    return int(row["images"]), int(row["faces"])


async def rename_session(conn: Connection, session_id: int, name: str) -> FaceSession | None:
    row = await conn.fetchrow(
        "UPDATE face_sessions SET name = $2 WHERE id = $1 RETURNING id, name, created_at", session_id, name
    )
    return None if row is None else FaceSession(**dict(row))


async def delete_session(conn: Connection, session_id: int) -> bool:
    deleted = await conn.fetchval("DELETE FROM face_sessions WHERE id = $1 RETURNING id", session_id)
    return deleted is not None



async def set_expiry(conn: Connection, session_id: int, days: int) -> None:
    await conn.execute(
        "UPDATE face_sessions SET expires_at = now() + $2::interval WHERE id = $1", session_id, timedelta(days=days)
    )


async def try_lock_session_expiry(conn: Connection) -> bool:
    """Whether this transaction may delete expired sessions (another process holds the turn when not)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", locks.SESSION_EXPIRY))


async def expired_sessions(conn: Connection) -> list[int]:
    rows = await conn.fetch("SELECT id FROM face_sessions WHERE expires_at <= now() ORDER BY id")
    return [r["id"] for r in rows]
