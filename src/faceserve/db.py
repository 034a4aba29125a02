"""Postgres: the pool (embedded server when no DATABASE_URL), the schema, and one small function per query."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import asyncpg
import numpy as np

log = logging.getLogger(__name__)

Connection = asyncpg.Connection | asyncpg.Pool


def schema_sql() -> str:
    return resources.files("faceserve").joinpath("schema.sql").read_text(encoding="utf-8")


@contextmanager
def embedded_postgres_blocking(pgdata: Path) -> Iterator[str]:
    """Start (or reuse) a Postgres whose data lives in pgdata; stop it on exit. Yields its URI."""
    from .db_recovery import EmbeddedPostgres

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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset on release. asyncpg always rolls back an open transaction and drops listeners first; its
    default then runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`, a round trip
    after every query of every request. Nothing here changes session state (no SET, no session advisory
    locks, no LISTEN or WITH HOLD cursors on pool connections: index_sync listens on its own connection)."""


async def create_pool(dsn: str, min_size: int, max_size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=_keep_session)
    # serialise concurrent starts (several workers, tests) applying the same DDL
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7312001)")
        await conn.execute(schema_sql())
    return pool


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class FaceSession:
    id: int
    name: str
    created_at: datetime


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
        return f"{self.face_session_id}/db/{self.stored_name}"


_IMAGE_COLUMNS = (
    "i.id, i.face_session_id, i.file_path, i.stored_name, i.original_name, i.content_type, i.byte_size, "
    "i.sha256, i.width, i.height, i.created_at, i.bytes_in, "
    "(SELECT count(*) FROM faces f WHERE f.image_id = i.id) AS face_count"
)


def _image(row: asyncpg.Record | None) -> ImageRecord | None:
    return None if row is None else ImageRecord(**dict(row))


# ---------------------------------------------------------------- sessions


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


async def delete_session(conn: Connection, session_id: int) -> bool:
    deleted = await conn.fetchval("DELETE FROM face_sessions WHERE id = $1 RETURNING id", session_id)
    return deleted is not None


# ---------------------------------------------------------------- images


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


async def delete_image(conn: Connection, image_id: int) -> tuple[ImageRecord, list[int]] | None:
    """Delete the row (faces cascade); returns what was deleted so the caller can drop file and index rows."""
    image = await get_image(conn, image_id)
    if image is None:
        return None
    face_ids = await conn.fetch("DELETE FROM faces WHERE image_id = $1 RETURNING id", image_id)
    deleted = await conn.fetchval("DELETE FROM face_session_images WHERE id = $1 RETURNING id", image_id)
    if deleted is None:
        return None
    return image, [r["id"] for r in face_ids]


# ---------------------------------------------------------------- image bytes kept in Postgres


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


# ---------------------------------------------------------------- faces


@dataclass(frozen=True)
class NewFace:
    box: Sequence[float]
    landmarks: Sequence[float]
    det_score: float
    embedding: np.ndarray


async def insert_faces(conn: asyncpg.Connection, image_id: int, session_id: int, faces: Sequence[NewFace]) -> list[int]:
    """All faces of an image in one round trip; returns their ids in the given order."""
    if not faces:
        return []
    rows = await conn.fetch(
        "INSERT INTO faces (image_id, face_session_id, box, landmarks, det_score, embedding, embedding_dim) "
        "SELECT $1, $2, f.box::real[], f.landmarks::real[], f.det_score, f.embedding, f.dim "
        "FROM unnest($3::text[], $4::text[], $5::real[], $6::bytea[], $7::int[]) "
        "  WITH ORDINALITY AS f(box, landmarks, det_score, embedding, dim, ord) "
        "ORDER BY f.ord RETURNING id",
        image_id,
        session_id,
        [_pg_array(f.box) for f in faces],
        [_pg_array(f.landmarks) for f in faces],
        [float(f.det_score) for f in faces],
        [np.ascontiguousarray(f.embedding, dtype="<f4").tobytes() for f in faces],
        [int(f.embedding.shape[0]) for f in faces],
    )
    return [r["id"] for r in rows]


def _pg_array(values: Sequence[float]) -> str:
    # unnest() cannot take a 2-D array of rows of different arrays, so each small array travels as text
    return "{" + ",".join(repr(float(v)) for v in values) + "}"


