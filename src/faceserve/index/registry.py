"""Per-session FAISS indexes: inner product over L2-normalised embeddings (= cosine similarity).

The database is the only source of truth. On first use a session's index is loaded from its saved copy when
that copy matches the database (index/store.py), else built from Postgres (index/kinds.py picks flat or
pq-rerank, or a flat index on the GPU: faiss's when a GPU faiss sees a device, else CuPy's, cupy_flat.py);
afterwards add/remove keep it in step. The saved copy follows in the background: rewritten once changes
settle (`index_save_settle_s` without one) and at the latest `index_save_max_lag_s` after the first change it
lacks, so a restart, even after a crash, loads instead of rebuilding; a copy that would be empty is removed.
Faces removed (forget, image and session deletes, here or announced by another process) take the saved copy
with them at once, loaded here or not: no file keeps an erased face's embedding.

All FAISS calls on a served index run on one owner thread: GPU indexes are not thread-safe even for search,
and CPU add/remove must not overlap a search. A CPU index that is not served yet is loaded, built and saved
on a second thread, so a session whose build takes seconds (OPQ training at 1M faces) holds up no other
session's searches; GPU indexes are built on the owner thread. Searches are batched by demand: while the
thread is busy, queries for the same session queue up and go as one matrix at the next turn, so throughput
grows with load and a lone query waits for nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from prometheus_client import Gauge

from ..config import Settings
from . import cupy_flat
from .cupy_flat import CupyFlatIndex
from .kinds import ExactIndex, IndexPolicy, PqRerankIndex, TombstoneFlatIndex, build_cpu, build_gpu
from .store import IndexStore

log = logging.getLogger(__name__)

SessionIndex = PqRerankIndex | ExactIndex | TombstoneFlatIndex | CupyFlatIndex
# (session id, its face count just read by the StatsLoader or None) -> (face ids, embeddings) read from the
# database; the count sizes the arrays, so the loader need not count again
Loader = Callable[[int, int | None], Awaitable[tuple[np.ndarray, np.ndarray]]]
# session id -> (face count, max face id) in the database
StatsLoader = Callable[[int], Awaitable[tuple[int, int]]]

# every worker holds its own copy of the indexes it serves: the largest report is the deployment's
INDEX_SESSIONS = Gauge(
    "faceserve_index_sessions",
    "Session indexes in memory, by kind and size bucket (faces)",
    ["kind", "size"],
    multiprocess_mode="livemax",
)
INDEX_FACES = Gauge(
    "faceserve_index_faces", "Faces in the session indexes in memory, by kind", ["kind"], multiprocess_mode="livemax"
)
# index sizes are reported by bucket, never by session id: the number of series stays small
_SIZE_BUCKETS = ((1_000, "lt1k"), (10_000, "lt10k"), (100_000, "lt100k"), (1_000_000, "lt1m"))
# label sets reported before in this process: a kind or bucket that empties is set to 0, not left at its last value
_reported_sessions: set[tuple[str, str]] = set()
_reported_faces: set[str] = set()


def size_bucket(faces: int) -> str:
    for limit, name in _SIZE_BUCKETS:
        if faces < limit:
            return name
    return "ge1m"


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def choose_placement(device: str, gpus: int, cupy_gpus: int = 0) -> str:
    """Unless the config says cpu: 'gpu' (faiss's GPU flat) when faiss was built with GPU support and sees a
    GPU, else 'cupy' (cupy_flat.py) when CuPy sees one; 'cpu' otherwise."""
    if device == "cpu":
        return "cpu"
    if gpus > 0 and hasattr(faiss, "GpuIndexFlatIP"):
        return "gpu"
    return "cupy" if cupy_gpus > 0 else "cpu"


@dataclass
class _Unsaved:
    first: float  # when the oldest change the saved copy lacks was made (time.monotonic)
    due: float  # when the copy is rewritten: changes settled, or the lag reached its bound


@dataclass
class _Pending:
    queries: list[np.ndarray] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)
    futures: list[asyncio.Future] = field(default_factory=list)


class IndexRegistry:
    """One index per session, loaded or built on first use; every FAISS call on a served index on one owner
    thread, loads and CPU builds on a second."""

    def __init__(
        self,
        dim: int,
        loader: Loader,
        device: str,
        *,
        stats: StatsLoader | None = None,
        store: IndexStore | None = None,
        policy: IndexPolicy | None = None,
        max_batch: int = Settings.index_max_batch,
        device_id: int = Settings.cuda_device_id,
        save_settle_s: float = Settings.index_save_settle_s,
        save_max_lag_s: float = Settings.index_save_max_lag_s,
    ) -> None:
        self.dim = dim
        self._loader = loader
        self._stats = stats
        self._store = store
        self.policy = policy or IndexPolicy()
        self._max_batch = max_batch
        self.placement = choose_placement(device, gpu_count(), 0 if device == "cpu" else cupy_flat.device_count())
        self._device_id = device_id
        self._gpu_resources = faiss.StandardGpuResources() if self.placement == "gpu" else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss")
        # CPU indexes not served yet: load, build, first save (one at a time: a build can take GBs)
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss-build")
        self._indexes: dict[int, SessionIndex] = {}
        self._unsaved: dict[int, _Unsaved] = {}
        self._save_settle_s = save_settle_s
        self._save_max_lag_s = save_max_lag_s
        self._saver: asyncio.Task | None = None
        self._locks: dict[int, asyncio.Lock] = {}
        self._pending: dict[int, _Pending] = {}
        self._drainer: asyncio.Task | None = None
        self.batches = 0  # searches run on the thread; fewer than queries under load
        self.preloading: asyncio.Task[int] | None = None
        self.sources: dict[int, str] = {}  # session id -> "disk" or "database": where its index came from
        log.info("FAISS indexes on %s", self.placement)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _run_unserved(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Work on an index no search sees yet: the build thread on CPU, the owner thread for a GPU."""
        executor = self._thread if self.placement != "cpu" else self._builder
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def _lock(self, session_id: int) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    # ---------------------------------------------------------------- lifecycle of one session's index

    def _build(self, ids: np.ndarray, vectors: np.ndarray) -> SessionIndex:
        if self._gpu_resources is not None:
            return build_gpu(ids, vectors, self._gpu_resources, self.policy)
        if self.placement == "cupy":
            return cupy_flat.build(ids, vectors, self.policy.gpu_float16, self._device_id)
        return build_cpu(ids, vectors, self.policy)

    def _from_saved(self, saved: PqRerankIndex | ExactIndex) -> SessionIndex | None:
        """The saved index as this process serves it; None: rebuild from the database instead."""
        if self.placement == "cpu":
            if isinstance(saved, ExactIndex) and len(saved) >= self.policy.approximate_min_faces:
                # saved exact, then grew past the threshold by adds: it gets the approximate kind now
                return None
            return saved
        if isinstance(saved, ExactIndex):
            return self._build(*saved.export())
        # a CPU approximate index (pq-rerank, older IVF) cannot hand back every vector; Postgres can
        return None

    async def _open(self, session_id: int) -> SessionIndex:
        count: int | None = None
        if self._store is not None and self._stats is not None:
            count, max_id = await self._stats(session_id)
            saved = await self._run_unserved(self._store.load, session_id, count, max_id)
            if saved is not None:
                placed = await self._run_unserved(self._from_saved, saved)
                if placed is not None:
                    log.info("index of session %d loaded from disk: %d faces (%s)", session_id, count, saved.kind)
                    self.sources[session_id] = "disk"
                    return placed
        ids, vectors = await self._loader(session_id, count)
        index = await self._run_unserved(self._build, ids, vectors)
        log.info("index of session %d built from the database: %d faces (%s)", session_id, len(ids), index.kind)
        self.sources[session_id] = "database"
        if self._store is not None and len(ids):
            try:
                await self._run_unserved(self._store.save, session_id, index)
            except OSError:  # a full disk, another worker's discard under this save: served all the same
                log.exception("could not save the index of session %d", session_id)
        return index

    async def get(self, session_id: int) -> SessionIndex:
        index = self._indexes.get(session_id)
        if index is not None:
            return index
        async with self._lock(session_id):
            index = self._indexes.get(session_id)
            if index is None:
                index = await self._open(session_id)
                self._indexes[session_id] = index
            return index

    def preload(self, session_ids: Iterable[int]) -> asyncio.Task[int]:
        """Open these sessions' indexes in the background, one after another, as a first search would (a
        current saved copy loads, a stale one is rebuilt from Postgres), so first searches find them ready.
        A search meanwhile waits only for its own session's load. The task answers how many were opened."""

        async def run() -> int:
            opened = 0
            for session_id in session_ids:
                try:
                    await self.get(session_id)
                    opened += 1
                except Exception:
                    log.exception("preloading the index of session %d failed", session_id)
            log.info("preloaded %d session indexes", opened)
            return opened

        self.preloading = asyncio.create_task(run())
        return self.preloading

    def sample(self) -> None:
        """Its gauges, as of now (http/observability.py samples every metrics_sample_s): indexes by kind and
        size bucket, faces by kind."""
        sessions: dict[tuple[str, str], int] = {}
        faces: dict[str, int] = {}
        for index in list(self._indexes.values()):
            key = (index.kind, size_bucket(len(index)))
            sessions[key] = sessions.get(key, 0) + 1
            faces[index.kind] = faces.get(index.kind, 0) + len(index)
        for key in _reported_sessions | sessions.keys():
            INDEX_SESSIONS.labels(*key).set(sessions.get(key, 0))
        for kind in _reported_faces | faces.keys():
            INDEX_FACES.labels(kind).set(faces.get(kind, 0))
        _reported_sessions.update(sessions.keys())
        _reported_faces.update(faces.keys())

    def is_loaded(self, session_id: int) -> bool:
        return session_id in self._indexes

    def loaded_sessions(self) -> list[int]:
        return list(self._indexes)

    async def loaded_stats(self, session_id: int) -> tuple[int, int] | None:
        """(count, max id) of a loaded index, as db.session_face_stats gives them for the database: equal
        pairs mean equal sets, since ids only grow (an add raises the max, a delete lowers the count)."""
        index = self._indexes.get(session_id)
        if index is None:
            return None
        ids = await self._run(index.ids)
        return len(ids), int(ids.max()) if len(ids) else 0

    async def add(self, session_id: int, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add committed faces. An index not built yet needs nothing: it will read them from the database."""
        if not len(ids):
            return
        async with self._lock(session_id):
            index = self._indexes.get(session_id)
            if index is not None:
                await self._run(index.add, np.asarray(ids, dtype=np.int64), vectors)
                self._changed(session_id)

    async def remove(self, session_id: int, ids: np.ndarray) -> None:
        """Remove deleted faces, and the saved copy that still holds them (rewritten later if loaded here)."""
        if not len(ids):
            return
        async with self._lock(session_id):
            index = self._indexes.get(session_id)
            if index is not None:
                await self._run(index.remove, np.asarray(ids, dtype=np.int64))
                self._changed(session_id)
            if self._store is not None:
                await self._run(self._store.discard, session_id)

    async def drop(self, session_id: int) -> None:
        """Forget the session's index, and its saved copy: a session deleted, or changes too many to name
        (faces erased among them, maybe) or missed, which a save in flight here may not have had."""
        async with self._lock(session_id):  # after a save in flight
            self._indexes.pop(session_id, None)
            self._unsaved.pop(session_id, None)
            if self._store is not None:
                await self._run(self._store.discard, session_id)
        self._locks.pop(session_id, None)

    async def drop_all(self) -> None:
        for session_id in list(self._indexes):
            await self.drop(session_id)

    # ---------------------------------------------------------------- the saved copies, kept in step

    def _changed(self, session_id: int) -> None:
        """Note a change the saved copy lacks (under the session's lock); the saver writes it when due."""
        if self._store is None:
            return
        now = time.monotonic()
        unsaved = self._unsaved.get(session_id)
        first = now if unsaved is None else unsaved.first
        self._unsaved[session_id] = _Unsaved(first, min(now + self._save_settle_s, first + self._save_max_lag_s))
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_when_due())

    async def _save_when_due(self) -> None:
        while self._unsaved:
            session_id = min(self._unsaved, key=lambda s: self._unsaved[s].due)
            wait_s = self._unsaved[session_id].due - time.monotonic()
            if wait_s > 0:
                # a change meanwhile only postpones a due time, and a new one is due no sooner than this
                await asyncio.sleep(wait_s)
                continue
            await self._save(session_id)

    async def _save(self, session_id: int) -> None:
        async with self._lock(session_id):
            unsaved = self._unsaved.pop(session_id, None)
            index = self._indexes.get(session_id)
            if unsaved is None or index is None or self._store is None:
                return
            try:
                if len(index):
                    await self._run(self._store.save, session_id, index)
                else:
                    await self._run(self._store.discard, session_id)
            except Exception:  # e.g. a full disk: tried again later, the copy stays unused meanwhile
                log.exception("could not save the index of session %d", session_id)
                now = time.monotonic()
                self._unsaved.setdefault(session_id, _Unsaved(now, now + self._save_max_lag_s))

    async def save_changed(self) -> None:
        """At shutdown: stop the saver and write every changed index now."""
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        for session_id in list(self._unsaved):
            await self._save(session_id)
        self._unsaved.clear()  # what failed to save is rebuilt from the database at the next start

    # ---------------------------------------------------------------- search, batched by demand

    async def search(self, session_id: int, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, face ids) of the k nearest faces per query row; id -1 pads a short result."""
        await self.get(session_id)
        future = asyncio.get_running_loop().create_future()
        pending = self._pending.setdefault(session_id, _Pending())
        pending.queries.append(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        pending.ks.append(k)
        pending.futures.append(future)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            session_id = next(iter(self._pending))
            pending = self._pending[session_id]
            take = len(pending.queries)
            rows = sum(len(q) for q in pending.queries)
            if rows > self._max_batch:  # split a flood: at least one request, at most max_batch rows
                take, rows = 0, 0
                while take < len(pending.queries) and (take == 0 or rows + len(pending.queries[take]) <= self._max_batch):
                    rows += len(pending.queries[take])
                    take += 1
            queries, ks, futures = pending.queries[:take], pending.ks[:take], pending.futures[:take]
            del pending.queries[:take], pending.ks[:take], pending.futures[:take]
            if not pending.queries:
                del self._pending[session_id]
            try:
                index = self._indexes.get(session_id)
                if index is None:  # dropped while queued
                    index = await self.get(session_id)
                k = min(max(ks), len(index))
                if k <= 0:
                    results = [(np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)) for q in queries]
                else:
                    sims, ids = await self._run(index.search, np.vstack(queries), k)
                    self.batches += 1
                    results, start = [], 0
                    for q, want in zip(queries, ks):
                        results.append((sims[start : start + len(q), :want], ids[start : start + len(q), :want]))
                        start += len(q)
            except Exception as exc:  # noqa: BLE001 - any failure goes to every waiting request
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for future, result in zip(futures, results):
                if not future.done():
                    future.set_result(result)

    def close(self) -> None:
        self._builder.shutdown(wait=True)
        self._thread.shutdown(wait=True)
        self._indexes.clear()
