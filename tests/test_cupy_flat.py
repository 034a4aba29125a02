"""The CuPy exact index against exact faiss search (IndexFlatIP): through adds, removes (tombstones and
compaction), batched queries and both top-k paths. Here it runs with numpy as its array module, the same
code CuPy runs; the tests marked gpu run it on CuPy and skip where CuPy sees no CUDA device. Also: placement
picks it, the registry serves it, and a save through the index store loads back into it."""

from __future__ import annotations

import asyncio
import ctypes
import shutil
import subprocess
import types
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


# ------------------------------------------------------------------------------------------------------------
# The selection kernel's own CUDA C, compiled for this CPU: each CUDA thread a thread, __syncthreads a barrier,
# __shared__ one static per block (blocks run one after another). Its logic is checked here, where no GPU is;
# `pytest -m gpu` checks it on CuPy.

_CUDA_ON_THREADS = r"""
#include <atomic>
#include <barrier>
#include <cstring>
#include <thread>
#include <vector>
struct Dim { unsigned int x; };
static thread_local Dim threadIdx, blockIdx;
static Dim blockDim, gridDim;
static std::barrier<>* block_barrier;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline unsigned int atomicAdd(unsigned int* at, unsigned int v) { return std::atomic_ref<unsigned int>(*at).fetch_add(v); }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
"""

_LAUNCH = r"""
extern "C" void launch(const float* scores, const float* maxima, int width, int blocks, int k, int* out, int grid,
                       int threads) {
    blockDim.x = threads;
    gridDim.x = grid;
    for (int b = 0; b < grid; ++b) {
        std::barrier<> barrier(threads);
        block_barrier = &barrier;
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
            pool.emplace_back([=] { threadIdx.x = t; blockIdx.x = b; select_top_k(scores, maxima, width, blocks, k, out); });
        for (auto& thread : pool) thread.join();
    }
}
"""


@pytest.fixture(scope="module")
def select_on_cpu(tmp_path_factory):
    """launch(scores, maxima, k, threads) -> packed rows, by _SELECT_SOURCE built with g++ for this CPU."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ to build the selection kernel for the CPU")
    folder = tmp_path_factory.mktemp("select")
    source = folder / "select.cpp"
    source.write_text(_CUDA_ON_THREADS + cupy_flat._SELECT_SOURCE + _LAUNCH)
    library = folder / "select.so"
    subprocess.run([compiler, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", *cupy_flat.select_options(), str(source), "-o",
                    str(library)], check=True, capture_output=True)
    built = ctypes.CDLL(str(library))

    def launch(scores: np.ndarray, maxima: np.ndarray, k: int, threads: int = cupy_flat._SELECT_THREADS) -> np.ndarray:
        scores, maxima = (np.ascontiguousarray(x, dtype=np.float32) for x in (scores, maxima))
        q, width = scores.shape
        out = np.full((q, 2 * k + 1), -7, dtype=np.int32)  # poisoned: every cell read must have been written
        pointer = ctypes.c_void_p
        built.launch(pointer(scores.ctypes.data), pointer(maxima.ctypes.data), ctypes.c_int(width),
                     ctypes.c_int(maxima.shape[1]), ctypes.c_int(k), pointer(out.ctypes.data), ctypes.c_int(q),
                     ctypes.c_int(threads))
        return out

    return launch


def _maxima(scores: np.ndarray) -> np.ndarray:
    return scores.reshape(len(scores), -1, cupy_flat._BLOCK).max(axis=2)


def _exact_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best per row, larger score first, smaller column first among equal scores."""
    columns = np.array([np.lexsort((np.arange(row.size), -row))[:k] for row in scores])
    return np.take_along_axis(scores, columns, 1), columns


