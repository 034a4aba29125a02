"""The CuPy exact index against exact faiss search (IndexFlatIP): through adds, removes (tombstones and
compaction), batched queries and both top-k paths. Here it runs with numpy as its array module, the same
code CuPy runs; the tests marked gpu run it on CuPy and skip where CuPy sees no CUDA device. Also: placement
picks it, the registry serves it, and a save through the index store loads back into it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faiss
import numpy as np
import pytest

from faceserve.index import cupy_flat
from faceserve.index.cupy_flat import CupyFlatIndex
from faceserve.index.registry import IndexRegistry, choose_placement
from faceserve.index.store import IndexStore
from faceserve.layout import SessionLayout

DIM = 64
CUPY = cupy_flat.load_cupy()
needs_cuda = pytest.mark.skipif(CUPY is None, reason="CuPy sees no CUDA device (or is not installed)")


def _unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Exact:
    """Exact faiss search (IndexFlatIP) over the live faces, and the float64 similarity of any (query, id)."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray) -> None:
        self.vectors = dict(zip(ids.tolist(), vectors.astype(np.float64)))
        self.queries = queries
        self.index = faiss.IndexIDMap(faiss.IndexFlatIP(vectors.shape[1]))
        self.index.add_with_ids(np.ascontiguousarray(vectors), ids)

    def assert_same(self, found: tuple[np.ndarray, np.ndarray], k: int, atol: float) -> None:
        """Same ids and similarities within atol; two faces may trade places only where their similarities
        are within atol (their order is then rounding: cuBLAS, numpy's BLAS and faiss sum differently)."""
        sims, ids = found
        want_sims, want_ids = self.index.search(self.queries, k)
        short = want_ids < 0  # faiss pads a short row with id -1 (and -FLT_MAX); so must we (-1, -inf)
        assert np.array_equal(ids < 0, short)
        assert np.all(np.isneginf(sims[short]))
        assert np.allclose(sims[~short], want_sims[~short], atol=atol, rtol=0)
        for row in range(len(ids)):
            live = ids[row][ids[row] >= 0].tolist()
            assert len(set(live)) == len(live) and set(live) <= self.vectors.keys()
            exact = [float(self.queries[row].astype(np.float64) @ self.vectors[face]) for face in live]
            assert np.allclose(sims[row][: len(live)], exact, atol=atol, rtol=0)  # each id with its own score
        for row, col in zip(*np.nonzero(ids != want_ids)):
            assert abs(want_sims[row, col] - float(self.queries[row] @ self.vectors[ids[row, col]])) <= 2 * atol


