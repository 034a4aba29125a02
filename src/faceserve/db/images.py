"""Tables face_session_images and face_session_image_aliases: one row per stored photo, and old paths."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .. import layout
from . import locks
from .pool import Connection


@dataclass(frozen=True)
class ImageRecord:
    id: int
    face_session_id: int
    file_path: str
    stored_name: str
    original_name: str
    content_type: str
    byte_size: int
    sha256: bytes
    width: int
    height: int
    created_at: datetime
    face_count: int = 0
    bytes_in: str = "file"  # where the bytes are: image_store.FILE or image_store.POSTGRES

    @property
    def identity(self) -> str:
        """The contract's identity: path below face_sessions/, e.g. '1/db/<stored name>'."""
        return layout.identity(self.face_session_id, self.stored_name)


_IMAGE_COLUMNS = (
    "i.id, i.face_session_id, i.file_path, i.stored_name, i.original_name, i.content_type, i.byte_size, "
    "i.sha256, i.width, i.height, i.created_at, i.bytes_in, "
    "(SELECT count(*) FROM faces f WHERE f.image_id = i.id) AS face_count"
)


def _image(row: asyncpg.Record | None) -> ImageRecord | None:
    return None if row is None else ImageRecord(**dict(row))



async def get_image(conn: Connection, image_id: int) -> ImageRecord | None:
    return _image(await conn.fetchrow(f"SELECT {_IMAGE_COLUMNS} FROM face_session_images i WHERE i.id = $1", image_id))


@dataclass(frozen=True, slots=True)
class ServedImage:
    """The columns serving a file needs, and no more (it is the hottest query)."""

    file_path: str
    content_type: str
    sha256: bytes
    created_at: datetime
    bytes_in: str
    byte_size: int
    face_session_id: int


async def get_served_image(conn: Connection, image_id: int) -> ServedImage | None:
    row = await conn.fetchrow(
        "SELECT file_path, content_type, sha256, created_at, bytes_in, byte_size, face_session_id "
        "FROM face_session_images WHERE id = $1",
        image_id,
    )
    return None if row is None else ServedImage(*row)


async def session_of_image(conn: Connection, image_id: int) -> int | None:
    return await conn.fetchval("SELECT face_session_id FROM face_session_images WHERE id = $1", image_id)


async def find_image_by_sha256(conn: Connection, session_id: int, sha256: bytes) -> ImageRecord | None:
    return _image(
        await conn.fetchrow(
            f"SELECT {_IMAGE_COLUMNS} FROM face_session_images i WHERE i.face_session_id = $1 AND i.sha256 = $2",
            session_id,
            sha256,
        )
    )


async def find_image_by_path(conn: Connection, file_path: str) -> ImageRecord | None:
    """The image stored at file_path, or the one an alias of that path leads to."""
    return _image(
        await conn.fetchrow(
            f"SELECT {_IMAGE_COLUMNS} FROM face_session_images i WHERE i.file_path = $1 "
            f"UNION ALL "
            f"SELECT {_IMAGE_COLUMNS} FROM face_session_image_aliases a "
            f"JOIN face_session_images i ON i.id = a.image_id WHERE a.file_path = $1 "
            f"LIMIT 1",
            file_path,
        )
    )


async def add_alias(conn: Connection, file_path: str, image_id: int) -> None:
    await conn.execute(
        "INSERT INTO face_session_image_aliases (file_path, image_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        file_path,
        image_id,
    )


async def list_images(conn: Connection, session_id: int, after: int, limit: int) -> list[ImageRecord]:
    rows = await conn.fetch(
        f"SELECT {_IMAGE_COLUMNS} FROM face_session_images i "
        "WHERE i.face_session_id = $1 AND i.id > $2 ORDER BY i.id LIMIT $3",
        session_id,
        after,
        limit,
    )
    return [ImageRecord(**dict(r)) for r in rows]