def _unpack(out: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return out[:, 0], np.ascontiguousarray(out[:, 1 : k + 1]).view(np.float32), out[:, k + 1 :]


def _hard_scores(seed: int) -> np.ndarray:
    """Three queries' scores over 600 blocks as the scoring kernel leaves them, with the cases that matter."""
    rng = np.random.default_rng(seed)
    blocks, n = 600, 600 * cupy_flat._BLOCK - 77
    scores = rng.standard_normal((3, blocks * cupy_flat._BLOCK)).astype(np.float32)
    scores[:, n:] = -np.inf  # past the last face, as the scoring kernel writes them
    scores[:, rng.choice(n, 500, replace=False)] = -np.inf  # dead rows
    scores[0, n - 1] = 10.0  # the best face in the last block
    scores[1, 5_000:5_010] = 9.0  # a person's faces: ten equal best scores, in order of column
    scores[2] = np.round(scores[2], 2)  # ties everywhere
    return scores


@pytest.mark.parametrize(("k", "threads"), [(10, 1024), (200, 1024), (1, 256), (37, 256)])
def test_selection_kernel_on_the_cpu_equals_exact_top_k(select_on_cpu, k: int, threads: int):
    scores = _hard_scores(k)
    maxima = _maxima(scores)
    count, values, columns = _unpack(select_on_cpu(scores, maxima, k, threads), k)
    want_values, want_columns = _exact_top(scores, k)
    # gathered: exactly the scores >= the k-th largest block maximum (a lower threshold would only cost time)
    threshold = -np.sort(-maxima, axis=1)[:, k - 1 : k]
    assert count.tolist() == (scores >= threshold).sum(axis=1).tolist()
    assert np.array_equal(values, want_values)
    assert np.array_equal(columns, want_columns)


def test_selection_kernel_on_the_cpu_gives_up_rows_past_its_room(select_on_cpu):
    # all scores equal: every block is chosen (over MAX_CHOSEN); -inf alike; a NaN threshold finds nothing
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((4, 1_200 * cupy_flat._BLOCK)).astype(np.float32)
    scores[0] = 0.5
    scores[1] = -np.inf
    scores[2, :3000] = np.nan
    count, values, columns = _unpack(select_on_cpu(scores, _maxima(scores), 10), 10)
    assert count[:3].tolist() == [-1, -1, -1]
    assert count[3] >= 10
    want_values, want_columns = _exact_top(scores[3:], 10)
    assert np.array_equal(values[3:], want_values) and np.array_equal(columns[3:], want_columns)


class _CupyOnCpu(types.ModuleType):
    """numpy under CuPy's name, so CupyFlatIndex takes its CuPy-only branches here: RawKernel runs the
    selection kernel built for this CPU, and the scoring kernel as numpy (that kernel itself is checked against
    the GEMM by `pytest -m gpu`). Keeps each selection launch's packed rows."""

    def __init__(self, select_on_cpu) -> None:
        super().__init__("cupy")
        self._select_on_cpu = select_on_cpu
        self.selected: list[np.ndarray] = []

    def __getattr__(self, name: str):
        return getattr(np, name)  # no `cuda`: the index then stays off CuPy's device context

    def RawKernel(self, source: str, name: str, options: tuple[str, ...] = ()):
        def score_blocks(grid, block, args, **launch):  # launch: shared_mem
            matrix, queries, flags, has_dead, n, *_, scores, maxima = args
            scores[:] = queries @ matrix.astype(np.float32).T
            scores[:, int(n) :] = -np.inf
            if has_dead:
                scores[:, np.flatnonzero(flags[: int(n)])] = -np.inf
            maxima[:] = _maxima(scores)

        def select_top_k(grid, block, args):
            scores, maxima, _, _, k, packed = args
            packed[:] = self._select_on_cpu(scores, maxima, int(k), threads=256)
            self.selected.append(packed.copy())

        assert name in ("score_blocks", "select_top_k")
        return score_blocks if name == "score_blocks" else select_top_k


@pytest.fixture
def cupy_on_cpu(select_on_cpu, monkeypatch):
    monkeypatch.setattr(cupy_flat, "_kernels", {})
    monkeypatch.setattr(cupy_flat, "_kernel_failed", False)
    monkeypatch.setattr(cupy_flat, "_select_failed", False)
    fake = _CupyOnCpu(select_on_cpu)
    yield fake
    assert not cupy_flat._kernel_failed and not cupy_flat._select_failed


@pytest.mark.parametrize(("n", "k"), [(20_000, 10), (60_000, 200)])
def test_search_through_the_selection_kernel_on_the_cpu_equals_exact_faiss_search(cupy_on_cpu, n: int, k: int):
    _check_against_faiss(cupy_on_cpu, float16=False, n=n, k=k, atol=1e-4)
    assert cupy_on_cpu.selected and all((packed[:, 0] >= k).all() for packed in cupy_on_cpu.selected)


def _search_with_a_row_past_the_kernels_room(xp) -> None:
    # one face photographed 3,000 times: 3,001 equal best scores for query 3, more than the kernel holds
    vectors, ids = _unit(20_000, 11), np.arange(20_000, dtype=np.int64)
    vectors[1_000:4_000] = vectors[0]
    index = cupy_flat.build(ids, vectors, float16=False, xp=xp)
    queries = _unit(8, 12)
    queries[3] = vectors[0]
    Exact(ids, vectors, queries).assert_same(index.search(queries, 10), 10, 1e-4)


def test_rows_past_the_selection_kernels_room_are_answered_exactly_by_the_array_module(cupy_on_cpu):
    _search_with_a_row_past_the_kernels_room(cupy_on_cpu)
    (packed,) = cupy_on_cpu.selected
    assert packed[3, 0] == -1 and (np.delete(packed[:, 0], 3) >= 10).all()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("k", [1, 10, 200])
def test_selection_kernel_on_cupy_equals_exact_top_k(k: int):
    scores = _hard_scores(k)
    selected = cupy_flat.select_top_k(CUPY, CUPY.asarray(scores), CUPY.asarray(_maxima(scores)), k)
    assert selected is not None, "the selection kernel did not run"
    want_values, want_columns = _exact_top(scores, k)
    assert np.array_equal(selected[0], want_values) and np.array_equal(selected[1], want_columns)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("float16", [False, True], ids=["float32", "float16"])
def test_cupy_search_through_both_kernels_equals_exact_faiss_search(float16: bool):
    # 120k faces: 469 blocks, so k=200 too goes through the selection kernel (1 and 8 queries)
    _check_against_faiss(CUPY, float16=float16, n=120_000, k=200, atol=1e-4 if not float16 else 1e-3)
    _search_with_a_row_past_the_kernels_room(CUPY)
    assert not cupy_flat._kernel_failed and not cupy_flat._select_failed