def _check_against_faiss(xp, float16: bool, n: int, k: int, atol: float) -> None:
    vectors, ids = _unit(n, 1), np.arange(10_000, 10_000 + n, dtype=np.int64)
    queries = _unit(37, 2)
    if float16:  # what the index compares: vectors and queries rounded to float16, products summed in float32
        held, queries = (x.astype(np.float16).astype(np.float32) for x in (vectors, queries))
    else:
        held = vectors
    index = CupyFlatIndex(DIM, xp, float16=float16)
    index.add(ids[: n // 2], vectors[: n // 2])
    index.add(ids[n // 3 :], vectors[n // 3 :])  # overlapping add: ids already in must not be doubled
    assert len(index) == n
    alive = np.ones(n, dtype=bool)

    def check() -> None:
        assert len(index) == int(alive.sum())
        # 37 queries go through the GEMM; 1 and 8 through the scoring kernel on CuPy (the GEMM on numpy)
        for some in (queries, queries[:1], queries[:8]):
            Exact(ids[alive], held[alive], some).assert_same(index.search(some, k), k, atol)

    check()
    alive[5 : n // 20] = False
    index.remove(ids[5 : n // 20])  # under a fifth: tombstones, masked at search
    check()
    alive[::3] = False
    index.remove(ids[::3])  # past a fifth: compacted
    check()
    index.add(ids[:7], vectors[:7])  # removed faces may come back (a re-import)
    alive[:7] = True
    check()
    exported_ids, exported = index.export()
    assert sorted(exported_ids.tolist()) == ids[alive].tolist()
    assert np.array_equal(exported[np.argsort(exported_ids)], held[alive])


@pytest.mark.parametrize(
    ("n", "k"),
    [(20_000, 10), (5_000, 1), (5_000, 200), (300, 10), (40, 100)],
    ids=["block-selection", "k=1", "whole-row-sort", "one-block", "k-past-the-faces"],
)
def test_numpy_path_equals_exact_faiss_search(n: int, k: int):
    _check_against_faiss(np, float16=False, n=n, k=k, atol=1e-4)


def test_numpy_path_in_float16_equals_exact_search_over_the_rounded_vectors():
    _check_against_faiss(np, float16=True, n=3_000, k=10, atol=1e-4)


def test_batches_larger_than_the_scores_budget_are_split(monkeypatch):
    monkeypatch.setattr(cupy_flat, "_SCORES_BUDGET", 4 * 1024 * 5)  # 5 queries per group at 1,024 columns
    vectors, ids = _unit(1_000, 3), np.arange(1_000, dtype=np.int64)
    index = cupy_flat.build(ids, vectors, float16=False, xp=np)
    queries = _unit(23, 4)
    Exact(ids, vectors, queries).assert_same(index.search(queries, 10), 10, 1e-4)


def test_empty_index_answers_padding():
    index = cupy_flat.build(np.empty(0, np.int64), np.empty((0, DIM), np.float32), float16=False, xp=np)
    sims, ids = index.search(_unit(3, 5), 4)
    assert ids.shape == (3, 4) and (ids == -1).all() and np.isneginf(sims).all()


def test_placement_prefers_faiss_gpu_then_cupy_then_cpu():
    faiss_gpu = hasattr(faiss, "GpuIndexFlatIP")
    assert choose_placement("auto", 1, 1) == ("gpu" if faiss_gpu else "cupy")
    assert choose_placement("auto", 0, 1) == "cupy"
    assert choose_placement("cuda", 0, 1) == "cupy"
    assert choose_placement("cpu", 1, 1) == "cpu"
    assert choose_placement("auto", 0, 0) == "cpu"


@pytest.mark.skipif(hasattr(faiss, "GpuIndexFlatIP"), reason="a GPU faiss is preferred to CuPy here")
async def test_registry_serves_the_cupy_index_and_reloads_it_from_the_store(monkeypatch, tmp_path: Path):
    """The registry's cupy branch, with numpy standing in for CuPy (this machine has no GPU): built from the
    database, kept in step by add/remove, saved, and loaded back from the saved copy into a CuPy index."""
    monkeypatch.setattr(cupy_flat, "device_count", lambda: 1)
    monkeypatch.setattr(cupy_flat, "load_cupy", lambda: np)
    vectors, ids = _unit(600, 6), np.arange(1, 601, dtype=np.int64)
    committed = set(ids[:400].tolist())

    async def load(session_id: int, expected: int | None):
        rows = np.array(sorted(committed), dtype=np.int64)
        return rows, vectors[rows - 1]

    async def stats(session_id: int):
        return len(committed), max(committed)

    store = IndexStore(SessionLayout(tmp_path), "test")
    registry = IndexRegistry(DIM, load, device="auto", stats=stats, store=store)
    try:
        assert registry.placement == "cupy"
        index = await registry.get(1)
        assert isinstance(index, CupyFlatIndex) and registry.sources[1] == "database"
        committed.update(ids[400:].tolist())
        await registry.add(1, ids[400:], vectors[400:])
        gone = ids[10:20]
        committed.difference_update(gone.tolist())
        await registry.remove(1, gone)
        await registry.save_changed()
        queries = _unit(9, 7)
        first = await registry.search(1, queries, 10)
        alive = np.array(sorted(committed), dtype=np.int64)
        Exact(alive, vectors[alive - 1], queries).assert_same(first, 10, 1e-4)
    finally:
        registry.close()
    reopened = IndexRegistry(DIM, load, device="auto", stats=stats, store=store)
    try:
        index = await reopened.get(1)
        assert isinstance(index, CupyFlatIndex) and reopened.sources[1] == "disk"
        again = await reopened.search(1, queries, 10)
        assert np.array_equal(again[1], first[1]) and np.allclose(again[0], first[0], atol=1e-6)
        # a lone query while a batch is queued: both answered, each with its own k
        single, batch = await asyncio.gather(reopened.search(1, queries[:1], 3), reopened.search(1, queries, 10))
        assert np.array_equal(single[1], first[1][:1, :3]) and np.array_equal(batch[1], first[1])
    finally:
        reopened.close()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("float16", [False, True], ids=["float32", "float16"])
@pytest.mark.parametrize(("n", "k"), [(50_000, 10), (50_000, 200), (300, 10)])
def test_cupy_equals_exact_faiss_search(float16: bool, n: int, k: int):
    _check_against_faiss(CUPY, float16=float16, n=n, k=k, atol=1e-4 if not float16 else 1e-3)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("float16", [False, True], ids=["float32", "float16"])
def test_scoring_kernel_equals_the_gemm_and_masks_dead_rows_and_the_tail(monkeypatch, float16: bool):
    n, dim = 5_000, 512
    index = cupy_flat.build(np.arange(n, dtype=np.int64), _unit(n, 9, dim=dim), float16=float16)
    index.remove(np.arange(100, 300))  # tombstones (under a fifth): masked by the kernel's flags
    width = -(-n // cupy_flat._BLOCK) * cupy_flat._BLOCK
    for q in (1, 3, cupy_flat._KERNEL_QUERIES):
        queries = _unit(q, 10 + q, dim=dim)
        scored = cupy_flat.score_blocks(CUPY, index._matrix[:width], queries, n, index._dead_flags)
        assert scored is not None, "the kernel did not run"
        scores, maxima = (CUPY.asnumpy(x) for x in scored)
        want = CUPY.asnumpy(cupy_flat.similarities(CUPY, index._matrix[:width], CUPY.asarray(queries)))
        want[:, n:] = want[:, 100:300] = -np.inf
        assert np.allclose(scores, want, atol=1e-5 if not float16 else 1e-3, rtol=0)
        assert np.array_equal(np.isneginf(scores), np.isneginf(want))
        assert np.allclose(maxima, want.reshape(q, -1, cupy_flat._BLOCK).max(axis=2), atol=1e-3, rtol=0)
    monkeypatch.setattr(cupy_flat, "use_score_kernel", False)
    assert cupy_flat.score_blocks(CUPY, index._matrix[:width], queries, n, index._dead_flags) is None


@pytest.mark.gpu
@needs_cuda
def test_cupy_float16_memory_is_about_a_kilobyte_a_face():
    n = 100_000
    index = cupy_flat.build(np.arange(n, dtype=np.int64), _unit(n, 8, dim=512), float16=True)
    assert index.nbytes / n <= 1.1 * 1024
