"""index/clustering.py on made-up embeddings whose truth is known: average linkage against chaining, the
photo and organiser constraints, the quality floor, big people in few rounds, the graphs, cover choice."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from faceserve.index.clustering import ClusterParams, cell_knn_graph, clarity, cluster, eligible
from faceserve.index.kinds import flat

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from reference import knn_graph  # benchmarks/reference.py

DIM = 64


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def person(centre: np.ndarray, count: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """count photos of one person: cosine ~1 / (1 + spread^2) to each other."""
    return unit(centre + spread * rng.standard_normal((count, DIM)).astype(np.float32) / np.sqrt(DIM))


def graph(vectors: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(len(vectors), dtype=np.int64)
    return knn_graph(flat(ids, vectors).search, vectors, ids, k, 64)


def run(vectors: np.ndarray, k: int = 8, **kwargs) -> np.ndarray:
    rows, sims = graph(vectors, k)
    return cluster(vectors.copy(), rows, sims, ClusterParams(), **kwargs)


def test_a_chain_of_close_faces_does_not_merge_two_people() -> None:
    rng = np.random.default_rng(0)
    a, b = unit(rng.standard_normal(DIM)), unit(rng.standard_normal(DIM))
    # two people, and faces part way from one to the other: each close to the next (a single-link chain)
    steps = unit(np.array([(1 - t) * a + t * b for t in np.linspace(0.15, 0.85, 12)]))
    vectors = np.vstack([person(a, 20, 0.4, rng), person(b, 20, 0.4, rng), steps])
    assert min(float(steps[i] @ steps[i + 1]) for i in range(len(steps) - 1)) > 0.95
    labels = run(vectors)
    assert len(set(labels[:20].tolist())) == 1 and len(set(labels[20:40].tolist())) == 1
    assert labels[0] != labels[20]


def test_faces_in_one_photo_are_never_one_person() -> None:
    rng = np.random.default_rng(1)
    vectors = person(unit(rng.standard_normal(DIM)), 6, 0.3, rng)
    images = np.array([1, 1, 2, 3, 4, 5])  # the first two in one photo: twins, or a mirror
    labels = run(vectors, images=images)
    assert labels[0] != labels[1]
    assert (labels >= 0).all() and len(set(labels.tolist())) == 2
    without = run(vectors)
    assert len(set(without.tolist())) == 1


def test_an_organisers_people_stay_as_placed() -> None:
    rng = np.random.default_rng(2)
    a, b = unit(rng.standard_normal(DIM)), unit(rng.standard_normal(DIM))
    vectors = np.vstack([person(a, 6, 0.3, rng), person(b, 6, 0.3, rng)])
    placed = np.full(12, -1)
    placed[[0, 1]] = 100  # the organiser split one person in two...
    placed[[2]] = 200
    placed[[6]] = 100  # ...and put a stranger with the first part
    labels = run(vectors, placed=placed)
    assert labels[0] == labels[1] == labels[6]
    assert labels[2] != labels[0]
    # the rest of each person joins one side, never both at once
    assert len(set(labels[[0, 2]].tolist())) == 2


def test_faces_below_the_quality_floor_found_join_and_link_nothing() -> None:
    rng = np.random.default_rng(3)
    centre = unit(rng.standard_normal(DIM))
    vectors = person(centre, 8, 0.3, rng)
    usable = np.ones(8, dtype=bool)
    usable[[5, 6, 7]] = False
    labels = run(vectors, usable=usable)
    assert (labels[[5, 6, 7]] == -1).all() and len(set(labels[:5].tolist())) == 1 and labels[0] >= 0
    only_blurry = run(vectors, usable=np.eye(8, dtype=bool)[0] | ~usable)
    assert (only_blurry[1:5] == -1).all()  # unusable faces do not take part even among themselves
    assert (only_blurry[[5, 6, 7]] >= 0).all() and len(set(only_blurry[[5, 6, 7]].tolist())) == 1
    boxes = np.array([[0, 0, 100, 100], [0, 0, 20, 30], [0, 0, 100, 100]], dtype=np.float32)
    assert eligible(boxes, np.array([0.9, 0.9, 0.3]), ClusterParams()).tolist() == [True, False, False]


def test_a_person_alone_in_one_photo_is_nobody_yet() -> None:
    rng = np.random.default_rng(4)
    vectors = np.vstack([person(unit(rng.standard_normal(DIM)), 5, 0.3, rng), unit(rng.standard_normal((1, DIM)))])
    labels = run(vectors)
    assert labels[5] == -1 and (labels[:5] >= 0).all()


def test_a_big_person_gathers_in_few_rounds() -> None:
    rng = np.random.default_rng(5)
    vectors = np.vstack([person(unit(rng.standard_normal(DIM)), 600, 0.6, rng)] + [
        person(unit(rng.standard_normal(DIM)), 3, 0.5, rng) for _ in range(50)
    ])
    rows, sims = graph(vectors, 16)
    rounds: list[int] = []
    labels = cluster(vectors.copy(), rows, sims, ClusterParams(), progress=lambda r, merged: rounds.append(merged))
    assert len(set(labels[:600].tolist())) == 1
    assert len(set(labels[600:].tolist())) == 50
    assert len(rounds) <= 15


def test_the_cell_graph_finds_each_persons_other_photos() -> None:
    rng = np.random.default_rng(6)
    vectors = np.vstack([person(unit(rng.standard_normal(DIM)), 8, 0.7, rng) for _ in range(400)])
    owner = np.repeat(np.arange(400), 8)
    rows, sims = cell_knn_graph(vectors, 8)
    # the neighbours clustering needs: the same person's other seven photos
    found = (owner[rows] == owner[:, None]) & (rows >= 0)
    assert found.sum() / (7 * len(vectors)) > 0.9
    labels = cluster(vectors.copy(), rows, sims, ClusterParams())
    placed = labels >= 0
    assert placed.mean() > 0.99  # a face whose own photos were all missed waits
    assert all(len(set(owner[labels == label].tolist())) == 1 for label in set(labels[placed].tolist()))
    assert len(set(labels[placed].tolist())) == 400
    at = rows[:, 0]
    assert np.allclose(sims[:, 0], np.einsum("ij,ij->i", vectors, vectors[at]), atol=1e-5)
    assert (rows != np.arange(len(vectors))[:, None]).all()  # never the face itself


def test_the_cover_is_the_clearest_face() -> None:
    frontal = [30, 40, 70, 40, 50, 55, 35, 70, 65, 70]  # nose midway between the eyes
    turned = [30, 40, 70, 40, 66, 55, 35, 70, 65, 70]
    box, small = [0, 0, 120, 120], [0, 0, 40, 40]
    scores = clarity(np.array([box, box, small]), np.array([frontal, turned, frontal]), np.array([0.8, 0.8, 0.8]))
    assert scores[0] > scores[1] and scores[0] > scores[2]