async def session_file_paths(conn: Connection, session_id: int) -> set[str]:
    """Every path that leads to an image of the session: stored files and their aliases."""
    rows = await conn.fetch(
        "SELECT i.file_path FROM face_session_images i WHERE i.face_session_id = $1 "
        "UNION ALL "
        "SELECT a.file_path FROM face_session_image_aliases a "
        "JOIN face_session_images i ON i.id = a.image_id WHERE i.face_session_id = $1",
        session_id,
    )
    return {r["file_path"] for r in rows}


async def lock_new_bytes(conn: Connection, sha256s: list[bytes]) -> None:
    """Inside a transaction, before its images of these bytes are inserted: a transaction inserting the same
    bytes waits until this one ends. Taken in one order (the bytes'), so two uploads holding the same photos
    in different orders take turns instead of each waiting, at the unique (session, sha256), for a row the
    other inserted (a deadlock)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, k) FROM ("
        "  SELECT DISTINCT ('x' || encode(substring(s FROM 1 FOR 4), 'hex'))::bit(32)::int AS k"
        "  FROM unnest($2::bytea[]) AS s ORDER BY k"
        ") AS keys",
        locks.NEW_BYTES,
        sha256s,
    )


async def insert_image(
    conn: asyncpg.Connection,
    *,
    session_id: int,
    file_path: str,
    stored_name: str,
    original_name: str,
    content_type: str,
    byte_size: int,
    sha256: bytes,
    width: int,
    height: int,
    bytes_in: str,
) -> ImageRecord | None:
    """None when the session already holds these bytes (a concurrent upload of the same file won)."""
    row = await conn.fetchrow(
        "INSERT INTO face_session_images (face_session_id, file_path, stored_name, original_name, content_type, "
        "                                 byte_size, sha256, width, height, bytes_in) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
        "ON CONFLICT (face_session_id, sha256) DO NOTHING "
        "RETURNING id, face_session_id, file_path, stored_name, original_name, content_type, byte_size, sha256, "
        "          width, height, created_at, bytes_in",
        session_id,
        file_path,
        stored_name,
        original_name,
        content_type,
        byte_size,
        sha256,
        width,
        height,
        bytes_in,
    )
    return None if row is None else ImageRecord(**dict(row))


async def delete_image_row(conn: Connection, image_id: int) -> tuple[ImageRecord, list[int]] | None:
    """Delete the row (faces cascade); returns what was deleted so the caller can drop file and index rows."""
    image = await get_image(conn, image_id)
    if image is None:
        return None
    face_ids = await conn.fetch("DELETE FROM faces WHERE image_id = $1 RETURNING id", image_id)
    deleted = await conn.fetchval("DELETE FROM face_session_images WHERE id = $1 RETURNING id", image_id)
    if deleted is None:
        return None
    return image, [r["id"] for r in face_ids]



async def images_kept_elsewhere(conn: Connection, session_id: int, bytes_in: str) -> list[ImageRecord]:
    """The session's images whose bytes are in another store than bytes_in (`faceserve storage migrate`)."""
    rows = await conn.fetch(
        f"SELECT {_IMAGE_COLUMNS} FROM face_session_images i "
        "WHERE i.face_session_id = $1 AND i.bytes_in <> $2 ORDER BY i.id",
        session_id,
        bytes_in,
    )
    return [ImageRecord(**dict(r)) for r in rows]


async def switch_store(conn: Connection, moved: dict[int, str], bytes_in: str) -> set[int]:
    """Say the bytes of these images (id -> the store they were copied from) are in bytes_in now; an image
    deleted, or moved by someone else, meanwhile is left alone. Returns the ids switched."""
    rows = await conn.fetch(
        "UPDATE face_session_images i SET bytes_in = $3 FROM unnest($1::bigint[], $2::text[]) AS m(id, was) "
        "WHERE i.id = m.id AND i.bytes_in = m.was RETURNING i.id",
        list(moved),
        list(moved.values()),
        bytes_in,
    )
    return {r["id"] for r in rows}
