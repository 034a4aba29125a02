"""An exact GPU index on CuPy, for GPU deployments whose faiss has no GPU build.

The GPU faiss wheels need CUDA 12's cuBLAS (~580 MB) beside a CUDA 13 stack (benchmarks/GPU_PLAN.md), while
CuPy ships with the CUDA 13 images. The index is the session's faces as one matrix in GPU memory (float16
halves it: 1 KB a 512-d face), a search is one GEMM (float16 or float32 in, float32 out) and an exact top k;
it answers like index_kinds.TombstoneFlatIndex (the faiss GPU flat): rows map to face ids through a host
array, deletes are tombstones masked out at search and compacted away once they reach a fifth of the rows.

The exact top k without a full sort: scores are cut into blocks of _BLOCK columns; the k blocks with the
largest maxima hold every one of the k best scores (a score outside them is beaten by k block maxima), so
only k * _BLOCK candidates per query are sorted. A few queries at once (a guest's selfie: one) are scored by
one kernel (_SCORE_BLOCKS) that reads each row once, masks rows past the end and dead rows, and writes the
block maxima beside the scores: cuBLAS's GEMM with one column reads the matrix at a fraction of the memory
bandwidth, and the masking and maxima were three more passes (benchmarks/GPU_PLAN.md has the measurements).
Then one more kernel (_SELECT_SOURCE) finishes the top k from those maxima on the device, one CUDA block a
query, and one copy brings (count, scores, columns) back: the array module's top k was a dozen small kernels
and two copies, where run 3 (RESULTS.md) put most of a single query's 1.6-2.1 ms at 1M faces on an H200
(the scoring kernel alone is timed by gpu_bench.py index since; not yet on a GPU). The code
is written against the array module `xp`: CuPy on a GPU, numpy in the tests on CPU, so the same lines are
checked there against exact faiss search (and the selection kernel's CUDA C, built for the CPU).
Blocking: called on the index owner thread only (index.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# columns per block of the top-k selection; k * _BLOCK candidates per query are sorted
_BLOCK = 256
# largest similarity block one group of queries may allocate (bytes): bounds memory of a big batch
_SCORES_BUDGET = 1 << 30
# most queries one _SCORE_BLOCKS launch scores (each warp keeps this many sums); larger batches use the GEMM
_KERNEL_QUERIES = 8

# One CUDA block of _BLOCK threads (8 warps) scores one block of _BLOCK rows: each warp takes 32 rows, a row's
# dim values are read by the 32 lanes 16 bytes at a time (coalesced: a 512-d float16 row is two 512-byte
# loads), summed in float32 against the queries held in shared memory, and reduced across the warp. Rows at or
# past n and rows flagged dead score -inf. Then the block's maximum per query goes to maxima[q][block].
# ROW_HALF selects float16 rows (converted by PTX: no CUDA headers needed by NVRTC), else float32.
_SCORE_BLOCKS_SOURCE = r"""
#ifdef ROW_HALF
#define PER_LOAD 8
__device__ __forceinline__ void widen(const unsigned int* w, float* out) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        unsigned short lo = (unsigned short)(w[i] & 0xffffu), hi = (unsigned short)(w[i] >> 16);
        float a, b;
        asm("cvt.f32.f16 %0, %1;" : "=f"(a) : "h"(lo));
        asm("cvt.f32.f16 %0, %1;" : "=f"(b) : "h"(hi));
        out[2 * i] = a;
        out[2 * i + 1] = b;
    }
}
#else
#define PER_LOAD 4
__device__ __forceinline__ void widen(const unsigned int* w, float* out) {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = __int_as_float((int)w[i]);
}
#endif
#define MAX_Q 8
#define WARPS 8

struct alignas(16) Words { unsigned int w[4]; };

extern "C" __global__ void score_blocks(const Words* matrix, const float* queries, const unsigned char* dead,
                                        int has_dead, int n, int dim, int q, int width,
                                        float* scores, float* maxima) {
    extern __shared__ float shared[];
    float* query = shared;                 /* q * dim */
    __shared__ float warp_max[WARPS][MAX_Q];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int i = threadIdx.x; i < q * dim; i += blockDim.x) query[i] = queries[i];
    __syncthreads();
    const float neg_inf = __int_as_float(0xff800000);
    float best[MAX_Q];
