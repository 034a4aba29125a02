"""Live results in one process: new faces against the session's live probes, and the streams to wake.

An upload's faces are compared, inside the transaction that records them, with every unexpired live search
of their session (exact, one matrix product: a live search is a guest, not a million faces); each match is
recorded once per live search and image, and the live searches that got one are announced on a channel
(Postgres delivers it at commit to every process, this one included). Streams of those live searches, on
whichever process holds them, wake and read their new rows from Postgres: the rows, not the notification,
are the truth, so a notification lost while the listening connection was away costs nothing once every
stream re-reads after the reconnect.

The probes of a session are cached here with the session's live version (live_versions.version, a new number
from one sequence whenever a live search is made or removed); each upload reads it (one row) and reloads the
probes when it changed, so a live search made or deleted on another node counts from its commit on. A session with many
probes gets them compiled into a fixed product (vision/openvino_runtime.py NearestRows, where OpenVINO is
installed) in the background; numpy's product serves until it is ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from prometheus_client import Gauge

from .. import db
from ..vision import openvino_runtime
from ..vision.engine import DetectedFace

log = logging.getLogger(__name__)

LIVE_STREAMS = Gauge(
    "faceserve_live_streams", "Live results streams open (Server-Sent Events)", multiprocess_mode="livesum"
)

# sessions whose probes stay cached (the least recently uploaded to go first)
_CACHED_SESSIONS = 256
# products larger than this (probes x faces) are computed on a thread, off the event loop
_THREAD_FROM = 100_000
# sessions with this many probes get them compiled (below it numpy's product is a fraction of a ms)
_COMPILE_FROM = 2_000

# what starts work a request does not wait for (core/services.py BackgroundJobs.start)
StartJob = Callable[[Any, Callable[[], Awaitable[Any]], str], bool]


@dataclass(frozen=True)
class _Probes:
    version: int  # live_versions.version when read (0: the session never had a live search)
    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, dim) float32
    expires: np.ndarray  # (n,) POSIX seconds
    compiled: openvino_runtime.NearestRows | None = None

    def nearest_within(self, faces: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.compiled is not None:
            try:
                best, similarity = self.compiled(faces)
                return _within(best, similarity, threshold)
            except Exception:  # the compiled copy is a speed-up only: numpy's product answers the same
                log.exception("the compiled live probes failed; comparing with numpy's product")
        return nearest_within(self.vectors, faces, threshold)


def nearest_within(
    probes: np.ndarray, faces: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each probe, the nearest of the faces: (probe rows within threshold, their face's row, distance)."""
    similarities = probes @ faces.T  # (probes, faces)
    best = np.argmax(similarities, axis=1)
    return _within(best, similarities[np.arange(len(probes)), best], threshold)


