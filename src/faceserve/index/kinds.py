"""The kinds of FAISS index a session can have, and how one is chosen and tuned. Blocking: FAISS threads only.

- flat: exact inner product (ExactIndex: numpy's BLAS, faster here than faiss.IndexFlatIP). Below
  `approximate_min_faces` it is fast enough: ~2 ms a query at 50k faces on 2 cores, against ~0.2 ms for pq-rerank.
- pq-rerank: every face also as a 32-byte product-quantized code (4-bit PQ, faiss "fast scan"; from
  `opq_min_faces` behind a learned OPQ rotation); a search scans all codes for a shortlist of candidates
  (PqRerankIndex.shortlist) and re-ranks them on the exact vectors, so the similarities it answers are exact. The
  shortlist is tuned on probes made from the session's own faces until recall@10 against exact search
  reaches the target (where none does, as on data with no neighbour structure: until the neighbours a
  search can return, similarity >= the match threshold, are found), then multiplied by a safety margin; if
  neither is reached up to `max_k_factor`, the session stays flat. It partitions nothing, so a face of a
  person with one photo is as findable as one of a person with fifty (an IVF lost those: RESULTS.md).
- gpu flat: append-only (GpuIndexFlatIP cannot add_with_ids or remove_ids); rows map to face ids through
  an array, deletes are tombstones filtered at search and compacted away.
All answer (similarities, face ids), best first, with -1 padding a short row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from ..config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexPolicy:
    # sessions with at least this many faces get an approximate index (pq-rerank)
    approximate_min_faces: int = Settings.approximate_min_faces
    # ... and from this many, codes rotated by OPQ: 15-25 s more to build (once, then saved) for a 3-4x
    # shorter shortlist at the same recall@10 (people/8: 0.22 ms vs 0.66 at 100k; RESULTS.md)
    opq_min_faces: int = Settings.opq_min_faces
    # recall@10 against exact search (or, where no shortlist reaches it, of the neighbours a search returns)
    target_recall: float = Settings.index_target_recall
    # the shortlist factor found by tuning is multiplied by this: tuning
    # probes are synthetic; a margin costs little, a shortlist is cheap next to the scan of all codes
    shortlist_margin: int = Settings.shortlist_margin
    tuning_queries: int = 100
    # 1 - the service's match threshold (cosine distance, default 0.6): neighbours below it never reach a user
    match_similarity: float = 1.0 - Settings.match_threshold
    # largest shortlist factor tuning tries: k * 256 candidates re-ranked is still a small part of a search
    max_k_factor: int = 256
    gpu_float16: bool = Settings.gpu_float16

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexPolicy:
        return cls(
            approximate_min_faces=settings.approximate_min_faces,
            opq_min_faces=settings.opq_min_faces,
            target_recall=settings.index_target_recall,
            shortlist_margin=settings.shortlist_margin,
            match_similarity=1.0 - settings.match_threshold,
            gpu_float16=settings.gpu_float16,
        )


def _downcast(index: faiss.Index) -> Any:
    """The index as its own class (IndexRefineFlat, IndexPQFastScan, ...), whose fields faiss's stubs omit."""
    return faiss.downcast_index(index)


class SeenIds:
    """Ids an index was built with or told about. An index built from a database snapshot may be told again
    about faces that snapshot already had; those adds are skipped. Ids never come back after a delete."""

    def __init__(self, snapshot: np.ndarray) -> None:
        self._snapshot = np.sort(snapshot.astype(np.int64))  # 8 bytes a face, not a Python set's ~60
        self._recent: set[int] = set()

    def fresh(self, ids: np.ndarray) -> np.ndarray:
        """Mask of ids not seen before; marks them seen."""
        fresh = np.fromiter((i not in self._recent for i in ids.tolist()), bool, len(ids))
        if len(self._snapshot):
            at = np.minimum(np.searchsorted(self._snapshot, ids), len(self._snapshot) - 1)
            fresh &= self._snapshot[at] != ids
        self._recent.update(ids[fresh].tolist())
        return fresh