#pragma unroll
    for (int j = 0; j < MAX_Q; ++j) best[j] = neg_inf;
    const int words_per_row = dim / PER_LOAD;
    const int first = blockIdx.x * (WARPS * 32) + warp * 32;
    for (int r = 0; r < 32; ++r) {
        const int row = first + r;
        float sum[MAX_Q];
#pragma unroll
        for (int j = 0; j < MAX_Q; ++j) sum[j] = 0.0f;
        if (row < n) {
            const Words* words = matrix + (long long)row * words_per_row;
            for (int c = lane; c < words_per_row; c += 32) {
                Words loaded = words[c];
                float v[PER_LOAD];
                widen(loaded.w, v);
#pragma unroll
                for (int j = 0; j < MAX_Q; ++j) {
                    if (j < q) {
                        const float* x = query + j * dim + c * PER_LOAD;
                        float s = 0.0f;
#pragma unroll
                        for (int i = 0; i < PER_LOAD; ++i) s += v[i] * x[i];
                        sum[j] += s;
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < MAX_Q; ++j) {
            if (j < q) {
                float s = sum[j];
                for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
                sum[j] = s;
            }
        }
        if (lane == 0) {
            const bool gone = row >= n || (has_dead && dead[row]);
#pragma unroll
            for (int j = 0; j < MAX_Q; ++j) {
                if (j < q) {
                    const float s = gone ? neg_inf : sum[j];
                    scores[(long long)j * width + row] = s;
                    best[j] = fmaxf(best[j], s);
                }
            }
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int j = 0; j < MAX_Q; ++j)
            if (j < q) warp_max[warp][j] = best[j];
    }
    __syncthreads();
    if (threadIdx.x < q) {
        float m = neg_inf;
        for (int w = 0; w < WARPS; ++w) m = fmaxf(m, warp_max[w][threadIdx.x]);
        maxima[(long long)threadIdx.x * gridDim.x + blockIdx.x] = m;
    }
}
"""


# The selection kernel's shared memory: candidates (score >= the threshold) and chosen blocks it holds; a
# query with more is answered by the xp top_k below, as is a k over the chosen blocks' room or above blocks.
_SELECT_MAX_CANDIDATES = 2048
_SELECT_MAX_CHOSEN = 1024
_SELECT_THREADS = 1024

# The exact top k of one query per CUDA block, from the scores and block maxima _SCORE_BLOCKS wrote, in one
# launch: (1) t = the k-th largest block maximum, by a radix select over the maxima's order-preserving bit
# keys (4 passes of 8 bits); every one of the k best scores is >= t (the k block maxima >= t are k scores
# >= t); (2) the blocks whose maximum is >= t (k of them, more only on ties) are read, and their scores >= t
# gathered into shared memory; (3) a bitonic sort of the gathered (score desc, column asc); the first k out.
# out[query] = [count, k score bits, k columns]; count -1 where a query's candidates or chosen blocks did not
# fit (many ties, -inf blocks) or fewer than k were found (NaN): the caller answers those by the xp path.
# MAX_CANDIDATES and MAX_CHOSEN come as -D options (select_options()).
# Launched with blockDim.x >= 256 (one thread a digit of the scan) and a multiple of 32.
# Plain CUDA C (shared memory, __syncthreads, atomicAdd) and nothing else: tests/test_cupy_flat.py also
# compiles it for the CPU with a shim, one thread per CUDA thread, to check the logic where no GPU is.
_SELECT_SOURCE = r"""
__device__ __forceinline__ unsigned int order_key(float value) {
    unsigned int bits = __float_as_uint(value);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float key_value(unsigned int key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

/* a goes before b: the larger score, then the smaller column */
__device__ __forceinline__ bool before(unsigned int key_a, int col_a, unsigned int key_b, int col_b) {
    return key_a > key_b || (key_a == key_b && col_a < col_b);
}

extern "C" __global__ void select_top_k(const float* scores, const float* maxima, int width, int blocks, int k,
                                        int* out) {
    __shared__ unsigned int histogram[256];
    __shared__ unsigned int shared_prefix, shared_left, chosen_count, candidate_count;
    __shared__ int chosen[MAX_CHOSEN];
    __shared__ unsigned int candidate_key[MAX_CANDIDATES];
    __shared__ int candidate_col[MAX_CANDIDATES];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const float* row_maxima = maxima + (long long)blockIdx.x * blocks;
    const float* row_scores = scores + (long long)blockIdx.x * width;
    int* row_out = out + (long long)blockIdx.x * (2 * k + 1);

    /* (1) the key of the k-th largest block maximum */
    if (tid == 0) {
        shared_prefix = 0;
        shared_left = k;
        chosen_count = 0;
        candidate_count = 0;
    }
    unsigned int prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += blockDim.x) histogram[i] = 0;
        __syncthreads();
        for (int b = tid; b < blocks; b += blockDim.x) {
            const unsigned int key = order_key(row_maxima[b]);
            if ((key & mask) == prefix) atomicAdd(&histogram[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        const unsigned int left = shared_left;  /* read by all before the one thread below changes it */
        /* histogram[d] becomes the count of digits >= d (a suffix scan in 8 steps); the k-th largest
           key's digit is the one d where that count reaches left and the count above d does not */
        unsigned int suffix = tid < 256 ? histogram[tid] : 0;
        for (int offset = 1; offset < 256; offset <<= 1) {
            const unsigned int add = tid + offset < 256 ? histogram[tid + offset] : 0;
            __syncthreads();
            if (tid < 256) histogram[tid] = suffix += add;
            __syncthreads();
        }
        if (tid < 256) {
            const unsigned int above = tid < 255 ? histogram[tid + 1] : 0;
            if (suffix >= left && above < left) {
                shared_prefix = prefix | ((unsigned int)tid << shift);
                shared_left = left - above;
            }
        }
        __syncthreads();
        prefix = shared_prefix;
        mask |= 255u << shift;
    }
    const float threshold = key_value(prefix);

    /* (2) the blocks that may hold one of the k best, then their scores >= threshold */
    for (int b = tid; b < blocks; b += blockDim.x) {
        if (row_maxima[b] >= threshold) {
            const unsigned int slot = atomicAdd(&chosen_count, 1u);
            if (slot < MAX_CHOSEN) chosen[slot] = b;
        }
    }
    __syncthreads();
    const unsigned int chosen_blocks = chosen_count;
    if (chosen_blocks <= MAX_CHOSEN) {
        for (unsigned int c = warp; c < chosen_blocks; c += warps) {
            const int first = chosen[c] * 256;
            for (int i = lane; i < 256; i += 32) {
                const float value = row_scores[first + i];
                if (value >= threshold) {
                    const unsigned int slot = atomicAdd(&candidate_count, 1u);
                    if (slot < MAX_CANDIDATES) {
                        candidate_key[slot] = order_key(value);
                        candidate_col[slot] = first + i;
                    }
                }
            }
        }
    }
    __syncthreads();
    const unsigned int found = candidate_count;
    if (chosen_blocks > MAX_CHOSEN || found > MAX_CANDIDATES || found < (unsigned int)k) {
        if (tid == 0) row_out[0] = -1;
        return;
    }

    /* (3) bitonic sort of the candidates, padded to a power of two by keys below every score's */
    unsigned int size = 1;
    while (size < found) size <<= 1;
    for (unsigned int i = found + tid; i < size; i += blockDim.x) {
        candidate_key[i] = 0u;
        candidate_col[i] = 0x7fffffff;
    }
    __syncthreads();
    for (unsigned int run = 2; run <= size; run <<= 1) {
        for (unsigned int stride = run >> 1; stride > 0; stride >>= 1) {
            for (unsigned int i = tid; i < size; i += blockDim.x) {
                const unsigned int j = i ^ stride;
                if (j > i) {
                    const bool forward = (i & run) == 0;
                    const bool j_first = before(candidate_key[j], candidate_col[j], candidate_key[i], candidate_col[i]);
                    if (forward == j_first) {
                        const unsigned int key = candidate_key[i];
                        const int col = candidate_col[i];
                        candidate_key[i] = candidate_key[j];
                        candidate_col[i] = candidate_col[j];
                        candidate_key[j] = key;
                        candidate_col[j] = col;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (int i = tid; i < k; i += blockDim.x) {
        row_out[1 + i] = (int)__float_as_uint(key_value(candidate_key[i]));
        row_out[1 + k + i] = candidate_col[i];
    }
    if (tid == 0) row_out[0] = (int)found;
}
"""


def load_cupy() -> ModuleType | None:
    """CuPy when it imports and sees a CUDA device, else None."""
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "not here"
        return None


def device_count() -> int:
    cupy = load_cupy()
    return int(cupy.cuda.runtime.getDeviceCount()) if cupy is not None else 0


def _to_host(array: Any) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class CupyFlatIndex:
    """Exact inner product over a float16 or float32 matrix in GPU memory (`xp` = cupy), or in host memory
    (`xp` = numpy: the tests). Face ids live on the host; only vectors and scores on the device."""

    kind = "cupy-flat"
    _COMPACT_RATIO = 0.2

    def __init__(self, dim: int, xp: ModuleType, float16: bool = False, device_id: int = 0) -> None:
        self.dim = dim
        self.xp = xp
        self.dtype = xp.float16 if float16 else xp.float32
        self._device_id = device_id
        with self._on_device():
            self._matrix = xp.zeros((_BLOCK, dim), dtype=self.dtype)
        self._n = 0  # rows used, dead ones included
        self._row_ids = np.empty(0, dtype=np.int64)
        self._dead = np.empty(0, dtype=bool)
        self._dead_rows: Any = None  # device copy of the dead row numbers, None while there are none
        self._dead_flags: Any = None  # the same as one byte a row (0 alive, 1 dead): what the kernel reads

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        cuda = getattr(self.xp, "cuda", None)
        with cuda.Device(self._device_id) if cuda is not None else contextlib.nullcontext():
            yield

    @property
    def nbytes(self) -> int:
        """Device memory the vectors take (capacity included)."""
        return int(self._matrix.nbytes)

    def _reserve(self, rows: int) -> None:
        """Room for `rows` rows, a multiple of _BLOCK (a search reads whole blocks); grows by a quarter."""
        capacity = len(self._matrix)
        if rows <= capacity:
            return
        grown = self.xp.zeros((_round_up(max(rows, capacity + capacity // 4), _BLOCK), self.dim), dtype=self.dtype)
        grown[: self._n] = self._matrix[: self._n]
        self._matrix = grown

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        fresh = ~np.isin(ids, self._row_ids[~self._dead])
        count = int(fresh.sum())
        if not count:
            return
        with self._on_device():
            self._reserve(self._n + count)
            rows = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[fresh])
            self._matrix[self._n : self._n + count] = self.xp.asarray(rows).astype(self.dtype)
        self._n += count
        self._row_ids = np.concatenate([self._row_ids, ids[fresh]])
        self._dead = np.concatenate([self._dead, np.zeros(count, dtype=bool)])
        if self._dead_flags is not None:  # the kernel reads a flag for every row below n
            with self._on_device():
                self._dead_flags = self.xp.asarray(self._dead.view(np.uint8))

    def remove(self, ids: np.ndarray) -> None:
        newly = np.isin(self._row_ids, np.asarray(ids, dtype=np.int64)) & ~self._dead
        if not newly.any():
            return
        self._dead |= newly
        with self._on_device():
            if self._dead.sum() > self._COMPACT_RATIO * max(1, self._n):
                self._compact()
            else:
                self._dead_rows = self.xp.asarray(np.flatnonzero(self._dead))
                self._dead_flags = self.xp.asarray(self._dead.view(np.uint8))

    def _compact(self) -> None:
        alive = np.flatnonzero(~self._dead)
        self._matrix[: len(alive)] = self._matrix[self.xp.asarray(alive)]
        self._matrix[len(alive) : self._n] = 0
        self._n = len(alive)
        self._row_ids = self._row_ids[alive]
        self._dead = np.zeros(self._n, dtype=bool)
        self._dead_rows = None
        self._dead_flags = None

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, face ids) of the k best per query row, best first; -inf and -1 pad a short row."""
        queries = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if k <= 0 or not len(queries) or not self._n:
            return sims, ids
        width = _round_up(self._n, _BLOCK)
        group = max(1, min(len(queries), _SCORES_BUDGET // (4 * width)))
        take = min(k, width)
        with self._on_device():
            for start in range(0, len(queries), group):
                found_sims, rows = self._search_group(queries[start : start + group], take, width)
                sims[start : start + group, :take] = found_sims
                ids[start : start + group, :take] = np.where(
                    np.isfinite(found_sims), self._row_ids[np.clip(rows, 0, self._n - 1)], -1
                )
        sims[ids < 0] = -np.inf
        return sims, ids

    def _search_group(self, queries: np.ndarray, k: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        xp = self.xp
        scored = score_blocks(xp, self._matrix[:width], queries, self._n, self._dead_flags)
        if scored is not None:
            scores, maxima = scored
            selected = select_top_k(xp, scores, maxima, k)
            if selected is not None:
                return selected
        else:
            scores, maxima = similarities(xp, self._matrix[:width], xp.asarray(queries)), None
            scores[:, self._n :] = -xp.inf  # rows past the last face: zeros, not faces
            if self._dead_rows is not None:
                scores[:, self._dead_rows] = -xp.inf
        best, rows = top_k(xp, scores, k, maxima)
        return _to_host(best), _to_host(rows)

    def ids(self) -> np.ndarray:
        return self._row_ids[~self._dead].copy()

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, float32 vectors) of the live faces, on the host: what index_store.py saves."""
        alive = np.flatnonzero(~self._dead)
        with self._on_device():
            vectors = _to_host(self._matrix[self.xp.asarray(alive)].astype(self.xp.float32))
        return self._row_ids[alive], vectors

    def __len__(self) -> int:
        return int((~self._dead).sum())


_gemm_ex_failed = False
_kernels: dict[str, Any] = {}
_kernel_failed = False
# the scoring kernel is used where it applies; False: always the GEMM (the benchmark compares both)
use_score_kernel = True
_select_failed = False
# the selection kernel is used after the scoring kernel; False: the xp top_k (the benchmark compares both)
use_select_kernel = True


def select_options() -> tuple[str, ...]:
    """The -D options _SELECT_SOURCE is compiled with: its shared-memory room."""
    return (f"-DMAX_CANDIDATES={_SELECT_MAX_CANDIDATES}", f"-DMAX_CHOSEN={_SELECT_MAX_CHOSEN}")


def score_blocks(xp: ModuleType, matrix: Any, queries: np.ndarray, n: int, dead_flags: Any) -> tuple[Any, Any] | None:
    """(scores, block maxima) of a few queries by the _SCORE_BLOCKS kernel, masked as the search needs; None
    where it does not apply (numpy, many queries, a dim the 16-byte loads do not divide, a failed compile)."""
    global _kernel_failed
    q, (width, dim) = len(queries), matrix.shape
    per_load = 8 if matrix.dtype == np.float16 else 4
    if (
        not use_score_kernel or _kernel_failed or xp.__name__ != "cupy" or q > _KERNEL_QUERIES
        or dim % per_load or q * dim * 4 > 48 * 1024 or width % _BLOCK
    ):
        return None
    name = str(matrix.dtype)
    try:
        if name not in _kernels:
            options = ("-DROW_HALF",) if per_load == 8 else ()
            _kernels[name] = xp.RawKernel(_SCORE_BLOCKS_SOURCE, "score_blocks", options=options)
        blocks = width // _BLOCK
        scores = xp.empty((q, width), dtype=xp.float32)
        maxima = xp.empty((q, blocks), dtype=xp.float32)
        # without tombstones any device pointer does (the kernel reads flags only when has_dead): no
        # allocation and memset a search
        flags = dead_flags if dead_flags is not None else matrix
        _kernels[name](
            (blocks,), (_BLOCK,),
            (matrix, xp.asarray(queries, dtype=xp.float32), flags, np.int32(dead_flags is not None), np.int32(n),
             np.int32(dim), np.int32(q), np.int32(width), scores, maxima),
            shared_mem=q * dim * 4,
        )
        return scores, maxima
    except Exception:  # a compile or launch failure: the GEMM path answers instead, from now on
        log.exception("the scoring kernel failed; searches use cuBLAS GEMM instead")
        _kernel_failed = True
        return None


def select_top_k(xp: ModuleType, scores: Any, maxima: Any, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, columns) on the host of the k largest scores per row, best first, by the _SELECT_SOURCE kernel
    (one launch, one copy back); None where it does not apply (numpy, k over its room or over the blocks, a
    failed compile). A row whose candidates overflowed its room is answered by top_k."""
    global _select_failed
    q, width = scores.shape
    blocks = width // _BLOCK
    if not use_select_kernel or _select_failed or xp.__name__ != "cupy" or k > min(blocks, _SELECT_MAX_CHOSEN):
        return None
    try:
        if "select" not in _kernels:
            _kernels["select"] = xp.RawKernel(_SELECT_SOURCE, "select_top_k", options=select_options())
        packed = xp.empty((q, 2 * k + 1), dtype=xp.int32)
        _kernels["select"]((q,), (_SELECT_THREADS,), (scores, maxima, np.int32(width), np.int32(blocks), np.int32(k), packed))
        host = _to_host(packed)
    except Exception:  # a compile or launch failure: the xp top_k answers instead, from now on
        log.exception("the selection kernel failed; searches use the array module's top k instead")
        _select_failed = True
        return None
    values = np.ascontiguousarray(host[:, 1 : k + 1]).view(np.float32)
    columns = host[:, k + 1 :].astype(np.int64)
    overflowed = np.flatnonzero(host[:, 0] < 0)
    if len(overflowed):  # ties past the kernel's room: these rows by the xp path
        best, rows = top_k(xp, scores[xp.asarray(overflowed)], k, maxima[xp.asarray(overflowed)])
        values[overflowed], columns[overflowed] = _to_host(best), _to_host(rows)
    return values, columns


def similarities(xp: ModuleType, matrix: Any, queries: Any) -> Any:
    """(q, rows) float32 inner products of float32 queries with the matrix rows, accumulated in float32."""
    global _gemm_ex_failed
    if matrix.dtype == xp.float16 and xp.__name__ == "cupy":
        if not _gemm_ex_failed:
            try:
                return _gemm_half_to_float(xp, matrix, queries.astype(xp.float16))
            except Exception:  # a CuPy without this binding: float16 scores instead
                log.exception("cuBLAS GemmEx with float32 output failed; float16 scores from cupy.matmul instead")
                _gemm_ex_failed = True
        return (queries.astype(xp.float16) @ matrix.T).astype(xp.float32)
    if matrix.dtype == xp.float16:  # numpy has no float16 BLAS: the tests' path
        return queries @ matrix.astype(xp.float32).T
    return queries @ matrix.T


def _gemm_half_to_float(cupy: ModuleType, matrix: Any, queries: Any) -> Any:
    """float16 matrix and queries, float32 scores: cuBLAS GemmEx, as CuPy's own float16 matmul calls it but
    with a float32 output (cupy.matmul would round the scores to float16, ~5e-4 apart near 0.5)."""
    from cupy_backends.cuda.libs import cublas

    rows, q = len(matrix), len(queries)
    scores = cupy.empty((q, rows), dtype=cupy.float32)
    one, zero = np.array(1.0, dtype=np.float32), np.array(0.0, dtype=np.float32)
    # row-major scores (q, rows) = column-major (rows, q) = matrix (rows x dim) @ queries^T (dim x q)
    cublas.gemmEx(
        cupy.cuda.device.get_cublas_handle(), cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, rows, q, matrix.shape[1],
        one.ctypes.data, matrix.data.ptr, cupy.cuda.runtime.CUDA_R_16F, matrix.shape[1],
        queries.data.ptr, cupy.cuda.runtime.CUDA_R_16F, queries.shape[1],
        zero.ctypes.data, scores.data.ptr, cupy.cuda.runtime.CUDA_R_32F, rows,
        cupy.cuda.runtime.CUDA_R_32F, cublas.CUBLAS_GEMM_DEFAULT,
    )
    return scores


def top_k(xp: ModuleType, scores: Any, k: int, maxima: Any = None) -> tuple[Any, Any]:
    """(values, columns) of the k largest scores per row, best first, exactly. The width of scores must be
    a multiple of _BLOCK; masked columns hold -inf. maxima: each block's maximum, where already known."""
    q, width = scores.shape
    blocks = width // _BLOCK
    if blocks <= k or k * _BLOCK * 4 >= width:  # selection would keep most columns: sort whole rows
        columns = xp.argsort(-scores, axis=1)[:, :k]
        return xp.take_along_axis(scores, columns, 1), columns
    grouped = scores.reshape(q, blocks, _BLOCK)
    if maxima is None:
        maxima = grouped.max(axis=2)
    best_blocks = xp.argpartition(-maxima, k - 1, axis=1)[:, :k]
    candidates = xp.take_along_axis(grouped, best_blocks[:, :, None], 1).reshape(q, k * _BLOCK)
    columns = (best_blocks[:, :, None] * _BLOCK + xp.arange(_BLOCK)[None, None, :]).reshape(q, k * _BLOCK)
    order = xp.argsort(-candidates, axis=1)[:, :k]
    return xp.take_along_axis(candidates, order, 1), xp.take_along_axis(columns, order, 1)


def build(
    ids: np.ndarray, vectors: np.ndarray, float16: bool, device_id: int = 0, xp: ModuleType | None = None
) -> CupyFlatIndex:
    """A session's index on the GPU (xp defaults to CuPy), sized exactly: capacity grows only with adds."""
    xp = xp if xp is not None else load_cupy()
    if xp is None:
        raise RuntimeError("the CuPy index needs CuPy and a CUDA device")
    index = CupyFlatIndex(vectors.shape[1], xp, float16=float16, device_id=device_id)
    if len(ids):
        with index._on_device():
            index._reserve(len(ids))
        index.add(ids, vectors)
    return index