_COPY_HEADER = 19  # "PGCOPY\n\377\r\n\0", flags, header extension length
_COPY_TRAILER = 2


async def session_embeddings(conn: Connection, session_id: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, embeddings float32 n x dim) of a session's faces, for building its index.

    Binary COPY: rows arrive as fixed-size records, parsed by numpy in one pass, not row by row."""
    buffer = io.BytesIO()
    await conn.copy_from_query(
        "SELECT id, embedding FROM faces WHERE face_session_id = $1 AND embedding_dim = $2 ORDER BY id",
        session_id,
        dim,
        output=buffer,
        format="binary",
    )
    # a million faces is 2 GB to copy out: off the event loop
    return await asyncio.to_thread(_parse_binary_copy, buffer, dim)


def _parse_binary_copy(buffer: io.BytesIO, dim: int) -> tuple[np.ndarray, np.ndarray]:
    record = np.dtype(
        [("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("embedding_len", ">i4"), ("embedding", "<f4", (dim,))]
    )
    data = buffer.getbuffer()
    count, rest = divmod(len(data) - _COPY_HEADER - _COPY_TRAILER, record.itemsize)
    if rest or count < 0:
        raise RuntimeError(f"unexpected binary COPY length {len(data)} for records of {record.itemsize} bytes")
    rows = np.frombuffer(data, dtype=record, count=count, offset=_COPY_HEADER)
    if count and not ((rows["fields"] == 2).all() and (rows["embedding_len"] == 4 * dim).all()):
        raise RuntimeError("unexpected binary COPY record layout")
    return rows["id"].astype(np.int64), np.ascontiguousarray(rows["embedding"], dtype=np.float32)


async def session_face_stats(conn: Connection, session_id: int, dim: int) -> tuple[int, int]:
    """(count, max id) of a session's faces: enough to tell whether a saved index is stale (ids only grow)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(max(id), 0) AS max_id FROM faces "
        "WHERE face_session_id = $1 AND embedding_dim = $2",
        session_id,
        dim,
    )
    return int(row["n"]), int(row["max_id"])


async def embeddings_by_ids(
    conn: Connection, session_id: int, face_ids: Sequence[int], dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, embeddings) of the given faces that still exist, for following another process's adds."""
    rows = await conn.fetch(
        "SELECT id, embedding FROM faces WHERE face_session_id = $1 AND id = ANY($2::bigint[]) "
        "AND embedding_dim = $3 ORDER BY id",
        session_id,
        [int(i) for i in face_ids],
        dim,
    )
    ids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
    matrix = np.frombuffer(b"".join(r["embedding"] for r in rows), dtype="<f4").astype(np.float32, copy=False)
    return ids, matrix.reshape(len(rows), dim)


@dataclass(frozen=True)
class FaceHit:
    face_id: int
    image_id: int
    stored_name: str
    box: list[float]


async def faces_with_images(conn: Connection, session_id: int, face_ids: Sequence[int]) -> dict[int, FaceHit]:
    """Face id -> its image, for faces still in the database (a deleted image's faces never come back)."""
    rows = await conn.fetch(
        "SELECT f.id, f.image_id, i.stored_name, f.box FROM faces f "
        "JOIN face_session_images i ON i.id = f.image_id "
        "WHERE f.face_session_id = $1 AND f.id = ANY($2::bigint[])",
        session_id,
        list(face_ids),
    )
    return {r["id"]: FaceHit(r["id"], r["image_id"], r["stored_name"], list(r["box"])) for r in rows}


@dataclass(frozen=True)
class FaceRecord:
    id: int
    image_id: int
    face_session_id: int
    box: list[float]
    landmarks: list[float]
    det_score: float


async def get_face(conn: Connection, face_id: int) -> FaceRecord | None:
    row = await conn.fetchrow(
        "SELECT id, image_id, face_session_id, box, landmarks, det_score FROM faces WHERE id = $1", face_id
    )
    return None if row is None else FaceRecord(**{**dict(row), "box": list(row["box"]), "landmarks": list(row["landmarks"])})


async def ping(conn: Connection) -> bool:
    return await conn.fetchval("SELECT 1") == 1
