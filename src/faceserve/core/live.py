"""Live searches: a guest's probe face kept (its embedding, never the selfie) for LIVE_SEARCH_HOURS, so that
new photos of them reach their page as the photographers upload (core/live_hub.py matches and wakes)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import numpy as np

from .. import db, layout
from ..errors import LiveSearchNotFound, NoFaceFound, SessionNotFound, TooManyLiveSearches
from . import matching
from .live_hub import nearest_within
from .services import Services

# matches read from Postgres per round of a stream
STREAM_BATCH = 100


@dataclass(frozen=True)
class Created:
    live: db.LiveSearch
    matches: list[matching.Match]


async def create_from_selfie(
    services: Services, session_id: int, selfie: bytes, threshold: float, limit: int, key_prefix: str | None
) -> Created:
    """create() for the selfie's largest face, embedded here (a search's work: its caller admits it)."""
    face = await matching.probe_face(services.models, services.settings, selfie)
    if face is None:
        raise NoFaceFound("no face was found in the selfie")
    return await create(services, session_id, face.embedding, threshold, limit, key_prefix)


async def create(
    services: Services,
    session_id: int,
    embedding: np.ndarray,
    threshold: float,
    limit: int,
    key_prefix: str | None,
) -> Created:
    """Keep a probe face's embedding (a selfie's, or a search's live token's) as a live search, then answer
    the session's matches so far: the new ones from this commit on come through its stream."""
    try:
        async with services.pool.acquire() as conn, conn.transaction():
            # uploads of the session that read its live searches before this one have committed when it
            # commits; those after it match it
            await db.lock_live_searches(conn, session_id, alone=True)
            most = services.settings.live_searches_per_session
            if await db.count_live_searches(conn, session_id) >= most:
                raise TooManyLiveSearches(
                    f"face session {session_id} holds {most} live searches already (LIVE_SEARCHES_PER_SESSION): "
                    "try again when some have ended"
                )
            live = await db.insert_live_search(
                conn, session_id, embedding, services.settings.live_search_hours, key_prefix
            )
    except asyncpg.ForeignKeyViolationError as exc:
        raise SessionNotFound(f"face session {session_id} does not exist") from exc
    matches = await matching.embedding_matches(services, session_id, embedding, threshold, limit)
    await _catch_up(services, live, embedding, threshold, {m.image_id for m in matches})
    return Created(live, matches)


# photos recorded this recently may not be in this process's index yet (its own add comes after the commit,
# another node's through NOTIFY): compared exactly at a live search's making, and sent through its stream
_RECENT_S = 60.0


async def _catch_up(
    services: Services, live: db.LiveSearch, embedding: np.ndarray, threshold: float, answered: set[int]
) -> None:
    session_id = live.face_session_id
    async with services.pool.acquire() as conn, conn.transaction():
        face_ids, image_ids, vectors = await db.recent_faces(
            conn, session_id, _RECENT_S, services.models.engine.embedding_dim
        )
        if not len(face_ids):
            return
        distances = 1.0 - vectors @ embedding.astype(np.float32)
        best: dict[int, tuple[int, float]] = {}  # image -> (face, distance), its nearest face within threshold
        for face_id, image_id, distance in zip(face_ids.tolist(), image_ids.tolist(), distances.tolist()):
            nearer = image_id not in best or distance < best[image_id][1]
            if distance <= threshold and image_id not in answered and nearer:
                best[image_id] = (face_id, max(0.0, distance))
        if not best:
            return
        images = sorted(best, key=lambda image: best[image][1])
        added = await db.insert_matches_of_live_search(
            conn, live.id, images, [best[i][0] for i in images], [best[i][1] for i in images]
        )
        if added:
            await db.notify_live(conn, session_id, [live.id])


async def require(services: Services, session_id: int, live_id: int) -> db.LiveSearch:
    live = await db.get_live_search(services.pool, session_id, live_id)
    if live is None:
        raise LiveSearchNotFound(f"live search {live_id} of session {session_id} does not exist or has expired")
    return live


async def delete(services: Services, session_id: int, live_id: int) -> None:
    async with services.pool.acquire() as conn, conn.transaction():
        # an upload of the session that read it as live commits its match first (else the match's row would
        # name a live search gone meanwhile and fail the upload)
        await db.lock_live_searches(conn, session_id, alone=True)
        if not await db.delete_live_search(conn, session_id, live_id):
            raise LiveSearchNotFound(f"live search {live_id} of session {session_id} does not exist or has expired")
        await db.notify_live(conn, session_id, [live_id])  # its streams, on every process, end


async def new_matches(
    services: Services, session_id: int, live_id: int, after: int
) -> tuple[bool, list[tuple[int, matching.Match]]]:
    """(whether the live search is still there, its matches past event id `after` as (event id, match))."""
    async with services.pool.acquire() as conn:
        if await db.get_live_search(conn, session_id, live_id) is None:
            return False, []
        rows = await db.live_matches_after(conn, live_id, after, STREAM_BATCH)
    return True, [
        (
            row.id,
            matching.Match(
                row.image_id,
                row.face_id,
                layout.identity(session_id, row.stored_name),
                row.distance,
                row.box,
                row.quality,
            ),
        )
        for row in rows
    ]


async def forget_probes(
    conn: db.Connection, services: Services, session_id: int, embedding: np.ndarray, threshold: float
) -> int:
    """Inside forget's transaction: the session's live searches of the forgotten person go too."""
    # before reading them (after the people lock, as uploads take them): one being made meanwhile is seen
    await db.lock_live_searches(conn, session_id, alone=True)
    ids, vectors, _ = await db.live_probes(conn, session_id, services.models.engine.embedding_dim)
    if not len(ids):
        return 0
    rows, _, _ = await asyncio.to_thread(nearest_within, vectors, embedding[None, :].astype(np.float32), threshold)
    if not len(rows):
        return 0
    erased = ids[rows].tolist()
    await db.delete_live_searches(conn, session_id, erased)
    await db.notify_live(conn, session_id, erased)  # their streams end at the commit
    return len(erased)
