"""Tables live_searches and live_matches: a guest's standing search of one session (the probe's embedding,
until it expires) and the new photos recorded for it, each once, in the order of their ids (the stream's
event ids)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from . import locks
from .notifications import notify
from .pool import Connection

# Postgres allows payloads of 8000 bytes
_MAX_PAYLOAD = 7900
LIVE_CHANNEL = "faceserve_live"


@dataclass(frozen=True)
class LiveSearch:
    id: int
    face_session_id: int
    expires_at: datetime


@dataclass(frozen=True)
class LiveMatch:
    id: int  # the event id
    image_id: int
    face_id: int
    distance: float
    stored_name: str
    box: list[float]
    quality: str | None  # the face's mark (faces.quality), as search shows it


async def lock_live_searches(conn: Connection, session_id: int, alone: bool) -> None:
    """Inside a transaction, until it ends. An upload matching its faces holds it shared; making or deleting
    a live search holds it alone, so every upload that read the session's live searches before it has
    committed when it commits, and every later one sees the change. (The expiry sweep deletes only live
    searches expired for a while instead.)"""
    function = "pg_advisory_xact_lock" if alone else "pg_advisory_xact_lock_shared"
    await conn.execute(
        f"SELECT {function}($1, ($2::bigint % 2147483647)::int)", locks.LIVE_SEARCHES, session_id
    )


async def recent_faces(
    conn: Connection, session_id: int, seconds: float, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face ids, image ids, embeddings) of the session's photos recorded in the last `seconds`."""
    rows = await conn.fetch(
        "SELECT f.id, f.image_id, f.embedding FROM faces f JOIN face_session_images i ON i.id = f.image_id "
        "WHERE i.face_session_id = $1 AND i.created_at > now() - $2::interval AND f.embedding_dim = $3 "
        "ORDER BY f.id",
        session_id,
        timedelta(seconds=seconds),
        dim,
    )
    face_ids = np.array([r["id"] for r in rows], dtype=np.int64)
    image_ids = np.array([r["image_id"] for r in rows], dtype=np.int64)
    if not rows:
        return face_ids, image_ids, np.zeros((0, dim), dtype=np.float32)
    vectors = np.frombuffer(b"".join(r["embedding"] for r in rows), dtype="<f4").astype(np.float32)
    return face_ids, image_ids, vectors.reshape(len(rows), dim)


async def count_live_searches(conn: Connection, session_id: int) -> int:
    """The session's unexpired live searches."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM live_searches WHERE face_session_id = $1 AND expires_at > now()", session_id
        )
    )


async def insert_live_search(
    conn: Connection, session_id: int, embedding: np.ndarray, hours: float, created_by: str | None
) -> LiveSearch:
    row = await conn.fetchrow(
        "INSERT INTO live_searches (face_session_id, embedding, embedding_dim, expires_at, created_by) "
        "VALUES ($1, $2, $3, now() + $4::interval, $5) "
        "RETURNING id, face_session_id, expires_at",
        session_id,
        np.ascontiguousarray(embedding, dtype="<f4").tobytes(),
        int(embedding.shape[0]),
        timedelta(hours=hours),
        created_by,
    )
    return LiveSearch(**dict(row))


async def get_live_search(conn: Connection, session_id: int, live_id: int) -> LiveSearch | None:
    """The session's live search, unless it expired or was deleted."""
    row = await conn.fetchrow(
        "SELECT id, face_session_id, expires_at FROM live_searches "
        "WHERE id = $1 AND face_session_id = $2 AND expires_at > now()",
        live_id,
        session_id,
    )
    return None if row is None else LiveSearch(**dict(row))


async def delete_live_search(conn: Connection, session_id: int, live_id: int) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM live_searches WHERE id = $1 AND face_session_id = $2 AND expires_at > now() RETURNING id",
        live_id,
        session_id,
    )
    return deleted is not None


async def delete_live_searches(conn: Connection, session_id: int, live_ids: Sequence[int]) -> int:
    rows = await conn.fetch(
        "DELETE FROM live_searches WHERE face_session_id = $1 AND id = ANY($2::bigint[]) RETURNING id",
        session_id,
        list(live_ids),
    )
    return len(rows)


# an expired live search stays this long before the sweep deletes it: an upload that read it while it still
# counted (its transaction's clock is older than the sweep's) may still be recording a match for it
_SWEEP_GRACE = timedelta(minutes=5)


async def delete_expired_live_searches(conn: Connection) -> int:
    """The live searches expired for a while, and the live versions of sessions gone."""
    rows = await conn.fetch(
        "DELETE FROM live_searches WHERE expires_at <= statement_timestamp() - $1::interval RETURNING id",
        _SWEEP_GRACE,
    )
    await conn.execute(
        "DELETE FROM live_versions v WHERE NOT EXISTS (SELECT 1 FROM face_sessions s WHERE s.id = v.face_session_id)"
    )
    return len(rows)


