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


def _encode(token: str, kind: str, session_id: int, face_ids: Sequence[int] = ()) -> str:
    payload = f"{token} {kind} {int(session_id)} {','.join(str(int(i)) for i in face_ids)}"
    if len(payload) > _MAX_PAYLOAD:
        return f"{token} ! {int(session_id)} "  # too many ids to name: others rebuild that session
    return payload


def _decode(payload: str) -> tuple[str, str, int, np.ndarray]:
    token, kind, session_id, ids = payload.split(" ", 3)
    face_ids = np.array([int(i) for i in ids.split(",") if i], dtype=np.int64)
    return token, kind, int(session_id), face_ids


async def announce_added(conn: db.Connection, token: str, session_id: int, face_ids: Sequence[int]) -> None:
    if len(face_ids):
        await db.notify(conn, CHANNEL, _encode(token, "+", session_id, face_ids))


async def announce_removed(conn: db.Connection, token: str, session_id: int, face_ids: Sequence[int]) -> None:
    if len(face_ids):
        await db.notify(conn, CHANNEL, _encode(token, "-", session_id, face_ids))


async def announce_dropped(conn: db.Connection, token: str, session_id: int) -> None:
    await db.notify(conn, CHANNEL, _encode(token, "!", session_id))


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
        _, kind, session_id, face_ids = _decode(payload)
        if kind == "+":
            if self._indexes.is_loaded(session_id):
                ids, vectors = await db.embeddings_by_ids(self._pool, session_id, face_ids, self._indexes.dim)
                await self._indexes.add(session_id, ids, vectors)
        elif kind == "-":
            await self._indexes.remove(session_id, face_ids)
        elif kind == "!":
            await self._indexes.drop(session_id)

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
