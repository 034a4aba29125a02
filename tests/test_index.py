"""FAISS indexes on real FAISS: exact cosine search, deletes, duplicate adds, the GPU-style tombstone index
(run here over a CPU flat index), placement, a registry under concurrent add/remove/search, and the
pq-rerank index of big sessions (alignment through deletes, lone faces, fallback to exact)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from faceserve.index.kinds import (
    IndexPolicy,
    TombstoneFlatIndex,
    build_cpu,
    flat,
    match_recall,
    pq_rerank,
    top_k,
)
from faceserve.index.registry import IndexRegistry, choose_placement

DIM = 64


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return ids[np.argsort(-(vectors @ query))[:k]].tolist()


@pytest.mark.parametrize(
    "make",
    [
        lambda: flat(np.empty(0, np.int64), np.empty((0, DIM), np.float32)),
        lambda: TombstoneFlatIndex(lambda: faiss.IndexFlatIP(DIM)),
    ],
)
def test_search_matches_brute_force_through_adds_and_removes(make):
    index = make()
    vectors, ids = _unit(500, 1), np.arange(1000, 1500, dtype=np.int64)
    index.add(ids[:300], vectors[:300])
    index.add(ids[200:], vectors[200:])  # overlapping add: ids 1200..1299 must not be doubled
    assert len(index) == 500
    removed = ids[::3]
    index.remove(removed)  # a third: crosses the compaction ratio of the tombstone index
    keep = ~np.isin(ids, removed)
    assert len(index) == int(keep.sum())
    queries = _unit(20, 2)
    sims, found = index.search(queries, 10)
    for q, row_sims, row_ids in zip(queries, sims, found):
        assert row_ids.tolist() == _exact(vectors[keep], ids[keep], q, 10)
        assert np.allclose(row_sims, np.sort(vectors[keep] @ q)[::-1][:10], atol=1e-5)


def test_tombstones_are_filtered_before_compaction():
    index = TombstoneFlatIndex(lambda: faiss.IndexFlatIP(DIM))
    vectors, ids = _unit(100, 3), np.arange(100, dtype=np.int64)
    index.add(ids, vectors)
    index.remove(np.array([7]))  # 1 %: stays a tombstone
    _, found = index.search(vectors[7:8], 5)
    assert 7 not in found[0].tolist() and len(found[0]) == 5


def test_placement():
    assert choose_placement("auto", 0) == "cpu"
    assert choose_placement("cpu", 4) == "cpu"
    expected = "gpu" if hasattr(faiss, "GpuIndexFlatIP") else "cpu"
    assert choose_placement("auto", 1) == expected


# shortlists longer than the session: approximate kinds then answer exactly, so a lost or stale face shows
_COVERING = {"shortlist_margin": 1_000, "max_k_factor": 1_000, "approximate_min_faces": 0}


@pytest.mark.parametrize(
    ("policy", "kind"),
    [
        (None, "flat"),
        (IndexPolicy(**_COVERING, opq_min_faces=10**9), "pq-rerank"),
        (IndexPolicy(**_COVERING, opq_min_faces=0), "pq-rerank"),
    ],
    ids=["flat", "pq-rerank", "pq-rerank-opq"],
)
async def test_registry_under_concurrent_add_remove_search(policy, kind):
    vectors, ids = _unit(400, 4), np.arange(1, 401, dtype=np.int64)
    committed = set(ids[:100].tolist())  # the "database": faces the index is built from

    async def load(session_id: int, expected: int | None):
        await asyncio.sleep(0.01)  # a real query takes a moment; adds and removes may commit meanwhile
        rows = np.array(sorted(committed), dtype=np.int64)
        return rows, vectors[rows - 1]

    registry = IndexRegistry(DIM, load, device="cpu", policy=policy)
    try:
        async def searcher():
            for _ in range(30):
                await registry.search(1, vectors[:4], 5)

        async def adder():
            for start in range(100, 400, 50):
                # commit to the "database" first, then tell the index, as ingest does
                committed.update(ids[start : start + 50].tolist())
                await registry.add(1, ids[start : start + 50], vectors[start : start + 50])
                await asyncio.sleep(0)

        async def remover():
            for start in range(0, 100, 20):
                gone = ids[start : start + 10]
                committed.difference_update(gone.tolist())
                await registry.remove(1, gone)

        # the adder runs first, before anything built the index: its faces must come from the database
        await asyncio.gather(adder(), searcher(), remover(), searcher())
        index = await registry.get(1)
        assert index.kind == kind
        removed = np.concatenate([ids[s : s + 10] for s in range(0, 100, 20)])
        alive_ids = ids[~np.isin(ids, removed)]
        assert len(index) == len(alive_ids)
        _, found = await registry.search(1, vectors[alive_ids - 1], 1)
        assert found[:, 0].tolist() == alive_ids.tolist()  # every live face finds itself
        _, found = await registry.search(1, vectors[removed - 1], 3)
        assert not np.isin(found, removed).any()
    finally:
        registry.close()


def _pq_rerank_covering_everything(ids: np.ndarray, vectors: np.ndarray, rotated: bool = False):
    """A pq-rerank index whose shortlist is longer than the index: every answer must then be exact, so any
    misalignment of codes, vectors and ids after adds and removes shows as a wrong answer."""
    policy = IndexPolicy(shortlist_margin=1_000, max_k_factor=1_000, opq_min_faces=0 if rotated else 10**9)
    index = pq_rerank(ids, vectors, policy)
    assert index is not None and index.kind == "pq-rerank"
    return index


@pytest.mark.parametrize("rotated", [False, True], ids=["pq", "opq"])
def test_pq_rerank_stays_exact_through_adds_and_removes(rotated):
    vectors, ids = _unit(600, 4), np.arange(1000, 1600, dtype=np.int64)
    index = _pq_rerank_covering_everything(ids[:300], vectors[:300], rotated)
    assert index.rotated == rotated
    index.add(ids[200:], vectors[200:])  # overlapping add: ids 1200..1299 must not be doubled
    assert len(index) == 600
    removed = np.concatenate([ids[::3], [99_999]])  # one id it never had
    index.remove(removed)
    keep = ~np.isin(ids, removed)
    assert len(index) == int(keep.sum())
    assert np.array_equal(np.sort(index.ids()), ids[keep])
    queries = _unit(20, 5)
    sims, found = index.search(queries, 10)
    for q, row_sims, row_ids in zip(queries, sims, found):
        assert row_ids.tolist() == _exact(vectors[keep], ids[keep], q, 10)
        assert np.allclose(row_sims, np.sort(vectors[keep] @ q)[::-1][:10], atol=1e-5)


def test_pq_rerank_finds_faces_of_people_with_one_photo_first():
    # what an IVF lost: a face alone in the session is found only if its list is probed
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import gallery

    vectors = gallery.people(30_000, dim=128, per_person=8)
    singles = gallery.uniform(30, dim=128, seed=9)
    vectors[:30] = singles
    ids = np.arange(len(vectors), dtype=np.int64)
    index = pq_rerank(ids, vectors, IndexPolicy())
    assert index is not None
    rng = np.random.default_rng(2)
    changed = singles + 0.8 * rng.standard_normal(singles.shape).astype(np.float32) / np.sqrt(128)
    changed /= np.linalg.norm(changed, axis=1, keepdims=True)  # cosine ~0.78 to the original
    sims, found = index.search(changed, 1)
    assert found[:, 0].tolist() == list(range(30))
    assert np.allclose(sims[:, 0], np.sum(changed * singles, axis=1), atol=1e-5)  # exact, not the PQ estimate


def test_pq_rerank_search_for_many_results_finds_every_match_with_a_short_shortlist():
    # the search endpoint asks for 4 x limit candidates (200): people with many photos have far more than
    # 10 matches, and all of them must come back, while the shortlist grows by k, not k * k_factor
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import gallery

    vectors = gallery.people(40_000, dim=128, per_person=64)
    ids = np.arange(len(vectors), dtype=np.int64)
    index = pq_rerank(ids, vectors, IndexPolicy())
    assert index is not None and index.k_factor > 1
    assert index.shortlist(10) == 10 * index.k_factor  # what tuning measured
    assert index.shortlist(200) < 200 * index.k_factor / 2
    queries = gallery.queries_like(vectors, 50)
    truth_sims, truth_rows = top_k(vectors, queries, 200)
    assert (truth_sims >= 0.4).sum(axis=1).mean() > 20  # many matches per query, not a top-10 question
    sims, found = index.search(queries, 200)
    assert match_recall(found, ids[truth_rows], truth_sims, 0.4) >= 0.99
    assert np.allclose(sims[:, 0], truth_sims[:, 0], atol=1e-5)


def test_tuning_that_misses_the_target_stays_exact():
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import gallery

    vectors = gallery.people(20_000, dim=128, per_person=8)
    ids = np.arange(len(vectors), dtype=np.int64)
    # a shortlist of k itself (k_factor 1) cannot reach 0.99 here: 128-d codes of 16 bytes are too coarse
    assert pq_rerank(ids, vectors, IndexPolicy(max_k_factor=1)) is None
    assert build_cpu(ids, vectors, IndexPolicy(approximate_min_faces=10_000, max_k_factor=1)).kind == "flat"


def test_match_recall_counts_only_neighbours_within_the_threshold():
    truth = np.array([[1, 2, 3]])
    sims = np.array([[0.7, 0.5, 0.2]])
    assert match_recall(np.array([[1, 2, 9]]), truth, sims, 0.4) == 1.0  # 3 is below 0.4: not a match
    assert match_recall(np.array([[1, 9, 3]]), truth, sims, 0.4) == 0.5
    assert match_recall(np.array([[9, 9, 9]]), truth, sims, 0.9) == 1.0  # nothing to find
