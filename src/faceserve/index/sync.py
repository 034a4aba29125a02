"""Keep every process's in-memory indexes in step through Postgres LISTEN/NOTIFY.

With several workers (or hosts) on one database, a face added by one process must become searchable in the
others. Each change is announced inside the transaction that makes it (Postgres delivers the notification
at commit, and never for a rolled-back one); every process applies the changes of the others, in order.
The listening connection is db/notifications.py's. Losing it loses the notifications sent meanwhile (a node
restarted, Postgres restarted, a network cut), so after a reconnect each loaded index is compared with the
database by (face count, highest face id) and those that differ are dropped, to be reopened from Postgres on
next use.
Indexes stay in use while the connection is away: a hit on a face deleted meanwhile is still filtered out
by the join against Postgres that every search makes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np

from .. import db
from .registry import IndexRegistry

log = logging.getLogger(__name__)

CHANNEL = "faceserve_faces"
_MAX_PAYLOAD = 7900  # Postgres allows 8000 bytes


def new_token() -> str:
    """Names this process in its own notifications, so it can skip them."""
    return secrets.token_hex(6)


ADDED, REMOVED, DROPPED = "+", "-", "!"


@dataclass(frozen=True)
class IndexChange:
    """One change to a session's index: faces added or removed, or the whole index dropped. The process that
    makes it announces it inside its transaction and applies it after the commit (core/changes.py); every
    other process hears it and applies it too (IndexFollower)."""

    kind: str  # ADDED, REMOVED or DROPPED
    session_id: int
    face_ids: np.ndarray
    # the added faces' embeddings, where known (the process that made them); others read them from Postgres
    vectors: np.ndarray | None = None


def added(session_id: int, face_ids: Sequence[int] | np.ndarray, vectors: np.ndarray | None = None) -> IndexChange:
    return IndexChange(ADDED, session_id, np.asarray(face_ids, dtype=np.int64), vectors)


def removed(session_id: int, face_ids: Sequence[int] | np.ndarray) -> IndexChange:
    return IndexChange(REMOVED, session_id, np.asarray(face_ids, dtype=np.int64))


def dropped(session_id: int) -> IndexChange:
    return IndexChange(DROPPED, session_id, np.zeros(0, dtype=np.int64))


def _encode(token: str, change: IndexChange) -> str:
    ids = ",".join(str(int(i)) for i in change.face_ids)
    payload = f"{token} {change.kind} {int(change.session_id)} {ids}"
    if len(payload) > _MAX_PAYLOAD:
        return f"{token} {DROPPED} {int(change.session_id)} "  # too many ids to name: others rebuild that session
    return payload


def _decode(payload: str) -> IndexChange:
    _, kind, session_id, ids = payload.split(" ", 3)
    face_ids = np.array([int(i) for i in ids.split(",") if i], dtype=np.int64)
    return IndexChange(kind, int(session_id), face_ids)


async def announce(conn: db.Connection, token: str, change: IndexChange) -> None:
    """Inside the transaction that makes the change: Postgres delivers it to every process at commit."""
    if change.kind == DROPPED or len(change.face_ids):
        await db.notify(conn, CHANNEL, _encode(token, change))


async def announce_removed(conn: db.Connection, token: str, session_id: int, face_ids: Sequence[int]) -> None:
    await announce(conn, token, removed(session_id, face_ids))


async def apply(indexes: IndexRegistry, change: IndexChange) -> None:
    """After the commit: this process's index follows. Added faces without their vectors are left to an index
    not loaded here (it reads them from Postgres when it opens); IndexFollower reads them for a loaded one."""
    if change.kind == ADDED:
        if change.vectors is not None:
            await indexes.add(change.session_id, change.face_ids, change.vectors)
    elif change.kind == REMOVED:
        await indexes.remove(change.session_id, change.face_ids)
    elif change.kind == DROPPED:
        await indexes.drop(change.session_id)


class IndexFollower:
    """Applies other processes' changes to this one's indexes, as the listener (db/notifications.py) hears
    them, and catches up after it lost its connection."""

    def __init__(
        self, listener: db.NotificationListener, token: str, pool: asyncpg.Pool, indexes: IndexRegistry
    ) -> None:
        self._listener = listener
        self._token = token
        self._pool = pool
        self._indexes = indexes
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._applying: asyncio.Task | None = None

    async def start(self) -> None:
        self._applying = asyncio.create_task(self._apply_forever())
        await self._listener.subscribe(db.Subscription(CHANNEL, self._received, self.catch_up))

    async def close(self) -> None:
        if self._applying is not None:
            self._applying.cancel()
            await asyncio.gather(self._applying, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every notification received so far is applied (tests, orderly shutdown)."""
        await self._queue.join()

    def _received(self, payload: str) -> None:
        if not payload.startswith(self._token + " "):
            self._queue.put_nowait(payload)

    async def _apply_forever(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self._apply(payload)
            except Exception:
                log.exception("could not apply index change %r; dropping all indexes to rebuild", payload[:80])
                await self._indexes.drop_all()
            finally:
                self._queue.task_done()

    async def _apply(self, payload: str) -> None:
        change = _decode(payload)
        if change.kind == ADDED:
            if not self._indexes.is_loaded(change.session_id):
                return
            ids, vectors = await db.embeddings_by_ids(self._pool, change.session_id, change.face_ids, self._indexes.dim)
            change = added(change.session_id, ids, vectors)
        await apply(self._indexes, change)

    async def catch_up(self) -> int:
        """Drop the loaded indexes the database disagrees with (changes made while no one listened); they
        reopen from Postgres on next use. Answers how many were dropped."""
        await self.drain()
        dropped = 0
        for session_id in self._indexes.loaded_sessions():
            here = await self._indexes.loaded_stats(session_id)
            there = await db.session_face_stats(self._pool, session_id, self._indexes.dim)
            if here is not None and here != there:
                await self._indexes.drop(session_id)
                dropped += 1
        if dropped:
            log.info("%d session indexes changed while notifications were lost; reopening them", dropped)
        return dropped
