"""Why IVF tuning fails at 1M faces: recall of an IVF against exact search by nprobe, counting all top-10
neighbours and only those a search could return (similarity >= 0.4, i.e. distance <= the 0.6 threshold).

    python benchmarks/ivf_probe.py [--faces 1000000] [--per-person 32] [--nlist 4000]
"""

from __future__ import annotations

import argparse
import time

import faiss
import gallery  # beside this script, on sys.path when it is run
import numpy as np
from smoke import add_flag, shrink

from faceserve.index.kinds import top_k

MATCH_SIMILARITY = 0.4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--per-person", type=int, default=32)
    parser.add_argument("--nlist", type=int, default=4000)
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, faces=4000, nlist=50)

    vectors = gallery.people(args.faces, per_person=args.per_person)
    queries = gallery.queries_like(vectors, 100)
    true_sims, true_rows = top_k(vectors, queries, 10)

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    dim = vectors.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, args.nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors[rng.choice(len(vectors), 40 * args.nlist, replace=False)])
    index.add(vectors)
    build_s = time.perf_counter() - start

    print(
        f"people/{args.per_person}, {args.faces:,} faces, IVF{args.nlist} built in {build_s:.0f} s; "
        f"{(true_sims >= MATCH_SIMILARITY).mean():.1%} of the exact top-10 are within the match threshold\n"
    )
    print("| nprobe | recall@10 | recall of matches (sim >= 0.4) | ms per query |")
    print("|---|---|---|---|")
    for nprobe in (1, 4, 16, 64, 256):
        index.nprobe = nprobe
        _, found = index.search(queries, 10)
        full = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), true_rows.tolist())])
        matches = []
        for f, t, s in zip(found.tolist(), true_rows.tolist(), true_sims.tolist()):
            relevant = {row for row, sim in zip(t, s) if sim >= MATCH_SIMILARITY}
            if relevant:
                matches.append(len(relevant & set(f)) / len(relevant))
        start = time.perf_counter()
        for i in range(len(queries)):
            index.search(queries[i : i + 1], 10)
        ms = 1000 * (time.perf_counter() - start) / len(queries)
        print(f"| {nprobe} | {full:.4f} | {np.mean(matches):.4f} | {ms:.2f} |")


if __name__ == "__main__":
    main()
