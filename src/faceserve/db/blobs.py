"""Table image_blobs: image bytes kept in Postgres (FACESERVE_IMAGE_STORE=postgres)."""

from __future__ import annotations

import asyncpg

from .pool import Connection


async def insert_blob(conn: asyncpg.Connection, image_id: int, data: bytes) -> None:
    await conn.execute("INSERT INTO image_blobs (image_id, data) VALUES ($1, $2)", image_id, data)


async def blob_size(conn: Connection, image_id: int) -> int | None:
    """Length of the stored bytes, None when there are none. Reads the TOAST pointer, not the value."""
    return await conn.fetchval("SELECT octet_length(data) FROM image_blobs WHERE image_id = $1", image_id)


async def blob_range(conn: Connection, image_id: int, offset: int, count: int) -> bytes | None:
    """count bytes from offset (0-based); reads only the TOAST chunks that hold them (storage EXTERNAL)."""
    return await conn.fetchval(
        "SELECT substring(data FROM $2 FOR $3) FROM image_blobs WHERE image_id = $1", image_id, offset + 1, count
    )


async def blob(conn: Connection, image_id: int) -> bytes | None:
    return await conn.fetchval("SELECT data FROM image_blobs WHERE image_id = $1", image_id)



async def put_blob(conn: Connection, image_id: int, data: bytes) -> None:
    """Insert or replace: a move into Postgres that was cut short and runs again writes the same bytes."""
    await conn.execute(
        "INSERT INTO image_blobs (image_id, data) VALUES ($1, $2) ON CONFLICT (image_id) DO UPDATE SET data = $2",
        image_id,
        data,
    )


async def delete_blobs(conn: Connection, image_ids: list[int]) -> None:
    await conn.execute("DELETE FROM image_blobs WHERE image_id = ANY($1::bigint[])", image_ids)
