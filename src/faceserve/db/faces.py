"""Table faces: one row per detected face, with its embedding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np

from .binary_copy import stream_records
from .pool import Connection


@dataclass(frozen=True)
class NewFace:
    box: Sequence[float]
    landmarks: Sequence[float]
    det_score: float
    embedding: np.ndarray
    # vision/quality.py's verdict at ingest: ok, too_small, blurred, turned (None: not measured)
    quality: str | None = None


async def insert_faces(conn: asyncpg.Connection, image_id: int, session_id: int, faces: Sequence[NewFace]) -> list[int]:
    """All faces of an image in one round trip; returns their ids in the given order."""
    if not faces:
        return []
    rows = await conn.fetch(
        "INSERT INTO faces (image_id, face_session_id, box, landmarks, det_score, embedding, embedding_dim, quality) "
        "SELECT $1, $2, f.box::real[], f.landmarks::real[], f.det_score, f.embedding, f.dim, f.quality "
        "FROM unnest($3::text[], $4::text[], $5::real[], $6::bytea[], $7::int[], $8::text[]) "
        "  WITH ORDINALITY AS f(box, landmarks, det_score, embedding, dim, quality, ord) "
        "ORDER BY f.ord RETURNING id",
        image_id,
        session_id,
        [_pg_array(f.box) for f in faces],
        [_pg_array(f.landmarks) for f in faces],
        [float(f.det_score) for f in faces],
        [np.ascontiguousarray(f.embedding, dtype="<f4").tobytes() for f in faces],
        [int(f.embedding.shape[0]) for f in faces],
        [f.quality for f in faces],
    )
    return [r["id"] for r in rows]


def _pg_array(values: Sequence[float]) -> str:
    # unnest() cannot take a 2-D array of rows of different arrays, so each small array travels as text
    return "{" + ",".join(repr(float(v)) for v in values) + "}"


async def session_embeddings(
    conn: Connection, session_id: int, dim: int, expected: int | None = None, timeout: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, embeddings float32 n x dim) of a session's faces, for building its index or clustering.
    `expected`: the face count the caller has just read (session_face_stats), to size the arrays; counted
    here when not given.

    Binary COPY: rows arrive as fixed-size records, parsed by numpy a batch at a time straight into the
    arrays returned, off the event loop, never holding the COPY's bytes and the array at once."""
    if expected is None:
        expected, _ = await session_face_stats(conn, session_id, dim)
    embeddings = _Embeddings(expected, dim)
    await stream_records(
        conn,
        [("id", ">i8", 0), ("embedding", f"({dim},)<f4", 0)],
        embeddings.add,
        "SELECT id, embedding FROM faces WHERE face_session_id = $1 AND embedding_dim = $2 ORDER BY id",
        session_id,
        dim,
        timeout=timeout,
    )
    return embeddings.ids[: embeddings.filled], embeddings.vectors[: embeddings.filled]


class _Embeddings:
    """Arrays filled as COPY batches arrive (on a worker thread), sized by a count taken just before (grown if
    faces were added in between, which a caller outside a transaction may see)."""

    def __init__(self, capacity: int, dim: int) -> None:
        self.ids = np.empty(capacity, dtype=np.int64)
        self.vectors = np.empty((capacity, dim), dtype=np.float32)
        self.filled = 0

    def add(self, rows: np.ndarray) -> None:
        end = self.filled + len(rows)
        if end > len(self.ids):
            grown = max(end, 2 * len(self.ids))
            self.ids = np.concatenate([self.ids[: self.filled], np.empty(grown - self.filled, dtype=np.int64)])
            self.vectors = np.concatenate(
                [self.vectors[: self.filled], np.empty((grown - self.filled, self.vectors.shape[1]), np.float32)]
            )
        self.ids[self.filled : end] = rows["id"]
        self.vectors[self.filled : end] = rows["embedding"]
        self.filled = end


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
    conn: Connection, session_id: int, face_ids: Sequence[int] | np.ndarray, dim: int
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
    quality: str | None


async def faces_with_images(conn: Connection, session_id: int, face_ids: Sequence[int]) -> dict[int, FaceHit]:
    """Face id -> its image, for faces still in the database (a deleted image's faces never come back)."""
    rows = await conn.fetch(
        "SELECT f.id, f.image_id, i.stored_name, f.box, f.quality FROM faces f "
        "JOIN face_session_images i ON i.id = f.image_id "
        "WHERE f.face_session_id = $1 AND f.id = ANY($2::bigint[])",
        session_id,
        list(face_ids),
    )
    return {r["id"]: FaceHit(r["id"], r["image_id"], r["stored_name"], list(r["box"]), r["quality"]) for r in rows}


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


async def delete_faces(conn: Connection, session_id: int, face_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Delete faces of a session (their photos stay); returns (image id, face id) of each one deleted."""
    rows = await conn.fetch(
        "DELETE FROM faces WHERE face_session_id = $1 AND id = ANY($2::bigint[]) RETURNING id, image_id",
        session_id,
        list(face_ids),
    )
    return [(r["image_id"], r["id"]) for r in rows]
