"""FAISS indexes on real FAISS: exact cosine search, deletes, duplicate adds, the GPU-style tombstone index
(run here over a CPU flat index), placement, and a registry under concurrent add/remove/search."""

from __future__ import annotations

import asyncio

import faiss
import numpy as np
import pytest

from faceserve.index import IndexRegistry, choose_placement
from faceserve.index_kinds import TombstoneFlatIndex, flat

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


async def test_registry_under_concurrent_add_remove_search():
    vectors, ids = _unit(400, 4), np.arange(1, 401, dtype=np.int64)
    committed = set(ids[:100].tolist())  # the "database": faces the index is built from

    async def load(session_id: int):
        await asyncio.sleep(0.01)  # a real query takes a moment; adds and removes may commit meanwhile
        rows = np.array(sorted(committed), dtype=np.int64)
        return rows, vectors[rows - 1]

    registry = IndexRegistry(DIM, load, device="cpu")
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
        removed = np.concatenate([ids[s : s + 10] for s in range(0, 100, 20)])
        alive_ids = ids[~np.isin(ids, removed)]
        assert len(index) == len(alive_ids)
        _, found = await registry.search(1, vectors[alive_ids - 1], 1)
        assert found[:, 0].tolist() == alive_ids.tolist()  # every live face finds itself
        _, found = await registry.search(1, vectors[removed - 1], 3)
        assert not np.isin(found, removed).any()
    finally:
        registry.close()
