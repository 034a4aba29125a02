"""Forgetting a person, and sessions that expire.

forget(): every face of a session that matches a selfie loses its row (and so its embedding), its index
entries in every process (announced inside the same transaction: changes.py) and its cached crops;
the photos stay. The match is exact, over every embedding of the session in Postgres, not the approximate
index: an erasure must not miss a face the index would rank past its shortlist. An audit row records
when, by which key (prefix), how many; never the selfie, an embedding or a box.

Expired sessions are deleted by whichever process first takes a transaction-scoped advisory lock; the
others find the lock taken and skip that round, so each session is deleted once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from .. import db
from ..errors import NoFaceFound, SessionNotFound
from . import changes, deletes, face_sessions, live, matching
from .services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forgotten:
    faces_erased: int
    images_touched: int


def _matching(ids: np.ndarray, vectors: np.ndarray, probe: np.ndarray, threshold: float) -> list[int]:
    if not len(ids):
        return []
    distances = 1.0 - vectors @ probe.astype(np.float32)
    return ids[distances <= threshold].tolist()


async def forget(
    services: Services, session_id: int, selfie: bytes, threshold: float, key_prefix: str | None
) -> Forgotten:
    await face_sessions.require_session(services, session_id)
    face = await matching.probe_face(services.models, services.settings, selfie)
    if face is None:
        raise NoFaceFound("no face was found in the selfie")
    ids, vectors = await db.session_embeddings(
        services.pool, session_id, services.models.engine.embedding_dim, timeout=services.settings.db_bulk_timeout_s
    )
    matched = await asyncio.to_thread(_matching, ids, vectors, face.embedding, threshold)
    async with changes.session_change(services) as change:
        await change.lock_people(session_id)  # before any row: the one lock order
        persons = list((await db.persons_of_faces(change.conn, matched)).values())
        erased = await db.delete_faces(change.conn, session_id, matched)
        touched = len({image_id for image_id, _ in erased})
        await db.record_forget(change.conn, key_prefix, session_id, len(erased), touched)
        # their live searches too: no new photo of the forgotten person is pushed to anyone
        await live.forget_probes(change.conn, services, session_id, face.embedding, threshold)
        # the people those faces were in shrink (one left with none disappears), and their crops go
        await change.faces_removed([face_id for _, face_id in erased], persons, crops=erased)
    log.info("forget in session %d erased %d faces in %d images", session_id, len(erased), touched)
    return Forgotten(len(erased), touched)


async def delete_expired(services: Services) -> list[int] | None:
    """Delete every expired session; None when another process holds the sweep right now."""
    deleted: list[int] = []
    async with services.pool.acquire() as conn, conn.transaction():
        if not await db.try_lock_session_expiry(conn):
            return None
        # ignored already past their expiry; gone now, in a transaction of their own (committed before the
        # sessions' deletes, which would otherwise wait on its rows)
        async with services.pool.acquire() as other, other.transaction():
            await db.delete_expired_live_searches(other)
        for session_id in await db.expired_sessions(conn):
            # each in its own transaction, on other connections; the lock is held meanwhile
            try:
                await deletes.delete_session(services, session_id)
            except SessionNotFound:
                continue
            deleted.append(session_id)
    if deleted:
        log.info("deleted %d expired sessions: %s", len(deleted), deleted)
    return deleted


async def delete_expired_forever(services: Services, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await delete_expired(services)
        except Exception:
            log.exception("could not delete expired sessions; trying again in %.0f s", every_s)
