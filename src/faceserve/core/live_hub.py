"""Live results in one process: new faces against the session's live probes, and the streams to wake.

An upload's faces are compared, inside the transaction that records them, with every unexpired live search
of their session (exact, one matrix product: a live search is a guest, not a million faces); each match is
recorded once per live search and image, and the live searches that got one are announced on a channel
(Postgres delivers it at commit to every process, this one included). Streams of those live searches, on
whichever process holds them, wake and read their new rows from Postgres: the rows, not the notification,
are the truth, so a notification lost while the listening connection was away costs nothing once every
stream re-reads after the reconnect.

The probes of a session are cached here with the (count, highest id) of its rows; each upload asks Postgres
for that pair (one index-only query) and reloads the probes when it changed, so a live search made or
deleted on another node counts from its commit on.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from prometheus_client import Gauge

from .. import db
from ..vision.engine import DetectedFace

LIVE_STREAMS = Gauge(
    "faceserve_live_streams", "Live results streams open (Server-Sent Events)", multiprocess_mode="livesum"
)

# sessions whose probes stay cached (the least recently uploaded to go first)
_CACHED_SESSIONS = 256
# products larger than this (probes x faces) are computed on a thread, off the event loop
_THREAD_FROM = 100_000


@dataclass(frozen=True)
class _Probes:
    version: tuple[int, int]
    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, dim) float32
    expires: np.ndarray  # (n,) POSIX seconds


def nearest_within(
    probes: np.ndarray, faces: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each probe, the nearest of the faces: (probe rows within threshold, their face's row, distance)."""
    similarities = probes @ faces.T  # (probes, faces)
    best = np.argmax(similarities, axis=1)
    nearest = 1.0 - similarities[np.arange(len(probes)), best]
    rows = np.flatnonzero(nearest <= threshold)
    return rows, best[rows], np.maximum(nearest[rows], 0.0)


class LiveHub:
    """The live probes this process has seen (cached per session), and its open streams by live search."""

    def __init__(self, listener: db.NotificationListener, dim: int, threshold: float) -> None:
        self._listener = listener
        self._dim = dim
        self._threshold = threshold  # the search's (MATCH_THRESHOLD)
        self._probes: OrderedDict[int, _Probes] = OrderedDict()
        # live search -> (its session, the wake-up of each stream open on it here)
        self._streams: dict[int, tuple[int, set[asyncio.Event]]] = {}
        self.closed = False

    async def start(self) -> None:
        await self._listener.subscribe(db.Subscription(db.LIVE_CHANNEL, self._received, self._resumed))

    def close(self) -> None:
        """Streams end (at shutdown, before the server waits for its requests)."""
        self.closed = True
        self._wake_all()

    def open_streams(self) -> int:
        return sum(len(events) for _, events in self._streams.values())

    def sample(self) -> None:
        """Its gauge, as of now (http/observability.py samples every metrics_sample_s)."""
        LIVE_STREAMS.set(self.open_streams())

    @contextmanager
    def watch(self, session_id: int, live_id: int) -> Iterator[asyncio.Event]:
        """An event set whenever the live search may have new matches (and at shutdown)."""
        wake = asyncio.Event()
        self._streams.setdefault(live_id, (session_id, set()))[1].add(wake)
        try:
            yield wake
        finally:
            _, events = self._streams[live_id]
            events.discard(wake)
            if not events:
                del self._streams[live_id]

    def _received(self, payload: str) -> None:
        session, _, named = payload.partition(" ")
        if named == "*":
            for session_id, events in self._streams.values():
                if str(session_id) == session:
                    _set(events)
            return
        for live_id in named.split(","):
            found = self._streams.get(int(live_id)) if live_id.isdigit() else None
            if found is not None:
                _set(found[1])

    async def _resumed(self) -> None:
        # notifications were lost while the connection was away: every stream reads what it missed
        self._wake_all()

    def _wake_all(self) -> None:
        for _, events in self._streams.values():
            _set(events)

    async def _session_probes(self, conn: db.Connection, session_id: int) -> _Probes:
        version = await db.live_probe_version(conn, session_id)
        cached = self._probes.get(session_id)
        if cached is not None and cached.version == version:
            self._probes.move_to_end(session_id)
            return cached
        if version[0] == 0:
            probes = _Probes(version, np.zeros(0, np.int64), np.zeros((0, self._dim), np.float32), np.zeros(0))
        else:
            ids, vectors, expires = await db.live_probes(conn, session_id, self._dim)
            probes = _Probes(version, ids, vectors, expires)
        self._probes[session_id] = probes
        self._probes.move_to_end(session_id)
        while len(self._probes) > _CACHED_SESSIONS:
            self._probes.popitem(last=False)
        return probes

    async def match_new_faces(
        self,
        conn: db.Connection,
        session_id: int,
        image_id: int,
        face_ids: Sequence[int],
        faces: Sequence[DetectedFace],
    ) -> list[int]:
        """Record the new image for every live search of the session one of its faces matches, and announce
        them (delivered at this transaction's commit). Answers the live searches that got it."""
        if not len(face_ids):
            return []
        # held until this upload commits: a live search being made waits for it (core/live.py create)
        await db.lock_live_searches(conn, session_id, alone=False)
        probes = await self._session_probes(conn, session_id)
        if not len(probes.ids):
            return []
        vectors = np.stack([np.asarray(face.embedding, dtype=np.float32) for face in faces])
        # over every cached probe (no copy of the matrix), the expired ones dropped from the result
        if len(probes.ids) * len(vectors) >= _THREAD_FROM:
            rows, best, distances = await asyncio.to_thread(nearest_within, probes.vectors, vectors, self._threshold)
        else:
            rows, best, distances = nearest_within(probes.vectors, vectors, self._threshold)
        live = probes.expires[rows] > time.time()
        rows, best, distances = rows[live], best[live], distances[live]
        if not len(rows):
            return []
        chosen = np.asarray(face_ids, dtype=np.int64)[best]
        matched = await db.insert_live_matches(
            conn, image_id, probes.ids[rows].tolist(), chosen.tolist(), distances.astype(float).tolist()
        )
        if matched:
            await db.notify_live(conn, session_id, matched)
        return matched


def _set(events: set[asyncio.Event]) -> None:
    for event in events:
        event.set()