class PqRerankIndex:
    """pq-rerank: IndexIDMap over IndexRefineFlat over IndexPQFastScan (optionally behind an OPQ rotation).
    One faiss object holds codes, exact vectors and ids, so index/store.py saves and loads it whole with
    faiss.write_index / read_index."""

    kind = "pq-rerank"

    def __init__(self, index: faiss.IndexIDMap, known_ids: np.ndarray) -> None:
        self.index = index
        self._seen = SeenIds(known_ids)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        fresh = self._seen.fresh(ids)
        if fresh.any():
            self.index.add_with_ids(np.ascontiguousarray(vectors[fresh], dtype=np.float32), ids[fresh])

    def remove(self, ids: np.ndarray) -> None:
        _remove_rerank_ids(self.index, np.ascontiguousarray(ids, dtype=np.int64))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        # The tuned shortlist is TUNED_K * k_factor: the top TUNED_K plus the unrelated faces whose codes
        # outscore a match. Those do not grow with k, so a search for more results adds to the shortlist
        # rather than multiplying it (k=200 at k_factor 8: 270 candidates, not 1,600; RESULTS.md).
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = self.shortlist(k) / k
        return self.index.search(queries, k, params=params)

    def shortlist(self, k: int) -> int:
        """Candidates re-ranked exactly for a search of k results."""
        return max(k, TUNED_K) + round(TUNED_K * (self.k_factor - 1))

    @property
    def rotated(self) -> bool:
        """Codes behind an OPQ rotation."""
        return isinstance(_downcast(_downcast(self.index.index).base_index), faiss.IndexPreTransform)

    @property
    def k_factor(self) -> float:
        """The tuned shortlist factor: TUNED_K * k_factor candidates for the top TUNED_K."""
        return float(_downcast(self.index.index).k_factor)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def __len__(self) -> int:
        return int(self.index.ntotal)


def _remove_rerank_ids(index: faiss.IndexIDMap, ids: np.ndarray) -> None:
    """Deletes from IndexIDMap(IndexRefineFlat(IndexPQFastScan)). IndexRefine has no remove_ids, so the
    rows go from its two parts and the id map alike; all three keep their order, so rows stay aligned.
    Costs a pass over the codes and vectors (0.4 s at 1M faces), not a rebuild."""
    id_map = faiss.vector_to_array(index.id_map)
    rows = np.flatnonzero(np.isin(id_map, ids)).astype(np.int64)
    if not len(rows):
        return
    rows_selector = faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(rows))  # hashed: 1M is_member calls
    refine = _downcast(index.index)
    _downcast(refine.base_index).remove_ids(rows_selector)
    _downcast(refine.refine_index).remove_ids(rows_selector)
    refine.ntotal = refine.base_index.ntotal
    faiss.copy_array_to_vector(np.delete(id_map, rows), index.id_map)
    index.ntotal = refine.ntotal


class ExactIndex:
    """Exact inner product by numpy's BLAS. Measured here against faiss.IndexFlatIP on the same matrix: 2x
    faster for one query and 2.5x for a batch of 64 (faiss scans one query on one thread, and its blocked
    BLAS path selects the top k slowly). Rows live in a growable matrix; a delete moves the last rows into
    the holes, so it costs one scan of the id column, not a copy of the matrix."""

    kind = "flat"
    _CHUNK = 262_144  # database rows per matrix product: bounds the similarity block a batch allocates

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._n = len(ids)
        capacity = max(1024, self._n)
        self._matrix = np.empty((capacity, vectors.shape[1]), dtype=np.float32)
        self._ids = np.empty(capacity, dtype=np.int64)
        self._matrix[: self._n] = vectors
        self._ids[: self._n] = ids
        self._seen = SeenIds(ids)

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * len(self._ids))
        matrix = np.empty((capacity, self._matrix.shape[1]), dtype=np.float32)
        matrix[: self._n] = self._matrix[: self._n]
        ids = np.empty(capacity, dtype=np.int64)
        ids[: self._n] = self._ids[: self._n]
        self._matrix, self._ids = matrix, ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        fresh = self._seen.fresh(ids)
        count = int(fresh.sum())
        if not count:
            return
        if self._n + count > len(self._ids):
            self._grow(self._n + count)
        self._matrix[self._n : self._n + count] = vectors[fresh]
        self._ids[self._n : self._n + count] = ids[fresh]
        self._n += count

    def remove(self, ids: np.ndarray) -> None:
        for row in np.sort(np.flatnonzero(np.isin(self._ids[: self._n], ids)))[::-1]:
            last = self._n - 1
            if row != last:
                self._matrix[row] = self._matrix[last]
                self._ids[row] = self._ids[last]
            self._n = last

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        sims, rows = top_k(self._matrix[: self._n], queries, min(k, self._n), self._CHUNK)
        if k > self._n:  # pad like faiss does
            pad = k - self._n
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        return sims, np.where(rows >= 0, self._ids[np.clip(rows, 0, None)], -1)

    def ids(self) -> np.ndarray:
        return self._ids[: self._n].copy()

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        return self._ids[: self._n], self._matrix[: self._n]

    def __len__(self) -> int:
        return self._n


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

    def ids(self) -> np.ndarray:
        return self._row_ids[~self._dead].copy()

    def __len__(self) -> int:
        return int((~self._dead).sum())


