"""The kinds of FAISS index a session can have, and how one is chosen and tuned. Blocking: FAISS thread only.

- flat: exact inner product (IndexIDMap2 over IndexFlatIP). Below `ivf_min_faces` it is fast enough.
- ivf: IndexIVFFlat trained on the session's own embeddings, nprobe raised until recall@10 against exact
  search on the session's own data reaches the target, then multiplied by a safety margin; if the target
  needs more than a quarter of the lists the IVF buys little, and the session stays flat.
- gpu flat: append-only (GpuIndexFlatIP cannot add_with_ids or remove_ids); rows map to face ids through
  an array, deletes are tombstones filtered at search and compacted away.
All three answer (similarities, face ids), best first, with -1 padding a short row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexPolicy:
    ivf_min_faces: int = 250_000
    target_recall: float = 0.99
    # nprobe found by tuning is multiplied by this: tuning queries come mostly from people with many photos,
    # and a face whose person has few photos needs more lists probed (real needles: 10/25 found at the tuned
    # nprobe, 22/25 at 16x; benchmarks/search_latency.py)
    nprobe_margin: int = 16
    tuning_queries: int = 100
    gpu_float16: bool = False


class IdIndex:
    """A CPU index that keeps face ids itself (flat or IVF). Adds of ids it holds already are skipped: an
    index built from a database snapshot may be told again about faces that snapshot already had."""

    def __init__(self, index: faiss.Index, kind: str, known_ids: np.ndarray) -> None:
        self.index = index
        self.kind = kind
        self._snapshot = np.sort(known_ids.astype(np.int64))  # 8 bytes a face, not a Python set's ~60
        self._recent: set[int] = set()

    def _fresh(self, ids: np.ndarray) -> np.ndarray:
        fresh = np.fromiter((i not in self._recent for i in ids.tolist()), bool, len(ids))
        if len(self._snapshot):
            at = np.minimum(np.searchsorted(self._snapshot, ids), len(self._snapshot) - 1)
            fresh &= self._snapshot[at] != ids
        return fresh

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        fresh = self._fresh(ids)
        if fresh.any():
            self.index.add_with_ids(np.ascontiguousarray(vectors[fresh], dtype=np.float32), ids[fresh])
            self._recent.update(ids[fresh].tolist())

    def remove(self, ids: np.ndarray) -> None:
        self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def ids(self) -> np.ndarray:
        if self.kind == "flat":
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = self.index.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(lists.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def __len__(self) -> int:
        return int(self.index.ntotal)


class TombstoneFlatIndex:
    """An append-only flat index (GpuIndexFlatIP): a host array maps rows to face ids, deletes are
    tombstones filtered at search and compacted away once they reach a fifth of the rows."""

    kind = "gpu-flat"
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
        sims, rows = self._index.search(
            np.ascontiguousarray(vectors, dtype=np.float32), min(k + dead, self._index.ntotal)
        )
        safe_rows = np.clip(rows, 0, None)
        ids = np.where(rows >= 0, self._row_ids[safe_rows], -1)
        ids[(rows >= 0) & self._dead[safe_rows]] = -1
        order = np.argsort(ids < 0, axis=1, kind="stable")[:, :k]  # tombstones to the end, keep the best k
        return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        alive = ~self._dead
        return self._row_ids[alive], self._index.reconstruct_n(0, self._index.ntotal)[alive]

    def __len__(self) -> int:
        return int((~self._dead).sum())


# ------------------------------------------------------------------------------------------- building


def flat(ids: np.ndarray, vectors: np.ndarray) -> IdIndex:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return IdIndex(index, "flat", ids)


def tuning_queries(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """New-photo-like probes of people in the session: own embeddings plus noise, cosine 0.6-0.9 to their
    source, the spread measured between real faces and changed photos of them (benchmarks/search_latency.py)."""
    rng = np.random.default_rng(seed)
    rows = vectors[rng.choice(len(vectors), min(count, len(vectors)), replace=False)]
    noise = rng.standard_normal(rows.shape).astype(np.float32) / np.float32(math.sqrt(vectors.shape[1]))
    queries = rows + rng.uniform(0.5, 1.3, (len(rows), 1)).astype(np.float32) * noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 262_144) -> np.ndarray:
    """Row numbers of the exact top k, by chunked matrix products (no second copy of the vectors)."""
    best_sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        sims = queries @ vectors[start : start + chunk].T
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        merged_sims = np.concatenate([best_sims, np.take_along_axis(sims, top, 1)], axis=1)
        merged_rows = np.concatenate([best_rows, top + start], axis=1)
        keep = np.argsort(-merged_sims, axis=1)[:, :k]
        best_sims, best_rows = np.take_along_axis(merged_sims, keep, 1), np.take_along_axis(merged_rows, keep, 1)
    return best_rows


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def ivf(ids: np.ndarray, vectors: np.ndarray, policy: IndexPolicy, k: int = 10) -> IdIndex | None:
    """An IVF trained on these vectors with nprobe tuned to the target recall, or None if not worth it."""
    n, dim = vectors.shape
    # 4 sqrt(n) lists: measured on people-like galleries, 2 sqrt(n) lists mix people and lose recall
    nlist = int(min(65536, max(64, 4 * math.sqrt(n))))
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(n, min(n, 40 * nlist), replace=False)]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample))
    index.add_with_ids(np.ascontiguousarray(vectors), ids.astype(np.int64))

    queries = tuning_queries(vectors, policy.tuning_queries)
    truth = ids[exact_top(vectors, queries, k)]
    nprobe = 1
    while nprobe <= nlist // 4:
        index.nprobe = nprobe
        recall = recall_at(index.search(queries, k)[1], truth)
        if recall >= policy.target_recall:
            index.nprobe = min(nlist, nprobe * policy.nprobe_margin)
            log.info(
                "IVF%d over %d faces: recall@%d %.4f at nprobe %d, searching with %d",
                nlist, n, k, recall, nprobe, index.nprobe,
            )
            return IdIndex(index, "ivf", ids)
        nprobe *= 2
    log.info("IVF%d over %d faces misses recall %.2f at nprobe %d; staying exact", nlist, n, policy.target_recall, nlist // 4)
    return None


def build_cpu(ids: np.ndarray, vectors: np.ndarray, policy: IndexPolicy) -> IdIndex:
    if len(ids) >= policy.ivf_min_faces:
        approximate = ivf(ids, vectors, policy)
        if approximate is not None:
            return approximate
    return flat(ids, vectors)


def build_gpu(ids: np.ndarray, vectors: np.ndarray, resources: object, policy: IndexPolicy) -> TombstoneFlatIndex:
    dim = vectors.shape[1]

    def make_flat() -> faiss.Index:
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = policy.gpu_float16
        return faiss.GpuIndexFlatIP(resources, dim, config)

    index = TombstoneFlatIndex(make_flat)
    if len(ids):
        index.add(ids, vectors)
    return index
