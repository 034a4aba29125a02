"""Per-session FAISS indexes: exact inner product over L2-normalised embeddings (= cosine similarity).

The database is the only source of truth: an index is built from Postgres on first use and afterwards kept
in step by add/remove. All FAISS calls run on one dedicated thread: GPU indexes are not thread-safe even for
search, and CPU add/remove must not overlap a search.

CPU: IndexIDMap2 over IndexFlatIP, ids are face ids, remove_ids drops deleted faces at once.
GPU: GpuIndexFlatIP has neither add_with_ids nor remove_ids, so rows map to face ids through an array and
deleted rows are tombstones filtered at search, compacted away once they pile up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import faiss
import numpy as np

log = logging.getLogger(__name__)

# session id -> (face ids, embeddings) read from the database
Loader = Callable[[int], Awaitable[tuple[np.ndarray, np.ndarray]]]


class SessionIndex(Protocol):
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> None: ...
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def __len__(self) -> int: ...


class CpuFlatIndex:
    def __init__(self, dim: int) -> None:
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._ids: set[int] = set()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        fresh = np.fromiter((i not in self._ids for i in ids.tolist()), dtype=bool, count=len(ids))
        if fresh.any():
            self._index.add_with_ids(np.ascontiguousarray(vectors[fresh], dtype=np.float32), ids[fresh])
            self._ids.update(ids[fresh].tolist())

    def remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
        self._ids.difference_update(ids.tolist())

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def __len__(self) -> int:
        return int(self._index.ntotal)


class TombstoneFlatIndex:
    """A flat index that can only append (GpuIndexFlatIP): a host array maps rows to face ids, deletes are
    tombstones filtered at search and compacted away once they reach a fifth of the rows."""

    _COMPACT_RATIO = 0.2

    def __init__(self, make_flat: Callable[[], faiss.Index]) -> None:
        self._make_flat = make_flat
        self._index = make_flat()
        self._row_ids = np.empty(0, dtype=np.int64)
        self._dead = np.empty(0, dtype=bool)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        fresh = ~np.isin(ids, self._row_ids[~self._dead])
        if fresh.any():
            self._index.add(np.ascontiguousarray(vectors[fresh], dtype=np.float32))
            self._row_ids = np.concatenate([self._row_ids, ids[fresh]])
            self._dead = np.concatenate([self._dead, np.zeros(int(fresh.sum()), dtype=bool)])

    def remove(self, ids: np.ndarray) -> None:
        self._dead |= np.isin(self._row_ids, ids)
        if self._dead.sum() > self._COMPACT_RATIO * max(1, len(self._dead)):
            self._compact()

    def _compact(self) -> None:
        alive = ~self._dead
        vectors = self._index.reconstruct_n(0, self._index.ntotal)[alive]
        self._index = self._make_flat()
        self._index.add(vectors)
        self._row_ids = self._row_ids[alive]
        self._dead = np.zeros(len(self._row_ids), dtype=bool)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dead = int(self._dead.sum())
        sims, rows = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k + dead, self._index.ntotal))
        ids = np.where(rows >= 0, self._row_ids[np.clip(rows, 0, None)], -1)
        ids[(rows >= 0) & self._dead[np.clip(rows, 0, None)]] = -1
        # push tombstones to the end of each row, keep the best k
        order = np.argsort(ids < 0, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)

    def __len__(self) -> int:
        return int((~self._dead).sum())


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def choose_placement(device: str, gpus: int) -> str:
    """'gpu' when faiss was built with GPU support and sees a GPU (and the config allows it), else 'cpu'."""
    if device == "cpu" or gpus <= 0 or not hasattr(faiss, "GpuIndexFlatIP"):
        return "cpu"
    return "gpu"


class IndexRegistry:
    """One index per session, built lazily from the database; every FAISS call on one owner thread."""

    def __init__(self, dim: int, loader: Loader, device: str = "auto") -> None:
        self.dim = dim
        self._loader = loader
        self.placement = choose_placement(device, gpu_count())
        self._gpu_resources = faiss.StandardGpuResources() if self.placement == "gpu" else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss")
        self._indexes: dict[int, SessionIndex] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        log.info("FAISS indexes on %s", self.placement)

    def _new_index(self) -> SessionIndex:
        if self._gpu_resources is not None:
            resources, dim = self._gpu_resources, self.dim
            return TombstoneFlatIndex(lambda: faiss.GpuIndexFlatIP(resources, dim))
        return CpuFlatIndex(self.dim)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _lock(self, session_id: int) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def get(self, session_id: int) -> SessionIndex:
        index = self._indexes.get(session_id)
        if index is not None:
            return index
        async with self._lock(session_id):
            index = self._indexes.get(session_id)
            if index is None:
                ids, vectors = await self._loader(session_id)
                index = self._new_index()
                if len(ids):
                    await self._run(index.add, ids, vectors)
                self._indexes[session_id] = index
                log.info("index of session %d built from the database: %d faces", session_id, len(ids))
            return index

    def is_loaded(self, session_id: int) -> bool:
        return session_id in self._indexes

    async def add(self, session_id: int, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add committed faces. An index not built yet needs nothing: it will read them from the database."""
        if not len(ids):
            return
        async with self._lock(session_id):
            index = self._indexes.get(session_id)
            if index is not None:
                await self._run(index.add, np.asarray(ids, dtype=np.int64), vectors)

    async def remove(self, session_id: int, ids: np.ndarray) -> None:
        if not len(ids):
            return
        async with self._lock(session_id):
            index = self._indexes.get(session_id)
            if index is not None:
                await self._run(index.remove, np.asarray(ids, dtype=np.int64))

    async def drop(self, session_id: int) -> None:
        async with self._lock(session_id):
            self._indexes.pop(session_id, None)
        self._locks.pop(session_id, None)

    async def drop_all(self) -> None:
        for session_id in list(self._indexes):
            await self.drop(session_id)

    async def search(self, session_id: int, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, face ids) of the k nearest faces per query row; id -1 pads a short result."""
        index = await self.get(session_id)
        k = min(k, len(index))
        if k <= 0:
            empty = np.empty((len(vectors), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        return await self._run(index.search, vectors, k)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._indexes.clear()