def _within(
    best: np.ndarray, similarity: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nearest = 1.0 - similarity
    rows = np.flatnonzero(nearest <= threshold)
    return rows, best[rows], np.maximum(nearest[rows], 0.0)


class LiveHub:
    """The live probes this process has seen (cached per session), and its open streams by live search."""

    def __init__(
        self, listener: db.NotificationListener, dim: int, threshold: float, start_job: StartJob | None = None
    ) -> None:
        self._listener = listener
        self._dim = dim
        self._threshold = threshold  # the search's (MATCH_THRESHOLD)
        # compiles large sets of probes in the background; None (or no OpenVINO here): numpy's product only
        self._start_job = start_job if openvino_runtime.installed() else None
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

    async def _session_probes(self, conn: db.Connection, session_id: int) -> tuple[_Probes, float]:
        """The session's probes as of now, and the database's time."""
        version, now = await db.live_probe_version(conn, session_id)
        cached = self._probes.get(session_id)
        if cached is not None and cached.version == version:
            self._probes.move_to_end(session_id)
            return cached, now
        if version == 0:  # never had one
            probes = _Probes(version, np.zeros(0, np.int64), np.zeros((0, self._dim), np.float32), np.zeros(0))
        else:
            probes = await self._read_probes(conn, session_id, version, cached)
            if len(probes.ids) >= _COMPILE_FROM and self._start_job is not None:
                # one job per session at a time: a set loaded meanwhile is compiled when it ends
                self._start_job(("live probes", session_id), lambda: self._compile(session_id), "compiling live probes")
        self._probes[session_id] = probes
        self._probes.move_to_end(session_id)
        while len(self._probes) > _CACHED_SESSIONS:
            self._probes.popitem(last=False)
        return probes, now

    async def _read_probes(
        self, conn: db.Connection, session_id: int, version: int, cached: _Probes | None
    ) -> _Probes:
        """The session's probes as Postgres holds them now; with a cached copy, only the rows made since (a
        live search is made holding the session's lock alone, so ids grow in commit order) and the ids of
        those still there."""
        after = int(cached.ids[-1]) if cached is not None and len(cached.ids) else 0
        ids, vectors, expires = await db.live_probes(conn, session_id, self._dim, after)
        if not after:
            return _Probes(version, ids, vectors, expires)
        assert cached is not None
        kept = np.isin(cached.ids, ids, assume_unique=True)
        if np.count_nonzero(kept) != np.count_nonzero(ids <= after):  # one made out of order: read them all
            return await self._read_probes(conn, session_id, version, None)
        return _Probes(
            version, ids, np.concatenate([cached.vectors[kept], vectors]), np.concatenate([cached.expires[kept], expires])
        )

    async def _compile(self, session_id: int) -> None:
        """Until the session's cached set is compiled (or small, or no longer cached)."""
        while True:
            probes = self._probes.get(session_id)
            if probes is None or probes.compiled is not None or len(probes.ids) < _COMPILE_FROM:
                return
            compiled = await asyncio.to_thread(openvino_runtime.NearestRows, probes.vectors)
            if self._probes.get(session_id) is probes:  # still the session's set: later uploads use it
                self._probes[session_id] = replace(probes, compiled=compiled)

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
        vectors = None  # the faces as one matrix, made only where a session has live searches
        # a large product starts at once on the cached set, on a thread, while Postgres is asked whether that
        # set is still the session's (it nearly always is: the round trips cost the upload no extra time)
        cached = self._probes.get(session_id)
        early = None
        if cached is not None and len(cached.ids) * len(faces) >= _THREAD_FROM:
            vectors = _stacked(faces)
            early = asyncio.ensure_future(asyncio.to_thread(cached.nearest_within, vectors, self._threshold))
        try:
            # held until this upload commits: a live search being made waits for it (core/live.py create)
            await db.lock_live_searches(conn, session_id, alone=False)
            probes, now = await self._session_probes(conn, session_id)
        except BaseException:
            if early is not None:
                await asyncio.gather(early, return_exceptions=True)  # the thread's work is not left behind
            raise
        if early is not None and cached is not None and probes.version == cached.version:
            # the same set: the rows are cached's (another copy of this version may have been read since)
            probes = cached
            rows, best, distances = await early
        else:
            if early is not None:
                await asyncio.gather(early, return_exceptions=True)
            if not len(probes.ids):
                return []
            vectors = _stacked(faces) if vectors is None else vectors
            # over every cached probe (no copy of the matrix), the expired ones (by the database's clock, the
            # sweep's) dropped from the result
            if len(probes.ids) * len(vectors) >= _THREAD_FROM:
                rows, best, distances = await asyncio.to_thread(probes.nearest_within, vectors, self._threshold)
            else:
                rows, best, distances = probes.nearest_within(vectors, self._threshold)
        live = probes.expires[rows] > now
        rows, best, distances = rows[live], best[live], distances[live]
        if not len(rows):
            return []
        chosen = np.asarray(face_ids, dtype=np.int64)[best]
        return await db.insert_live_matches(
            conn, session_id, image_id, probes.ids[rows].tolist(), chosen.tolist(), distances.astype(float).tolist()
        )


def _stacked(faces: Sequence[DetectedFace]) -> np.ndarray:
    return np.stack([np.asarray(face.embedding, dtype=np.float32) for face in faces])


def _set(events: set[asyncio.Event]) -> None:
    for event in events:
        event.set()