# ------------------------------------------------------------------------------------------- building


def flat(ids: np.ndarray, vectors: np.ndarray) -> ExactIndex:
    return ExactIndex(ids.astype(np.int64), np.ascontiguousarray(vectors, dtype=np.float32))


def tuning_queries(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """New-photo-like probes of people in the session: own embeddings plus noise, cosine 0.6-0.9 to their
    source, the spread measured between real faces and changed photos of them (benchmarks/search_latency.py)."""
    rng = np.random.default_rng(seed)
    rows = vectors[rng.choice(len(vectors), min(count, len(vectors)), replace=False)]
    noise = rng.standard_normal(rows.shape).astype(np.float32) / np.float32(math.sqrt(vectors.shape[1]))
    queries = rows + rng.uniform(0.5, 1.3, (len(rows), 1)).astype(np.float32) * noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, row numbers) of the exact top k, best first, by chunked matrix products."""
    best_sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    if k <= 0:
        return best_sims, best_rows
    for start in range(0, len(vectors), chunk):
        sims = queries @ vectors[start : start + chunk].T
        take = min(k, sims.shape[1])
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take] if take < sims.shape[1] else np.tile(
            np.arange(sims.shape[1]), (len(queries), 1)
        )
        merged_sims = np.concatenate([best_sims, np.take_along_axis(sims, top, 1)], axis=1)
        merged_rows = np.concatenate([best_rows, top + start], axis=1)
        keep = np.argsort(-merged_sims, axis=1, kind="stable")[:, :k]
        best_sims, best_rows = np.take_along_axis(merged_sims, keep, 1), np.take_along_axis(merged_rows, keep, 1)
    return best_sims, best_rows


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def match_recall(
    found: np.ndarray, truth: np.ndarray, truth_sims: np.ndarray, min_similarity: float
) -> float:
    """Recall of the exact top-k neighbours a search can return (similarity >= min_similarity): the others,
    in a big session the best of many unrelated faces at ~0.2, never reach a user. 1.0 if there are none."""
    recalls = [
        len(set(f) & relevant) / len(relevant)
        for f, t, s in zip(found.tolist(), truth.tolist(), truth_sims.tolist())
        if (relevant := {face for face, sim in zip(t, s) if sim >= min_similarity})
    ]
    return float(np.mean(recalls)) if recalls else 1.0


def pq_subquantizers(dim: int) -> int:
    """4-bit PQ codes with one sub-quantizer per 8 dimensions: 32 bytes for 512-d (1.6 % of the vector).
    Measured at 1M people/8 faces: 4 dimensions per sub-quantizer halves the shortlist needed but scans
    twice as long; 16 needs a 20x longer shortlist for the same recall of matches."""
    return dim // 8


# pq-rerank's shortlist is tuned for searches of this many results (PqRerankIndex.search scales it to others)
TUNED_K = 10


def pq_rerank(ids: np.ndarray, vectors: np.ndarray, policy: IndexPolicy, k: int = TUNED_K) -> PqRerankIndex | None:
    """PQ codes for the shortlist, exact vectors for the re-rank, shortlist tuned on the session's data;
    None if no shortlist up to policy.max_k_factor reaches the target recall."""
    if vectors.shape[1] % 8:
        return None
    index = _pq_rerank_index(ids, vectors, rotate=len(ids) >= policy.opq_min_faces)
    k_factor = _tune_k_factor(index, ids, vectors, policy, k)
    if k_factor is None:
        return None
    _downcast(index.index).k_factor = min(policy.max_k_factor, k_factor * policy.shortlist_margin)
    return PqRerankIndex(index, ids)


# OPQ iterations: at 1M faces 10 give recall@10 0.99 with a shortlist of 320 (plain PQ needs 2,560+); each
# costs ~1.2 s on 2 cores, whatever the session's size (it trains on at most 64k faces)
_OPQ_ITERATIONS = 10


def _pq_rerank_index(ids: np.ndarray, vectors: np.ndarray, rotate: bool) -> faiss.IndexIDMap:
    n, dim = vectors.shape
    rng = np.random.default_rng(0)
    subquantizers = pq_subquantizers(dim)
    codes: faiss.Index = faiss.IndexPQFastScan(dim, subquantizers, 4, faiss.METRIC_INNER_PRODUCT)
    sample = np.ascontiguousarray(vectors[rng.choice(n, min(n, 65_536), replace=False)])
    if rotate:
        # a learned rotation first (OPQ), optimised for the 4-bit codes actually used: face embeddings
        # spread unevenly over their dimensions, and plain PQ spends its 16 centroids evenly
        opq = faiss.OPQMatrix(dim, subquantizers)
        opq.niter = _OPQ_ITERATIONS
        trainer = faiss.ProductQuantizer(dim, subquantizers, 4)
        opq.pq = trainer  # not owned by the matrix: kept alive here for the training only
        codes = faiss.IndexPreTransform(opq, codes)
        codes.train(sample)
        opq.pq = None
    else:
        # 16 centroids per sub-quantizer: 64k samples are plenty, and training stays under a second
        codes.train(sample)
    index = faiss.IndexIDMap(faiss.IndexRefineFlat(codes))
    index.add_with_ids(np.ascontiguousarray(vectors), ids.astype(np.int64))
    return index


def _tune_k_factor(
    index: faiss.IndexIDMap, ids: np.ndarray, vectors: np.ndarray, policy: IndexPolicy, k: int
) -> int | None:
    """Smallest power-of-two shortlist factor whose recall@k against exact search, on probes made from the
    session's own faces, reaches the target. Where none does (data with no neighbour structure, where the
    exact top k are the best of many unrelated faces, a few hundredths above the next thousand), the smallest that
    reaches the target recall of matches (similarity >= policy.match_similarity: the only neighbours a
    search returns); None if neither is reached."""
    queries = tuning_queries(vectors, policy.tuning_queries)
    truth_sims, truth_rows = top_k(vectors, queries, k)
    truth = ids[truth_rows]
    refine = _downcast(index.index)
    for_matches = None
    k_factor = 1
    while k_factor <= policy.max_k_factor:
        refine.k_factor = k_factor
        found = index.search(queries, k)[1]
        recall, matches = recall_at(found, truth), match_recall(found, truth, truth_sims, policy.match_similarity)
        if recall >= policy.target_recall:
            log.info(
                "pq-rerank over %d faces: recall@%d %.4f (of matches %.4f) at k_factor %d; margin x%d",
                len(ids), k, recall, matches, k_factor, policy.shortlist_margin,
            )
            return k_factor
        if for_matches is None and matches >= policy.target_recall:
            for_matches = k_factor
        k_factor *= 2
    if for_matches is not None:
        log.info(
            "pq-rerank over %d faces: recall@%d misses %.2f at k_factor %d; tuned on recall of matches "
            "(k_factor %d); margin x%d",
            len(ids), k, policy.target_recall, policy.max_k_factor, for_matches, policy.shortlist_margin,
        )
        return for_matches
    log.info(
        "pq-rerank over %d faces misses recall %.2f at k_factor %d; staying exact",
        len(ids), policy.target_recall, policy.max_k_factor,
    )
    return None


def build_cpu(ids: np.ndarray, vectors: np.ndarray, policy: IndexPolicy) -> PqRerankIndex | ExactIndex:
    if len(ids) >= policy.approximate_min_faces:
        approximate = pq_rerank(ids, vectors, policy)
        if approximate is not None:
            return approximate
    return flat(ids, vectors)


def build_gpu(ids: np.ndarray, vectors: np.ndarray, resources: Any, policy: IndexPolicy) -> TombstoneFlatIndex:
    dim = vectors.shape[1]

    def make_flat() -> faiss.Index:
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = policy.gpu_float16
        return faiss.GpuIndexFlatIP(resources, dim, config)

    index = TombstoneFlatIndex(make_flat)
    if len(ids):
        index.add(ids, vectors)
    return index