async def live_probe_version(conn: Connection, session_id: int) -> tuple[int, float]:
    """(the session's live version, 0 where it never had a live search; the database's time as POSIX
    seconds). The version changes with every live search made or removed in the session (migration 0010's
    triggers); the time is this statement's, the clock the expiry sweep compares expires_at with."""
    row = await conn.fetchrow(
        "SELECT (SELECT version FROM live_versions WHERE face_session_id = $1) AS version, "
        "extract(epoch FROM statement_timestamp()) AS now",
        session_id,
    )
    return int(row["version"] or 0), float(row["now"])


async def live_probes(
    conn: Connection, session_id: int, dim: int, after: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids of every live search of the session, then the embeddings n x dim and expiry as POSIX seconds of
    those past id `after`), in id order; expired ones included (the caller skips those: a row expiring later
    must not change what a cached copy holds). A cached copy holding the ids up to `after` reads only the
    new rows."""
    rows = await conn.fetch(
        "SELECT id, CASE WHEN id > $3 THEN embedding END AS embedding, "
        "CASE WHEN id > $3 THEN extract(epoch FROM expires_at) END AS expires FROM live_searches "
        "WHERE face_session_id = $1 AND embedding_dim = $2 ORDER BY id",
        session_id,
        dim,
        after,
    )
    ids = np.array([r["id"] for r in rows], dtype=np.int64)
    new = [r for r in rows if r["id"] > after]
    expires = np.array([float(r["expires"]) for r in new], dtype=np.float64)
    if not new:
        return ids, np.zeros((0, dim), dtype=np.float32), expires
    vectors = np.frombuffer(b"".join(r["embedding"] for r in new), dtype="<f4").astype(np.float32)
    return ids, vectors.reshape(len(new), dim), expires


# ids named in one announcement at most (a bigint is up to 19 digits and a comma: 390 fit in a payload)
_MOST_NAMED = 390


async def insert_live_matches(
    conn: Connection,
    session_id: int,
    image_id: int,
    live_ids: Sequence[int],
    face_ids: Sequence[int],
    distances: Sequence[float],
) -> list[int]:
    """Record one image for each live search (a pair already recorded stays as it was) and announce the
    live searches that got a new match (as notify_live does, in the same statement: one round trip for an
    upload); answers them."""
    row = await conn.fetchrow(
        """
        WITH added AS (
            INSERT INTO live_matches (live_search_id, image_id, face_id, distance)
            SELECT m.live_id, $1, m.face_id, m.distance
            FROM unnest($2::bigint[], $3::bigint[], $4::real[]) AS m(live_id, face_id, distance)
            ON CONFLICT (live_search_id, image_id) DO NOTHING
            RETURNING live_search_id
        )
        SELECT array_agg(live_search_id) AS matched,
               pg_notify($5, $6 || ' ' || CASE WHEN count(*) > $7 THEN '*'
                                               ELSE string_agg(live_search_id::text, ',') END)
        FROM added
        HAVING count(*) > 0
        """,
        image_id,
        list(live_ids),
        list(face_ids),
        list(distances),
        LIVE_CHANNEL,
        str(int(session_id)),
        _MOST_NAMED,
    )
    return [] if row is None else list(row["matched"])


async def insert_matches_of_live_search(
    conn: Connection, live_id: int, image_ids: Sequence[int], face_ids: Sequence[int], distances: Sequence[float]
) -> int:
    """Record several images for one live search (pairs already recorded stay); answers how many are new."""
    rows = await conn.fetch(
        "INSERT INTO live_matches (live_search_id, image_id, face_id, distance) "
        "SELECT $1, m.image_id, m.face_id, m.distance "
        "FROM unnest($2::bigint[], $3::bigint[], $4::real[]) AS m(image_id, face_id, distance) "
        "ON CONFLICT (live_search_id, image_id) DO NOTHING RETURNING id",
        live_id,
        list(image_ids),
        list(face_ids),
        list(distances),
    )
    return len(rows)


async def live_matches_after(conn: Connection, live_id: int, after: int, limit: int) -> list[LiveMatch]:
    """The live search's matches past event id `after`, oldest first; only those whose image and face are
    still there (a delete takes its matches along too, this is the same check at reading)."""
    rows = await conn.fetch(
        "SELECT m.id, m.image_id, m.face_id, m.distance, i.stored_name, f.box, f.quality FROM live_matches m "
        "JOIN face_session_images i ON i.id = m.image_id "
        "JOIN faces f ON f.id = m.face_id "
        "WHERE m.live_search_id = $1 AND m.id > $2 ORDER BY m.id LIMIT $3",
        live_id,
        after,
        limit,
    )
    return [
        LiveMatch(
            r["id"], r["image_id"], r["face_id"], float(r["distance"]), r["stored_name"], list(r["box"]), r["quality"]
        )
        for r in rows
    ]


async def notify_live(conn: Connection, session_id: int, live_ids: Sequence[int]) -> None:
    """Wake the streams of these live searches on every process (at commit); too many to name: all of the
    session's."""
    payload = f"{int(session_id)} {','.join(str(int(i)) for i in live_ids)}"
    if len(payload) > _MAX_PAYLOAD:
        payload = f"{int(session_id)} *"
    await notify(conn, LIVE_CHANNEL, payload)
