"""Scores of a clustering against known people, and Immich's grouping re-implemented as the baseline.

Unassigned faces (label -1) count as people of their own: a face left alone is a split, never a merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    pairwise_precision: float
    pairwise_recall: float
    bcubed_precision: float
    bcubed_recall: float

    @property
    def pairwise_f1(self) -> float:
        return _f1(self.pairwise_precision, self.pairwise_recall)

    @property
    def bcubed_f1(self) -> float:
        return _f1(self.bcubed_precision, self.bcubed_recall)


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _singletons(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64).copy()
    alone = labels < 0
    labels[alone] = labels.max(initial=0) + 1 + np.arange(int(alone.sum()))
    return labels


def scores(predicted: np.ndarray, truth: np.ndarray) -> Scores:
    """Pairwise and BCubed precision/recall of predicted labels against true ones (both per face)."""
    predicted, truth = _singletons(predicted), np.asarray(truth, dtype=np.int64)
    _, p = np.unique(predicted, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    _, joint = np.unique(p.astype(np.int64) * (t.max() + 1) + t, return_inverse=True)
    p_size, t_size, j_size = np.bincount(p)[p], np.bincount(t)[t], np.bincount(joint)[joint]
    # BCubed: per face, the share of its cluster that is its person and of its person that is its cluster
    bcubed_precision = float(np.mean(j_size / p_size))
    bcubed_recall = float(np.mean(j_size / t_size))
    # pairwise: over pairs of faces put together / truly together
    together = (np.bincount(joint).astype(np.float64) ** 2 - np.bincount(joint)).sum() / 2
    predicted_pairs = (np.bincount(p).astype(np.float64) ** 2 - np.bincount(p)).sum() / 2
    true_pairs = (np.bincount(t).astype(np.float64) ** 2 - np.bincount(t)).sum() / 2
    return Scores(
        together / predicted_pairs if predicted_pairs else 1.0,
        together / true_pairs if true_pairs else 1.0,
        bcubed_precision,
        bcubed_recall,
    )


def immich_baseline(
    neighbour_rows: np.ndarray,
    neighbour_sims: np.ndarray,
    usable: np.ndarray,
    min_faces: int = 3,
    max_distance: float = 0.5,
) -> np.ndarray:
    """Immich's facial recognition job (server/src/services/person.service.ts, handleRecognizeFaces),
    re-implemented over the same neighbour lists: faces in order; a face's matches are its nearest
    `min_faces` faces (itself included) within `max_distance`; one with only itself is skipped; one with
    fewer than `min_faces` matches is not core and is deferred to a second pass. A face takes the person of
    its first match that has one, else of the nearest face with a person within `max_distance`; a core face
    with neither founds a new person. Faces below the quality floor are not given to it (Immich's detector
    score cut plays that part)."""
    n = len(neighbour_rows)
    person = np.full(n, -1, dtype=np.int64)
    within = (neighbour_rows >= 0) & (1.0 - neighbour_sims <= max_distance) & usable[np.clip(neighbour_rows, 0, None)]
    next_person = 0

    def visit(face: int, deferred: bool) -> bool:
        nonlocal next_person
        near = neighbour_rows[face][within[face]]
        matches = near[: min_faces - 1]  # plus the face itself
        if min_faces > 1 and len(matches) == 0:
            return True
        core = len(matches) + 1 >= min_faces
        if not core and not deferred:
            return False
        chosen = next((person[m] for m in matches.tolist() if person[m] >= 0), -1)
        if chosen < 0:
            chosen = next((person[m] for m in near.tolist() if person[m] >= 0), -1)
        if core and chosen < 0:
            chosen, next_person = next_person, next_person + 1
        if chosen >= 0:
            person[face] = chosen
        return True

    deferred = [face for face in np.flatnonzero(usable).tolist() if not visit(face, False)]
    for face in deferred:
        visit(face, True)
    return person
